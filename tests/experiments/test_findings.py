"""The findings' verdict rules, the analysis of grids whose runs diverged, and the reports of such grids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from decoupled.experiments.analysis import analyze
from decoupled.experiments.config import load_sweep_config
from decoupled.experiments.findings.common import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    combine,
    direction_verdict,
    exponent_verdict,
    load_experiment,
    slope_pair_verdict,
)
from decoupled.experiments.findings.f1 import pair_sentence, pair_verdicts
from decoupled.experiments.plots import plot_curves, plot_heatmaps
from decoupled.experiments.stats import Interval

from .test_analysis import _rows

PNG = b"\x89PNG\r\n\x1a\n"


def _interval(low, high):
    return Interval((low + high) / 2, low, high)


def test_direction_verdict_rules():
    assert direction_verdict(None) == INCONCLUSIVE
    assert direction_verdict(_interval(0.01, 0.03)) == REPRODUCED
    assert direction_verdict(_interval(0.01, 0.03), paper=0.02) == REPRODUCED  # contains the paper's value
    assert direction_verdict(_interval(0.001, 0.01), paper=0.02) == PARTLY  # right direction, smaller
    assert direction_verdict(_interval(-0.03, -0.01)) == NOT_REPRODUCED
    assert direction_verdict(_interval(-0.002, 0.003)) == NOT_REPRODUCED  # within +-0.5 points: no effect here
    assert direction_verdict(_interval(-0.02, 0.03)) == INCONCLUSIVE
    assert direction_verdict(_interval(-0.02, 0.03), paper=0.02) == INCONCLUSIVE
    assert direction_verdict(_interval(-0.02, 0.01), paper=0.02) == NOT_REPRODUCED


def test_slope_and_exponent_verdict_rules():
    assert slope_pair_verdict(_interval(-1.3, -0.8), _interval(-0.2, 0.3)) == REPRODUCED
    assert slope_pair_verdict(_interval(-1.3, -0.8), _interval(0.3, 0.9)) == PARTLY  # separated, not near 0
    assert slope_pair_verdict(_interval(-0.5, 0.1), _interval(-0.2, 0.3)) == PARTLY  # near 0, overlapping
    assert slope_pair_verdict(_interval(-2.1, -1.9), _interval(-2.1, -1.9)) == NOT_REPRODUCED  # identical slopes
    assert slope_pair_verdict(_interval(-3.0, 1.0), _interval(-0.2, 0.3)) == INCONCLUSIVE
    assert slope_pair_verdict(None, _interval(-0.2, 0.3)) == INCONCLUSIVE
    assert exponent_verdict(_interval(-0.8, -0.3)) == REPRODUCED
    assert exponent_verdict(_interval(-1.3, -0.8)) == PARTLY
    assert exponent_verdict(_interval(0.1, 0.4)) == NOT_REPRODUCED
    assert exponent_verdict(_interval(-0.2, 0.3)) == NOT_REPRODUCED
    assert exponent_verdict(_interval(-0.7, 0.2)) == INCONCLUSIVE
    assert exponent_verdict(_interval(-3.0, 0.2)) == INCONCLUSIVE
    assert combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert combine([REPRODUCED, NOT_REPRODUCED]) == PARTLY
    assert combine([NOT_REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([]) == INCONCLUSIVE


def _config(optimizers=("adam", "adamw")):
    grid = {"lr_log2": [-8, -4], "weight_decay_log2": [-12, -4, 2]}  # 5 x 5
    return load_sweep_config("smoke", overrides={"seeds": 3, "optimizers": list(optimizers),
                                                 "grid": {name: grid for name in optimizers}})  # fmt: skip


def _smooth(name, i, j, seed):
    """A quadratic log error with a little seed noise. Learning rates are 2^1 apart, weight decays 2^2: with L2 the
    valley's weight-decay index falls half a step per learning-rate step (lambda* ~ 1 / alpha, slope -1); the
    decoupled valley stays at index 2 (slope 0)."""
    if name == "adam":
        centre = 2.0 - (i - 2) * 0.5  # weight-decay index falls half a step per lr step: lambda ~ 1/alpha
    else:
        centre = 2.0
    rng = np.random.default_rng(100 * i + 10 * j + seed)
    return 0.03 * 10 ** (0.02 * (i - 2) ** 2 + 0.08 * (j - centre) ** 2 + 0.01 * rng.standard_normal())


def _cliff(name, i, j, seed):
    """MNIST-1D's shape: 3% error flat at small weight decay, then a cliff (log10 error +0.1 per unit of log2
    lambda, twice the plateau at the edge). Weight decays 2^-12 .. 2^-4 (j = 0 .. 4, 4x apart), learning rates 2x
    apart (i): with L2 the edge falls one unit of log2 lambda per unit of log2 alpha (slope -1); decoupled, it
    stays at 2^-7 (slope 0)."""
    y = -12.0 + 2 * j
    edge = -7.0 - (i - 2) if name == "adam" else -7.0
    rng = np.random.default_rng(100 * i + 10 * j + seed)
    rise = 0.1 * max(0.0, y - (edge - math.log10(2) / 0.1))
    return 0.03 * 10 ** (rise + 0.01 * rng.standard_normal())


def test_f1_on_a_known_landscape_is_reproduced_with_intervals():
    config = _config()
    findings = analyze(config, _rows(config, _cliff))
    adam, adamw = findings.by_name("adam"), findings.by_name("adamw")
    assert adam.basin.unit == "rows" and adam.basin.cells == 5
    assert adam.basin.interval.contains(-1.0) and adam.basin.interval.high < -0.5
    assert adamw.basin.interval.contains(0.0) and adamw.basin.interval.half_width < 0.5
    [(base, variant, verdict)] = pair_verdicts(findings)
    assert verdict == REPRODUCED
    assert "reproduced" in pair_sentence(base, variant, verdict)


def test_the_quadratic_cross_check_on_a_smooth_landscape():
    findings = analyze(_config(), _rows(_config(), _smooth))
    adam, adamw = findings.by_name("adam"), findings.by_name("adamw")
    assert adam.basin_quadratic.interval.contains(-1.0) and adam.basin_quadratic.interval.high < -0.5
    assert adamw.basin_quadratic.interval.contains(0.0) and adamw.basin_quadratic.interval.half_width < 0.5


def test_every_run_diverged_no_slope_no_ring_no_pick_and_the_figures_render(tmp_path):
    config = _config(("adam", "adamw", "sgd", "sgdw"))
    rows = _rows(config, _smooth, diverged_of=lambda name, i, j, seed: name == "adamw" or (i == 4 and j == 0))
    findings = analyze(config, rows)
    adamw = findings.by_name("adamw")
    assert adamw.best is None and adamw.basin is None and adamw.top_cells() == [] and adamw.slope is None
    assert adamw.basin_width == 0
    adam = findings.by_name("adam")
    assert (4, 0) not in adam.top_cells(25) and adam.best != (4, 0) and not adam.usable[4, 0]
    assert plot_heatmaps(findings, tmp_path / "h.png").read_bytes()[:8] == PNG
    assert plot_curves(findings, tmp_path / "c.png").read_bytes()[:8] == PNG
    sentences = [pair_sentence(b, w, v) for b, w, v in pair_verdicts(findings)]
    assert any("AdamW: no basin orientation (every cell diverged)" in s and INCONCLUSIVE in s for s in sentences)
    assert not any("rises" in s for s in sentences)


def test_a_sweep_where_everything_diverged_still_gets_figures(tmp_path):
    config = _config(("adam",))
    findings = analyze(config, _rows(config, _smooth, diverged_of=lambda *a: True))
    assert findings.by_name("adam").best is None
    plot_heatmaps(findings, tmp_path / "h.png")
    plot_curves(findings, tmp_path / "c.png")  # "Data cannot be log-scaled" before


def test_identical_slopes_are_not_called_partly_shown():
    l2 = decoupled_ = Interval(-2.0, -2.1, -1.9)
    assert slope_pair_verdict(l2, decoupled_) == NOT_REPRODUCED


@pytest.mark.parametrize("preset", ["f1", "f2", "f3", "f4", "f5"])
def test_experiment_presets_load_full_and_smoke(preset):
    full, smoke = load_experiment(preset), load_experiment(preset, smoke=True)
    assert full.finding == smoke.finding == preset.upper()
    assert [a.name for a in full.arms] == [a.name for a in smoke.arms]
    for arm in full.arms:  # every arm of an experiment shares its data: one set of workers runs them all
        assert arm.config.data == full.arms[0].config.data
    runs = sum(g.cells for a in smoke.arms for g in a.config.grids) * smoke.arms[0].config.seeds
    assert runs <= 120 and smoke.arms[0].config.seeds >= 2
    if preset == "f4":  # >= 3 budgets spanning >= 4x in updates on each axis
        updates = {a.name: a.config.train.epochs * math.ceil(a.config.data.train_size / a.config.train.batch_size)
                   for a in full.arms}  # fmt: skip
        assert updates["epochs-12"] / updates["epochs-3"] == 4
        assert updates["batch-32"] / updates["epochs-6"] > 3.9  # 125 / ceil(4000 / 128) = 125 / 32 steps per epoch


def test_new_keys_at_their_default_leave_run_hashes_unchanged():
    import hashlib
    import json

    run = load_sweep_config("default").run_config("adamw", 0.03125, 0.03125)
    raw = run.to_dict()
    del raw["train"]["curves"]
    legacy = hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert run.key() == legacy
    assert load_experiment("f4").arms[0].config.run_config("adamw", 0.03125, 0.001).key() != legacy


def test_f4_on_budgets_whose_cliff_moves_as_updates_to_the_minus_half_is_reproduced(tmp_path):
    """F4's own arms and grids, with the measured shape (a plateau, then a cliff) moved along log lambda by
    -1/2 log(updates): the edges' exponent is -1/2 on both axes, and the verdict is reproduced."""
    from decoupled.experiments.findings import f4

    experiment = load_experiment("f4")
    arms = {}
    for arm in experiment.arms:
        config = arm.config
        updates = config.train.epochs * math.ceil(config.data.train_size / config.train.batch_size)
        edge = -5.0 - 0.5 * (math.log2(updates) - 10)

        def error(name, i, j, seed, grid=config.grids, edge=edge):
            y = math.log2([g for g in grid if g.optimizer == name][0].weight_decays[j])
            rng = np.random.default_rng(1000 * j + seed)
            rise = 0.4 * max(0.0, y - (edge - math.log10(2) / 0.4))
            return min(0.9, 0.03 * 10 ** (rise + 0.005 * rng.standard_normal()))

        arms[(arm.finding, arm.name)] = analyze(config, _rows(config, error))
    result = f4.analyze(arms, tmp_path)
    assert result.verdict == REPRODUCED, result.ours
    assert (tmp_path / f4.FIGURE).read_bytes()[:8] == PNG
    estimates = [float(part.split()[-3]) for part in result.ours.split("; ")]  # "AdamW along epochs -0.50 [..]"
    assert len(estimates) == 4 and all(abs(e + 0.5) < 0.03 for e in estimates)  # AdamW and SGDW, both axes


def test_f1_holds_the_default_sweeps_runs_and_halves_its_weight_decay_steps():
    """F1's grid is the default sweep's with weight decays 2x apart: every default run is one of F1's (same
    config hash), so a folder of `decoupled sweep` resumes into F1 and the two agree on those cells."""
    f1 = load_experiment("f1").arms[0].config
    default = load_sweep_config("default")

    def keys(config):
        return {config.run_config(g.optimizer, lr, wd).key() for g in config.grids for lr in g.lrs
                for wd in g.weight_decays}  # fmt: skip

    assert keys(default) < keys(f1) and len(keys(f1)) == 180
    for grid in f1.grids:
        assert np.allclose(np.diff(np.log2(grid.weight_decays)), 1.0) and len(grid.lrs) == 5
