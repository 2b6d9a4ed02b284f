"""Low-precision sweeps: ``--dtype bfloat16 --precision ...`` (config and refusals), how their runs are keyed (a
float32 store, also one written before precisions existed, resumes with nothing to redo), the training loop's
optimizer under each precision, and the report that puts each precision beside float32."""

from __future__ import annotations

import inspect
import json
import re
import sqlite3

import pytest
import torch

import decoupled
from decoupled.experiments.config import DEFAULT_PRECISIONS, ConfigError, SweepConfig, load_sweep_config
from decoupled.experiments.store import Store
from decoupled.experiments.sweep import plan_tasks
from decoupled.experiments.tasks import Run
from decoupled.precision import PRECISIONS

from .conftest import add_runs, cli, refused, tiny_overrides

BF16 = {"train": {"dtype": "bfloat16"}}


def _low(precision="nearest,exact", **extra) -> SweepConfig:
    tree = tiny_overrides(**extra)
    tree["train"] = {**tree["train"], "dtype": "bfloat16"}
    tree["precision"] = precision
    return load_sweep_config("smoke", overrides=tree)


# ------------------------------------------------------------------------------------------------ config


def test_precision_arms_from_flags_and_from_a_config_file(tmp_path):
    config = _low("nearest, exact")
    assert config.train.dtype == "bfloat16" and config.precisions == ("nearest", "exact")
    assert config.cells == 2 * sum(g.cells for g in config.grids) and config.runs == config.cells * config.seeds
    file = tmp_path / "low.toml"
    file.write_text('precision = ["stochastic", "nearest"]\n[train]\ndtype = "bfloat16"\n')
    assert load_sweep_config("smoke", file).precisions == ("stochastic", "nearest")
    # Without precision a low-precision sweep takes the optimizers' default; float32 has no arms.
    assert load_sweep_config("smoke", overrides=BF16).precisions == DEFAULT_PRECISIONS
    assert DEFAULT_PRECISIONS == (inspect.signature(decoupled.AdamW).parameters["precision"].default,)
    assert set(DEFAULT_PRECISIONS) <= set(PRECISIONS)
    assert load_sweep_config("smoke").precisions == ()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--precision", "nearest"], "precision = 'nearest' needs low-precision parameters: with train.dtype "
                                     "'float32' every precision takes the same step"),
        (["--dtype", "float32", "--precision", "exact"], "precision = 'exact' needs low-precision parameters"),
        (["--dtype", "float16"], "train.dtype must be one of float32, bfloat16, got 'float16'"),
        (["--dtype", "bfloat16", "--precision", "exact,rounded"],
         "precision must be one of exact, stochastic, nearest, got 'rounded'"),
        (["--dtype", "bfloat16", "--precision", "exact,exact"], "precision: repeated name in ['exact', 'exact']"),
        (["--dtype", "bfloat16", "--precision", ","], "empty grid: precision = [] selects no precision"),
        (["--dtype", "bfloat16", "--set", "precision=3"], "precision must be a list of names, got 3"),
    ],
)  # fmt: skip
def test_bad_dtype_or_precision_exits_2_with_one_line_naming_it(capsys, tmp_path, argv, expected):
    out = tmp_path / "never"
    refused(capsys, ["sweep", "--preset", "smoke", *argv, "--out", str(out)], expected)
    assert not out.exists()


def test_an_experiment_arm_takes_one_precision():
    from decoupled.experiments.findings.common import load_experiment

    overrides = {"train": {"dtype": "bfloat16"}, "precision": ["nearest", "exact"]}
    with pytest.raises(ConfigError, match=r"an experiment's arm takes one precision"):
        load_experiment("f1", smoke=True, overrides=overrides)
    single = load_experiment("f1", smoke=True, overrides={"train": {"dtype": "bfloat16"}, "precision": ["nearest"]})
    assert single.arms[0].config.precisions == ("nearest",)


# ------------------------------------------------------------------------------------------------ keys

# What main wrote before precisions existed (SweepConfig.to_dict of the smoke preset with these optimizers), and
# the key of its first run: a float32 store keeps its keys, so the same sweep resumes with nothing to redo.
MAIN_SMOKE_SWEEP = {
    "name": "smoke", "seeds": 2,
    "data": {"dataset": "mnist1d", "train_size": 1000, "val_size": 500, "test_size": 500, "seed": 0, "data_dir": "",
             "download": False, "augment": False},
    "model": {"name": "conv1d", "width": 16, "depth": 3, "batchnorm": True},
    "train": {"epochs": 3, "batch_size": 128, "schedule": "cosine", "momentum": 0.9, "beta1": 0.9, "beta2": 0.999,
              "eps": 1e-08, "decay_scope": "all", "eval_batch_size": 2048, "curves": True},
    "grids": [{"optimizer": "adamw", "lrs": [0.015625, 0.0625], "weight_decays": [0.0009765625, 0.015625]},
              {"optimizer": "sgd", "lrs": [0.125, 0.5], "weight_decays": [0.0009765625, 0.015625]}],
}  # fmt: skip
MAIN_SMOKE_FIRST_KEY = "c479a0a45249563d"
MAIN_DEFAULT_KEYS = {("adamw", 2**-5, 2**-5): "a2efa02ee6022640", ("sgd", 2**-2, 2**-8): "0fd219acb612a807"}


def test_float32_runs_keep_the_keys_and_the_stored_configs_they_had():
    default = load_sweep_config("default")
    for (optimizer, lr, weight_decay), key in MAIN_DEFAULT_KEYS.items():
        assert default.run_config(optimizer, lr, weight_decay).key() == key
    config = load_sweep_config("smoke", overrides={"optimizers": ["adamw", "sgd"]})
    assert plan_tasks(config)[0].config.key() == MAIN_SMOKE_FIRST_KEY
    assert json.loads(json.dumps(config.to_dict())) == MAIN_SMOKE_SWEEP  # stored as before: earlier versions read it
    run = plan_tasks(config)[0].config.to_dict()
    assert "precision" not in run and "dtype" not in run["train"]
    assert plan_tasks(_low("exact"))[0].config.to_dict()["train"]["dtype"] == "bfloat16"


def test_each_precision_is_an_arm_with_keys_of_its_own():
    config = _low("nearest,exact,stochastic")
    tasks = plan_tasks(config)
    cells = sum(g.cells for g in config.grids)
    assert len(tasks) == len({t.key for t in tasks}) == 3 * cells * config.seeds
    assert [t.config.precision for t in tasks[: 3 * cells : cells]] == ["nearest", "exact", "stochastic"]
    assert {t.seed for t in tasks[: 3 * cells]} == {0}  # seed-major: every arm's grid for seed 0 first
    float32 = {t.key for t in plan_tasks(config.float32_reference())}
    assert float32 == {t.key for t in plan_tasks(load_sweep_config("smoke", overrides=tiny_overrides()))}
    assert not float32 & {t.key for t in tasks}
    # The stored sweep reads back as it was written, arms and all; a precision this version does not know is named.
    stored = json.loads(json.dumps(config.to_dict()))
    assert SweepConfig.from_dict(stored) == config
    with pytest.raises(ValueError, match=r"unknown precision 'kahan' \(this version knows exact, stochastic, nearest"):
        SweepConfig.from_dict({**stored, "precisions": ["kahan"]})


def test_a_store_written_before_precisions_reads_and_resumes_with_nothing_to_redo(tmp_path):
    """A store as main wrote it (no train.dtype, no precision in any stored config) reads, reports, and the same
    sweep finds every run done."""
    from decoupled.experiments.sweep import _stored_keys

    config = SweepConfig.from_dict(MAIN_SMOKE_SWEEP)
    assert config == load_sweep_config("smoke", overrides={"optimizers": ["adamw", "sgd"]})
    runs = add_runs(tmp_path, config)
    db = sqlite3.connect(tmp_path / "results.sqlite")
    with db:
        db.execute("UPDATE sweeps SET config = ?", (json.dumps(MAIN_SMOKE_SWEEP),))
        stored = [json.loads(text) for (text,) in db.execute("SELECT config FROM runs")]
    db.close()
    assert stored and all("dtype" not in raw["train"] and "precision" not in raw for raw in stored)
    with Store.open(tmp_path, create=False) as store:
        assert store.latest_sweep() == config and len(store.runs()) == runs
    assert {t.key for t in plan_tasks(config)} == _stored_keys(tmp_path)
    from decoupled.experiments.report import render_report

    render_report(tmp_path)
    assert "bfloat16" not in (tmp_path / "report.md").read_text()


# ------------------------------------------------------------------------------------------------ the loop


def _decayed(config: SweepConfig, dtype: torch.dtype, steps: int = 200) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    """A parameter of 0.5 in ``dtype`` under the loop's optimizer of ``config``'s AdamW cell, ``steps`` steps of
    zero gradients: only the decay moves it (0.5 * (1 - 1e-3) rounds back to 0.5 in bfloat16)."""
    task = next(t for t in plan_tasks(config) if t.config.optimizer == "adamw")
    param = torch.nn.Parameter(torch.full((64,), 0.5, dtype=dtype))
    optimizer, _ = Run(task.config, task.seed, torch.device("cpu")).optimizer([param], steps_per_epoch=1)
    for _ in range(steps):
        param.grad = torch.zeros_like(param)
        optimizer.step()
    return param, optimizer


def test_the_loops_optimizer_loses_a_bfloat16_decay_under_nearest_and_keeps_it_under_exact():
    assert tiny_overrides()["grid"]["adamw"]["weight_decay"] == [1e-3]  # a decay below half a bfloat16 ulp
    nearest, _ = _decayed(_low("nearest"), torch.bfloat16)
    assert torch.equal(nearest.detach(), torch.full((64,), 0.5, dtype=torch.bfloat16))  # 0% of the decay
    exact, optimizer = _decayed(_low("exact"), torch.bfloat16)
    master = decoupled.master_weights(optimizer)[exact]
    float32, _ = _decayed(load_sweep_config("smoke", overrides=tiny_overrides()), torch.float32)
    assert torch.equal(master, float32.detach())  # the float32 run's decay, bit for bit
    assert float(master[0]) == pytest.approx(0.5 * (1 - 1e-3) ** 200, rel=1e-5)
    assert torch.equal(exact.detach(), master.to(torch.bfloat16))


def test_a_low_precision_run_refuses_parameters_not_in_its_dtype():
    task = plan_tasks(_low("exact"))[0]
    run = Run(task.config, 0, torch.device("cpu"))
    with pytest.raises(TypeError, match=r"the sweep trains in bfloat16 .*\(found float32\): convert the model first"):
        run.optimizer([torch.nn.Parameter(torch.ones(3))], steps_per_epoch=1)
    assert run.dtype == torch.bfloat16 and run.precision == "exact"


def test_the_builtin_loop_trains_and_measures_the_model_in_its_dtype(monkeypatch):
    """Parameters and buffers in bfloat16 throughout; the loss and the errors from the model's own outputs."""
    from decoupled.experiments import tasks
    from decoupled.experiments.data import load_splits
    from decoupled.experiments.train import train_run

    seen = []
    build = tasks._builtin_model

    def recording(*args):
        model = build(*args)
        seen.append(model)
        return model

    monkeypatch.setattr(tasks, "_builtin_model", recording)
    config = _low("nearest")
    splits = load_splits(config.data)
    record = train_run(plan_tasks(config)[0].config, 0, splits, torch.device("cpu"))
    model = seen[-1]
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {torch.bfloat16}
    assert not record.diverged and 0 <= record.final_test_error <= 1
    with torch.no_grad():
        model.eval()
        outputs = model(splits.x_test.to(torch.bfloat16)).float()
    assert record.final_test_error == int((outputs.argmax(1) != splits.y_test).sum()) / len(splits.y_test)


# ------------------------------------------------------------------------------------------------ the report


def _made_up(tmp_path, with_float32: bool):
    """A store of made-up AdamW runs where the largest weight decay buys 10 points, but under "nearest"."""
    grid = {"adamw": {"lr": [0.01], "weight_decay": [0, 1e-3, 1e-2]}}
    config = _low("nearest,exact", optimizers=["adamw"], seeds=2, grid=grid)

    def error_of(task, index):
        helps = task.config.weight_decay == 1e-2 and task.config.precision != "nearest"
        return (0.10 if helps else 0.20) + 0.002 * task.seed

    if with_float32:
        add_runs(tmp_path, config.float32_reference(), error_of)
    add_runs(tmp_path, config, error_of)
    from decoupled.experiments.report import render_report

    render_report(tmp_path)
    return (tmp_path / "report.md").read_text()


def test_the_report_says_where_a_precision_loses_the_decay_from_the_numbers(tmp_path):
    markdown = _made_up(tmp_path, with_float32=True)
    assert ('- **bfloat16, precision "nearest"**: the weight decay stops mattering for AdamW (+0.00 points, +10.00 '
            "in float32) (what the weight decay buys") in markdown
    assert ('- **bfloat16, precision "exact"**: the weight decay still matters for AdamW (+10.00 points, +10.00 in '
            "float32)") in markdown
    _check_sentences(markdown)
    assert "| +10.00 (worse, beyond the noise) |" in markdown  # "nearest"'s best against float32's


def test_without_float32_runs_the_report_says_how_to_add_them(tmp_path):
    markdown = _made_up(tmp_path, with_float32=False)
    assert "## Precision arms" in markdown and "## bfloat16 against float32" not in markdown
    assert ('- **bfloat16, precision "nearest"**: the weight decay matters no more than the noise for AdamW (+0.00 '
            "points)") in markdown
    assert '- **bfloat16, precision "exact"**: the weight decay matters beyond the noise for AdamW (+10.00 points)' in markdown
    assert "No float32 runs of the same grid to compare with" in markdown
    assert f"decoupled report {tmp_path} FLOAT32_FOLDER" in markdown


# ------------------------------------------------------------------------------------------------ end to end

LOW = ["--preset", "smoke", "--optimizers", "adamw,sgdw", "--epochs", "1", "--seeds", "2", "--train-size", "300",
       "--val-size", "150", "--test-size", "150", "--workers", "2"]  # fmt: skip


@pytest.mark.slow
def test_a_bfloat16_sweep_reports_each_precision_beside_float32(tmp_path):
    """A smoke-size bfloat16 sweep of two precisions on MNIST-1D, its float32 runs added to the same folder: the
    report has both precisions beside float32, its sentences from the numbers; all resume with nothing to redo; a
    float32 folder passed to `report` stands beside the arms as well."""
    out = tmp_path / "low"
    low = [*LOW, "--dtype", "bfloat16", "--precision", "nearest,exact", "--out", str(out)]
    first = cli("sweep", *low, "--no-report")
    assert first.returncode == 0, first.stderr
    assert "recorded 32 runs" in first.stdout  # 2 precisions x 2 optimizers x 4 cells x 2 seeds
    float32 = cli("sweep", *LOW, "--out", str(out), "--no-report")
    assert float32.returncode == 0 and "recorded 16 runs" in float32.stdout, float32.stderr
    again = cli("sweep", *low)
    assert again.returncode == 0, again.stderr
    assert "recorded 0 runs (0 diverged), 32 were already stored" in again.stdout

    markdown = (out / "report.md").read_text()
    assert "(smoke), bfloat16 parameters" in markdown.splitlines()[0]
    assert "## bfloat16 against float32" in markdown
    for arm in ("nearest", "exact"):
        assert f'## bfloat16, precision "{arm}"' in markdown
        assert f'- **bfloat16, precision "{arm}"**: ' in markdown
        assert (out / f"heatmaps-{arm}.png").exists() and (out / f"curves-{arm}.png").exists()
    section = markdown.split("## bfloat16 against float32")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| AdamW | ")]
    assert [line.split(" | ")[1] for line in table] == ["float32", 'bfloat16, precision "nearest"',
                                                        'bfloat16, precision "exact"']  # fmt: skip
    _check_sentences(markdown)
    assert "Float32 reference: 16 of 16 runs of the same grid" in markdown
    assert "Runs: 48 of 48 recorded" in markdown
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # side by side, then each arm's heatmaps and curves

    # The float32 runs in a folder of their own, compared with the bfloat16 folder by `report A B`.
    alone = tmp_path / "float32"
    assert cli("sweep", *LOW, "--out", str(alone), "--no-report").returncode == 0
    compared = cli("report", str(out), str(alone), "--out", str(tmp_path / "both"))
    assert compared.returncode == 0, compared.stderr
    comparison = (tmp_path / "both" / "comparison.md").read_text()
    header = next(line for line in comparison.splitlines() if line.startswith("| "))
    for label in ("(float32)", '(bfloat16, precision "nearest")', '(bfloat16, precision "exact")', str(alone)):
        assert label in header
    assert "## Low precision against float32" in comparison and (tmp_path / "both" / "heatmaps-precision.png").exists()
    _check_sentences(comparison)


def _check_sentences(markdown: str) -> None:
    """Each precision's sentence puts each optimizer in the clause its table rows say (its gain beyond the noise or
    not, and the float32 reference's), with the rows' numbers."""
    rows: dict[tuple[str, str], list[str]] = {}
    for line in markdown.splitlines():
        cells = line[2:-2].split(" | ")
        if line.startswith("| ") and len(cells) == 9 and cells[1] != "parameters" and cells[0] != "---":
            rows[(cells[0], cells[1].replace("\\", ""))] = cells
    sentences = [m.groups() for m in map(re.compile(r"- \*\*(.+?)\*\*: (.*)").match, markdown.splitlines()) if m]
    assert sentences
    for label, text in sentences:
        clauses = text.split(" (what the weight decay buys")[0].split("; ")
        for optimizer in sorted({name for name, where in rows if where == label}):
            row = rows[(optimizer, label)]
            reference = next(cells for (name, where), cells in rows.items() if name == optimizer and "precision" not in where)
            clause = next(c for c in clauses if f"{optimizer} (" in c)
            if reference[7] == "no":
                assert "no more than the noise" in clause and f"{optimizer} ({reference[6].split()[0]} points in" in clause
            else:
                assert ("still matters" in clause) == (row[7] == "yes"), (clause, row)
                assert ("stops mattering" in clause) == (row[7] == "no"), (clause, row)
                assert f"{optimizer} ({row[6].split()[0]} points, {reference[6].split()[0]} in" in clause
