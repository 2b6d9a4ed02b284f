"""Your own model (issue 13): the task API, the built-in tasks through it (today's numbers bit for bit), user tasks
end to end on the local backend, failing tasks, tasks that cannot be loaded, and resume after SIGKILL.

The Ray half of "end to end" is in test_ray_backend.py, which owns the module's Ray instance.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from decoupled.cli import main
from decoupled.experiments import Data, Diverged, LoopTask, Run, Task, TaskError, load_task
from decoupled.experiments.config import ConfigError, DataConfig, load_sweep_config
from decoupled.experiments.data import load_splits, prepare_data
from decoupled.experiments.report import render_report
from decoupled.experiments.store import Store
from decoupled.experiments.train import run_task, train_run

from .conftest import cli, kill_after_runs, popen_cli, tiny_overrides, write_tiny_cifar
from .legacy_train import legacy_train_run

CPU = torch.device("cpu")
OUTCOME = ("train_loss", "val_error", "test_error", "final_val_error", "final_test_error", "diverged")


def _outcome(record) -> dict:
    values = {name: getattr(record, name) for name in OUTCOME}
    values["extra"] = {k: v for k, v in record.extra.items() if k != "diverged"}  # the reason is new
    return values


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker: bit-for-bit comparisons hold per thread count
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------- built-in tasks: today's numbers


def _cases(tmp_path: Path):
    """Every built-in model, both schedules, both decay scopes, augmentation, a diverging cell."""
    mnist = load_sweep_config("smoke", overrides=tiny_overrides(train={"epochs": 2, "batch_size": 64}))
    for optimizer, lr, wd in (("adam", 0.01, 1e-4), ("adamw", 0.01, 1e-3), ("sgd", 0.1, 1e-4), ("sgdw", 0.1, 1e-5),
                              ("sgdw", 0.1, 1e30)):  # fmt: skip
        yield mnist, mnist.run_config(optimizer, lr, wd)
    digits = load_sweep_config("smoke", overrides=tiny_overrides(
        data={"dataset": "digits", "train_size": 300, "val_size": 100, "test_size": 100},
        model={"name": "mlp", "width": 16, "depth": 2},
        train={"epochs": 2, "batch_size": 50, "schedule": "constant", "decay_scope": "weights"}))  # fmt: skip
    yield digits, digits.run_config("adamw", 0.01, 1e-3)
    yield digits, digits.run_config("sgd", 0.1, 1e-3)
    write_tiny_cifar(tmp_path / "cifar")
    cifar = load_sweep_config("smoke", overrides=tiny_overrides(
        data={"dataset": "cifar10", "data_dir": str(tmp_path / "cifar"), "train_size": 24, "val_size": 6,
              "test_size": 8, "augment": True},
        model={"name": "shake_shake", "width": 4, "depth": 8}, train={"epochs": 2, "batch_size": 8}))  # fmt: skip
    yield cifar, cifar.run_config("sgdw", 0.05, 1e-4)


def test_builtin_tasks_through_the_task_path_give_todays_numbers_bit_for_bit(tmp_path):
    """train_run now builds a Task and runs it through run_task (the path of every user task); the frozen copy
    of the old loop (legacy_train.py) must agree exactly: curves, final errors, diverged flag, extra."""
    checked = set()
    for sweep, config in _cases(tmp_path):
        prepare_data(sweep.data, tmp_path / "cache")
        splits = load_splits(sweep.data, tmp_path / "cache")
        for seed in (0, 1):
            old = legacy_train_run(config, seed, splits, CPU)
            new = _outcome(train_run(config, seed, splits, CPU))
            assert new == old, (config.data.dataset, config.optimizer, seed)
        checked.add((config.data.dataset, config.model.name, old["diverged"]))
    assert checked == {("mnist1d", "conv1d", False), ("mnist1d", "conv1d", True), ("digits", "mlp", False),
                       ("cifar10", "shake_shake", False)}  # fmt: skip


def test_builtin_run_keys_are_unchanged_and_a_task_run_key_names_its_task():
    config = load_sweep_config("smoke")
    run = config.run_config("adamw", 0.01, 1e-3)
    assert "task" not in run.to_dict() and "task" not in config.to_dict()  # the old keys: old stores resume
    task = Task(model=nn.Flatten, data=_data(), name="mine")
    mine = load_sweep_config("smoke", task=task)
    assert mine.task == "mine" and mine.name == "mine"
    key = mine.run_config("adamw", 0.01, 1e-3).to_dict()
    assert key["task"] == "mine" and "model" not in key
    assert mine.run_config("adamw", 0.01, 1e-3).key() != run.key()
    assert type(mine).from_dict(mine.to_dict()) == mine


# ------------------------------------------------------------------------- the API in-process


def _data(n: int = 96, features: int = 8, seed: int = 0) -> Data:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    third = n // 3
    return Data(train=(x[:third], y[:third]), val=(x[third : 2 * third], y[third : 2 * third]),
                test=(x[2 * third :], y[2 * third :]))  # fmt: skip


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _task_config(task, **train):
    overrides = {"seeds": 1, "train": {"epochs": 2, "batch_size": 16, **train}, "optimizers": ["adamw", "sgd"],
                 "grid": {"adamw": {"lr": [0.01], "weight_decay": [1e-3]}, "sgd": {"lr": [0.1], "weight_decay": [1e-4]}}}  # fmt: skip
    return load_sweep_config("smoke", overrides=overrides, task=task)


def test_a_dataset_split_gives_the_numbers_of_the_same_tensors():
    tensors = _data()
    datasets = Data(*(torch.utils.data.TensorDataset(*split) for split in (tensors.train, tensors.val, tensors.test)))
    for optimizer in ("adamw", "sgd"):
        config = _task_config(Task(_mlp, tensors, name="t")).run_config(optimizer, 0.01, 1e-3)
        a = run_task(Task(_mlp, tensors, name="t"), tensors, config, 3, CPU)
        b = run_task(Task(_mlp, datasets, name="t"), datasets, config, 3, CPU)
        assert _outcome(a) == _outcome(b) and len(a.train_loss) == 2


def test_custom_loss_and_error_per_example_or_batch_mean():
    data = _data()
    config = _task_config(Task(_mlp, data, name="t")).run_config("adamw", 0.01, 1e-3)
    default = run_task(Task(_mlp, data, name="t"), data, config, 0, CPU)
    per_example = Task(_mlp, data, error=lambda out, y: (out.argmax(1) != y).float(), name="t")
    batch_mean = Task(_mlp, data, loss=nn.CrossEntropyLoss(), error=lambda out, y: (out.argmax(1) != y).float().mean(),
                      name="t")  # fmt: skip
    for task in (per_example, batch_mean):
        record = run_task(task, data, config, 0, CPU)
        assert record.train_loss == default.train_loss
        assert record.test_error == pytest.approx(default.test_error, abs=1e-12)


def test_run_builds_the_cells_optimizer_and_schedule_over_what_it_is_given():
    config = _task_config(Task(_mlp, _data(), name="t")).run_config("adamw", 0.01, 1e-3)
    run = Run(config, 0, CPU)
    model = _mlp()
    optimizer, scheduler = run.optimizer(
        [{"params": [model[0].weight]}, {"params": [model[0].bias], "weight_decay": 0.0}], steps_per_epoch=4
    )
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-3, 0.0]
    assert {g["decay"] for g in optimizer.param_groups} == {"decoupled"} and run.decay == "decoupled"
    for _ in range(4):  # one epoch of two: eta_t = 0.5 (1 + cos(pi / 2)) = 0.5
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert run.extra == {"parameters": 8 * 16 + 16, "steps_per_epoch": 4}
    with pytest.raises(ValueError, match="steps_per_epoch must be an integer >= 1, got 0"):
        run.optimizer(model, steps_per_epoch=0)
    with pytest.raises(Diverged, match="val_error is nan at epoch 1"):
        run.report(1.0, math.nan, 0.5)
    constant = _task_config(Task(_mlp, _data(), name="t"), schedule="constant").run_config("sgd", 0.1, 1e-4)
    optimizer, scheduler = Run(constant, 0, CPU).optimizer(_mlp(), steps_per_epoch=3)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.1 and optimizer.param_groups[0]["decay"] == "l2"


def test_a_tasks_batch_size_and_epochs_sit_between_the_preset_and_the_flags(tmp_path):
    task = Task(_mlp, _data(), batch_size=32, epochs=7, name="t")
    assert (
        load_sweep_config("smoke", task=task).train.batch_size,
        load_sweep_config("smoke", task=task).train.epochs,
    ) == (32, 7)
    flagged = load_sweep_config("smoke", overrides={"train": {"epochs": 2}}, task=task)
    assert (flagged.train.batch_size, flagged.train.epochs) == (32, 2)
    assert load_sweep_config("smoke", task=Task(_mlp, _data(), name="t")).train.epochs == 3  # the preset's
    with pytest.raises(ConfigError, match=r"data.dataset \(from the command line\) does not apply to --task"):
        load_sweep_config("smoke", overrides={"data": {"dataset": "digits"}}, task=task)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Task(model=3, data=_data()), "Task.model must be callable, got int"),
        (lambda: Task(model=_mlp, data=[1, 2]), "Task.data must be a Data, a dict with train, val and test splits, or a"),
        (lambda: Task(model=_mlp, data=_data(), batch_size=0), "Task.batch_size must be an integer >= 1 or None, got 0"),
        (lambda: LoopTask(train=None), "LoopTask.train must be callable, got NoneType"),
        (lambda: Data(train=(torch.zeros(3, 2), torch.zeros(4)), val=(torch.zeros(1),) * 2, test=(torch.zeros(1),) * 2),
         "Data.train: inputs and targets must have one row per example, got shapes (3, 2) and (4,)"),
        (lambda: Data(train=[1, 2, 3], val=None, test=None), "Data.train must be (inputs, targets) tensors or a torch Dataset"),
        (lambda: Data(train=(torch.zeros(0, 2), torch.zeros(0)), val=(torch.zeros(1),) * 2, test=(torch.zeros(1),) * 2),
         "Data.train is empty"),
    ],
)  # fmt: skip
def test_a_task_of_the_wrong_shape_is_refused_when_it_is_made(make, message):
    with pytest.raises(TaskError) as caught:
        make()
    assert message in str(caught.value) and "\n" not in str(caught.value)


# ------------------------------------------------------------------------- files the CLI loads


def _write(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


HEADER = """
    import time
    import torch
    from torch import nn
    from decoupled.experiments import Data, LoopTask, Task

    def data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(60, 4, generator=g)
        y = (x[:, 0] > 0).long()
        return Data(train=(x[:30], y[:30]), val=(x[30:45], y[30:45]), test=(x[45:], y[45:]))
"""

MIXED = (
    HEADER
    + """
    def train(run):
        # One outcome per optimizer: adamw trains, adam reports NaN, sgd raises, sgdw reports nothing.
        model = nn.Linear(4, 2)
        optimizer, scheduler = run.optimizer(model, steps_per_epoch=1)
        if run.optimizer_name == "sgd":
            raise ValueError(f"boom at lr {run.lr}")
        if run.optimizer_name == "sgdw":
            return
        x, y = run.data.train
        for epoch in range(run.epochs):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            if run.optimizer_name == "adam" and epoch == 1:
                run.report(float("nan"), 0.5, 0.5)
            run.report(loss.item(), 0.4, 0.3)

    task = LoopTask(train=train, data=data, name="mixed")
"""
)

SMALL = ["--preset", "smoke", "--seeds", "1", "--epochs", "3", "--workers", "1", "--no-report",
         "--lr", "0.01", "--weight-decay", "0.001"]  # fmt: skip


@pytest.mark.slow
def test_failing_runs_are_recorded_with_their_error_the_sweep_goes_on_and_the_report_lists_them(tmp_path):
    path = _write(tmp_path, "mixed.py", MIXED)
    out = tmp_path / "out"
    result = cli("sweep", "--task", f"{path}:task", *SMALL, "--out", str(out))
    assert result.returncode == 1, result.stderr  # failed runs: exit 1, as for the built-in tasks
    assert "recorded 2 runs (1 diverged), 0 were already stored, 2 FAILED" in result.stdout
    assert "failed: sgd lr=0.01 wd=0.001 seed=0: ValueError: boom at lr 0.01" in result.stderr
    assert "Traceback" not in result.stderr
    with Store.open(out, create=False) as store:
        runs = {row["optimizer"]: row for row in store.runs()}
        failures = {row["optimizer"]: row for row in store.failures()}
    assert set(runs) == {"adamw", "adam"} and set(failures) == {"sgd", "sgdw"}
    assert runs["adamw"]["train_loss"] and not runs["adamw"]["diverged"] and runs["adamw"]["final_test_error"] == 0.3
    assert runs["adam"]["diverged"] and runs["adam"]["epochs_run"] == 1
    assert runs["adam"]["extra"]["diverged"] == "train_loss is nan at epoch 2"
    assert failures["sgd"]["error"] == "ValueError: boom at lr 0.01" and "Traceback" in failures["sgd"]["details"]
    assert failures["sgdw"]["error"].startswith("RuntimeError: the task reported no epoch")

    render_report(out)
    markdown = (out / "report.md").read_text()
    section = markdown.split("## Failed runs", 1)[1].split("\n## ", 1)[0]
    assert "2 runs failed and are not in the numbers above" in section
    assert "| SGD (L2) | 0.01 | 0.001 | 0 | ValueError: boom at lr 0.01 |" in section
    assert "RuntimeError: the task reported no epoch" in section
    assert "1 runs diverged (counted as 100% error): train_loss is nan (1)." in section

    again = cli("sweep", "--task", f"{path}:task", *SMALL, "--out", str(out))  # failures are retried
    assert "2 runs to do (2 already in the store)" in again.stdout and again.returncode == 1


@pytest.mark.parametrize(
    "name, body, spec, expected",
    [
        (None, None, "{dir}/missing.py:task", "--task {dir}/missing.py:task: no such file '{dir}/missing.py'"),
        (None, None, "no_such_module_xyz:task", "--task no_such_module_xyz:task: no module named 'no_such_module_xyz'"),
        ("broken.py", "import torch\nx = 1 +\n", "{dir}/broken.py:task", "importing {dir}/broken.py raised SyntaxError"),
        ("raising.py", "import torch\nraise RuntimeError('no GPU here')\n", "{dir}/raising.py",
         "--task {dir}/raising.py: importing {dir}/raising.py raised RuntimeError: no GPU here (line 2)"),
        ("typo.py", HEADER + "\n    tsk = Task(model=nn.Flatten, data=data)\n", "{dir}/typo.py:task",
         "{dir}/typo.py has no attribute 'task'; it defines tsk"),
        ("function.py", HEADER + "\n    def task(run):\n        pass\n", "{dir}/function.py:task",
         "'task' is a function, not a decoupled.experiments.Task or LoopTask (a training function goes in LoopTask"),
        ("shape.py", HEADER + "\n    task = Task(model=3, data=data)\n", "{dir}/shape.py:task",
         "raised TaskError: Task.model must be callable, got int (line 13)"),
        ("baddata.py", HEADER + "\n    task = Task(model=nn.Flatten, data=lambda: (1, 2))\n", "{dir}/baddata.py:task",
         "task 'baddata:task': its data() must return a decoupled.experiments.Data (or a dict with train, val, test), got tuple"),
        ("raisingdata.py", HEADER + "\n    def bad():\n        raise OSError('disk gone')\n"
         "    task = Task(model=nn.Flatten, data=bad)\n", "{dir}/raisingdata.py:task",
         "task 'raisingdata:task': its data() raised OSError: disk gone"),
        ("ok.py", HEADER + "\n    task = Task(model=nn.Flatten, data=data)\n", "{dir}/ok.py:task --dataset digits",
         "data.dataset (from the command line) does not apply to --task: the task brings its own data"),
    ],
)  # fmt: skip
def test_a_task_that_cannot_be_loaded_gets_one_line_and_exit_2_before_anything_runs(
    tmp_path, capsys, name, body, spec, expected
):
    if name:
        (tmp_path / name).write_text(textwrap.dedent(body))
    out = tmp_path / "out"
    task_arg, *rest = spec.format(dir=tmp_path).split()
    try:
        code = main(["sweep", "--task", task_arg, *rest, "--preset", "smoke", "--out", str(out)])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured
    assert lines[0].startswith("decoupled sweep: error: ") and expected.format(dir=tmp_path) in lines[0], lines
    assert not out.exists()  # nothing ran, nothing was made


SLOW = (
    HEADER
    + """
    def train(run):
        time.sleep(0.3)  # long enough to be killed mid-sweep
        model = nn.Linear(4, 2)
        optimizer, scheduler = run.optimizer(model, steps_per_epoch=1)
        x, y = run.data.train
        for epoch in range(run.epochs):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                errors = [(model(v).argmax(1) != t).float().mean().item() for v, t in (run.data.val, run.data.test)]
            run.report(loss.item(), *errors)

    task = LoopTask(train=train, data=data)
"""
)


@pytest.mark.slow
def test_a_user_task_sweep_killed_with_sigkill_resumes_without_recording_twice(tmp_path):
    path = _write(tmp_path, "slow.py", SLOW)
    out = tmp_path / "killed"
    args = ["sweep", "--task", f"{path}:task", "--preset", "smoke", "--optimizers", "adamw,sgdw", "--epochs", "2",
            "--workers", "1", "--out", str(out), "--no-report"]  # fmt: skip
    kill_after_runs(popen_cli(*args), out / "results.sqlite")
    with Store.open(out, create=False) as store:
        survivors = {(r["config_hash"], r["seed"]): r["train_loss"] for r in store.runs()}
    planned = 2 * 4 * 2
    assert 2 <= len(survivors) < planned

    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{planned - len(survivors)} runs to do ({len(survivors)} already in the store)" in resumed.stdout
    with Store.open(out, create=False) as store:
        rows = store.runs()
    assert len(rows) == planned == len({(r["config_hash"], r["seed"]) for r in rows})
    assert all(r["config"]["task"] == "slow:task" and r["config"]["data"]["train_size"] == 30 for r in rows)
    kept = {(r["config_hash"], r["seed"]): r["train_loss"] for r in rows}
    assert all(kept[key] == loss for key, loss in survivors.items())


def test_load_task_names_a_task_after_its_file_and_loads_modules_too(tmp_path, monkeypatch):
    _write(tmp_path, "named.py", HEADER + "\n    task = Task(model=nn.Flatten, data=data)\n")
    task = load_task(f"{tmp_path}/named.py")  # NAME defaults to task
    assert task.name == "named:task" and task.source == f"{tmp_path / 'named.py'}:task"
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_task("named:task").name == "named:task"  # as a module on sys.path
    assert load_task("named").data is not None
    assert DataConfig(dataset="task").dataset == "task"


def _module_level_task() -> Task:
    return Task(model=_mlp, data=_data, batch_size=16, name="in-python")


def test_a_task_made_in_python_runs_on_spawned_workers_and_one_that_cannot_travel_is_refused(tmp_path):
    """The Python API: run_sweep(..., task=Task(...)) without a file; the workers get the task by pickle."""
    from decoupled.experiments.progress import PlainProgress
    from decoupled.experiments.sweep import ExecutionOptions, run_sweep
    import io

    task = _module_level_task()
    config = _task_config(task)
    summary = run_sweep(
        config, ExecutionOptions(out=tmp_path / "py", workers=1), PlainProgress(io.StringIO()), task=task
    )
    assert (summary.recorded, summary.failed) == (2, [])
    here = run_task(task, _data(), config.run_config("adamw", 0.01, 1e-3), 0, CPU)
    with Store.open(tmp_path / "py", create=False) as store:
        stored = next(r for r in store.runs() if r["optimizer"] == "adamw")
    assert stored["test_error"] == here.test_error and stored["train_loss"] == here.train_loss

    unpicklable = Task(model=lambda: _mlp(), data=_data(), name="lambda")
    with pytest.raises(TaskError, match="task 'lambda' cannot be sent to worker processes .* define its functions"):
        run_sweep(_task_config(unpicklable), ExecutionOptions(out=tmp_path / "no", workers=1),
                  PlainProgress(io.StringIO()), task=unpicklable)  # fmt: skip
    assert not (tmp_path / "no").exists()


def test_data_may_be_spelled_as_a_dict_or_three_splits():
    data = _data()
    splits = {"train": data.train, "validation": data.val, "test": data.test}
    assert Task(_mlp, splits).data == Task(_mlp, (data.train, data.val, data.test)).data
    assert Task(_mlp, splits).load_data().sizes == data.sizes == LoopTask(print, data=lambda: splits).load_data().sizes
    with pytest.raises(TaskError, match="Data.val: inputs and targets must have one row per example"):
        Task(_mlp, {"train": data.train, "val": (data.val[0], data.val[1][:3]), "test": data.test})


def test_the_report_of_a_loop_task_without_data_says_what_it_does_not_know(tmp_path):
    """A LoopTask that loads its own data: no split sizes, so no steps, normalizer or test-set noise."""
    from decoupled.experiments.config import SweepConfig, with_task_data
    from decoupled.experiments.train import RunRecord

    def train(run):  # never run: the records are written below
        raise AssertionError

    task = LoopTask(train=train, name="own-data")
    config = with_task_data(_task_config(task), (0, 0, 0))
    with Store.open(tmp_path) as store:
        store.add_sweep(config, "test")
        for seed in range(config.seeds):
            for grid in config.grids:
                run = config.run_config(grid.optimizer, grid.lrs[0], grid.weight_decays[0])
                store.add_run(RunRecord(run, seed, [1.0, 0.5], [0.3, 0.2], [0.3, 0.25], 0.2, 0.25,
                                        provenance={"code_version": "test", "library_versions": {}, "hardware": {}}))  # fmt: skip
    assert isinstance(config, SweepConfig)
    render_report(tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "loaded by its own loop (sizes not known to the toolkit)" in markdown
    assert not re.search(r"\bnan\b", markdown), [line for line in markdown.splitlines() if "nan" in line]
