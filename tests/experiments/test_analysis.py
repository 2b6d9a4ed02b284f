"""The report's numbers on synthetic stores whose answers are known."""

from __future__ import annotations

import math

import pytest

from decoupled.experiments.analysis import analyze
from decoupled.experiments.config import load_sweep_config


def _config(seeds: int = 2):
    grid = {"lr_log2": [-8, -4], "weight_decay_log2": [-12, -6]}  # 5 learning rates x 7 weight decays
    return load_sweep_config("smoke", overrides={"seeds": seeds, "optimizers": ["adam", "adamw"],
                                                 "grid": {"adam": grid, "adamw": grid}})  # fmt: skip


def _rows(config, error_of, diverged_of=lambda *a: False):
    rows = []
    for grid in config.grids:
        for i, lr in enumerate(grid.lrs):
            for j, wd in enumerate(grid.weight_decays):
                for seed in range(config.seeds):
                    error = error_of(grid.optimizer, i, j, seed)
                    diverged = diverged_of(grid.optimizer, i, j, seed)
                    run = config.run_config(grid.optimizer, lr, wd)
                    rows.append({
                        "config_hash": run.key(), "seed": seed, "config": run.to_dict(), "diverged": diverged,
                        "final_val_error": None if diverged else error, "final_test_error": None if diverged else error,
                        "train_loss": [1.0, 0.5], "val_error": [0.5, error], "test_error": [0.5, error],
                        "wall_time_s": 1.0, "code_version": "test", "hardware": {"cpu": "x"},
                    })  # fmt: skip
    return rows


def _landscape(name, i, j, seed):
    """L2: best weight decay index j = 5 - i (a diagonal, slope -1 in log-log); decoupled: j = 3 in every row."""
    best_j = 5 - i if name == "adam" else 3
    return 0.02 + 0.01 * abs(j - best_j) + 0.002 * abs(i - 2) + 0.001 * seed


def test_slopes_basins_and_selection_on_known_landscapes():
    config = _config()
    findings = analyze(config, _rows(config, _landscape))
    adam, adamw = findings.by_name("adam"), findings.by_name("adamw")
    assert adam.slope == pytest.approx(-1.0) and adamw.slope == pytest.approx(0.0)
    assert adam.slope_rows == adamw.slope_rows == 5
    assert adam.best == (2, 3) and adamw.best == (2, 3) and adam.inside and adamw.inside
    assert adam.best_test_errors == pytest.approx([0.02, 0.021])
    assert adam.best_test_std == pytest.approx(math.sqrt(0.001**2 / 2))
    # Within 1 point of the best mean (2.05%): 0.01 |dj| + 0.002 |di| <= 0.01, i.e. the best weight decay in
    # all 5 rows (|di| <= 2) plus its two neighbours in the best row: 7 cells, on and off the diagonal alike.
    assert adamw.basin_width == adam.basin_width == 7
    assert findings.runs_used == findings.runs_expected == 2 * 35 * 2
    comparison = findings.comparisons[0]
    assert comparison.verdict == "tie" and comparison.difference == pytest.approx(0.0)


def test_optimum_on_the_edge_is_flagged():
    config = _config(seeds=1)
    findings = analyze(config, _rows(config, lambda name, i, j, seed: 0.02 + 0.01 * (4 - i) + 0.01 * j))
    adam = findings.by_name("adam")
    assert adam.best == (4, 0) and not adam.inside
    assert adam.edges == ["largest learning rate", "smallest weight decay"]
    assert adam.best_test_std != adam.best_test_std  # nan with one seed
    assert math.isnan(findings.comparisons[0].standard_error)


def test_diverged_runs_count_as_total_error():
    config = _config()
    rows = _rows(config, _landscape, diverged_of=lambda name, i, j, seed: i == 4)
    findings = analyze(config, rows)
    adamw = findings.by_name("adamw")
    assert (adamw.test_mean[4] == 1.0).all() and (adamw.diverged[4] == 2).all()
    assert findings.runs_diverged == 2 * 7 * 2
    assert adamw.slope_rows == 4  # the diverged row did not train


def test_a_clear_gap_is_a_verdict_and_missing_runs_are_counted():
    config = _config()
    rows = _rows(config, lambda name, i, j, seed: _landscape(name, i, j, seed) + (0.05 if name == "adam" else 0))
    findings = analyze(config, rows[: len(rows) - 3] + [dict(rows[0], config_hash="elsewhere")])
    comparison = findings.comparisons[0]
    assert comparison.verdict == "better" and comparison.relative == pytest.approx(0.05 / 0.0705, rel=1e-6)
    assert findings.runs_used == findings.runs_expected - 3 and findings.runs_other == 1
