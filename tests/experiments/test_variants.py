"""The sweep's later weight-decay rules (adamw-cautious, sgdw-cautious, adamc) and the tau axis of the heatmaps."""

from __future__ import annotations

import pytest
import torch

from decoupled.experiments.axes import steps_per_epoch, weight_decay_axis
from decoupled.experiments.config import (
    OPTIMIZERS,
    PAPER_OPTIMIZERS,
    ConfigError,
    RunConfig,
    load_sweep_config,
    merge,
    read_preset,
    sweep_config_from_dict,
)
from decoupled.experiments.tasks import make_optimizer

from .conftest import cli, tiny_overrides

VARIANTS = {"adamw-cautious": ("adamw", "decoupled", True), "sgdw-cautious": ("sgdw", "decoupled", True),
            "adamc": ("adamw", "corrected", False)}  # fmt: skip


def test_the_default_selection_is_still_the_papers_four():
    for preset in ("default", "smoke"):
        config = load_sweep_config(preset, None, tiny_overrides())
        assert [g.optimizer for g in config.grids] == list(PAPER_OPTIMIZERS)
    raw = merge(read_preset("default"), tiny_overrides())
    del raw["optimizers"]  # a config that names none gets the paper's four, not every known name
    assert [g.optimizer for g in sweep_config_from_dict(raw).grids] == list(PAPER_OPTIMIZERS)


@pytest.mark.parametrize("name", VARIANTS)
def test_a_variant_is_selectable_and_builds_its_optimizer(name):
    like, decay, cautious = VARIANTS[name]
    config = load_sweep_config("default", None, tiny_overrides(optimizers=[like, name]))
    grids = {g.optimizer: g for g in config.grids}
    assert (grids[name].lrs, grids[name].weight_decays) == (grids[like].lrs, grids[like].weight_decays)
    run = config.run_config(name, grids[name].lrs[0], grids[name].weight_decays[0])
    assert isinstance(run, RunConfig)
    optimizer = make_optimizer(run, torch.nn.Linear(3, 2))
    group = optimizer.param_groups[0]
    assert (group["decay"], group["cautious"]) == (decay, cautious)
    assert run.key() != config.run_config(like, grids[like].lrs[0], grids[like].weight_decays[0]).key()


def test_a_variant_takes_its_own_grid_when_given():
    overrides = tiny_overrides(optimizers=["adamc"])
    overrides["grid"]["adamc"] = {"lr": [0.02, 0.04], "weight_decay": [1e-2]}
    (grid,) = load_sweep_config("default", None, overrides).grids
    assert (grid.lrs, grid.weight_decays) == ((0.02, 0.04), (1e-2,))


def test_an_unknown_optimizer_name_is_still_refused():
    with pytest.raises(ConfigError, match="adamw-cautios"):
        load_sweep_config("default", None, tiny_overrides(optimizers=["adamw-cautios"]))


def test_weight_decay_axis_in_timescale_epochs():
    ticks, label = weight_decay_axis((0.0, 1 / 390, 1e-4), decay="decoupled", unit="tau", steps=39, lambda_ticks=[])
    assert ticks == ["inf", "10", "256"] and "epochs" in label and "39" in label
    assert weight_decay_axis((1e-4,), decay="l2", unit="tau", steps=39, lambda_ticks=["x"]) == (["x"], None)
    assert weight_decay_axis((1e-4,), decay="decoupled", unit="lambda", steps=39, lambda_ticks=["x"]) == (["x"], None)
    assert steps_per_epoch(4000, 128) == 32 and steps_per_epoch(0, 128) == 0  # 0: a task with its own data
    ticks, label = weight_decay_axis((1e-4,), decay="decoupled", unit="tau", steps=0, lambda_ticks=["x"])
    assert ticks == ["x"] and "unknown" in label
    with pytest.raises(ValueError, match="weight-decay axis is one of"):
        weight_decay_axis((1e-4,), decay="decoupled", unit="epochs", steps=39, lambda_ticks=["x"])


def test_sweep_with_variants_reports_them_against_adamw_and_labels_tau(tmp_path):
    args = ["sweep", "--preset", "smoke", "--optimizers", "adamw,adamw-cautious,adamc", "--out", str(tmp_path / "s"),
            "--workers", "1", "--seeds", "2", "--epochs", "1", "--train-size", "300", "--val-size", "150",
            "--test-size", "150", "--weight-decay-axis", "tau"]  # fmt: skip
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "s" / "report.md").read_text()
    assert "## Later weight-decay rules vs AdamW" in report
    assert "| AdamW (cautious) vs AdamW |" in report and "| AdamC vs AdamW |" in report
    again = cli("report", str(tmp_path / "s"), "--weight-decay-axis", "lambda")
    assert again.returncode == 0, again.stderr
    bad = cli("report", str(tmp_path / "s"), "--weight-decay-axis", "epochs")
    assert bad.returncode == 2 and "invalid choice: 'epochs'" in bad.stderr


def test_variant_labels_are_named_once():
    assert {name: OPTIMIZERS[name].label for name in VARIANTS} == {
        "adamw-cautious": "AdamW (cautious)", "sgdw-cautious": "SGDW (cautious)", "adamc": "AdamC"}  # fmt: skip
