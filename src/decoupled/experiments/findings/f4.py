"""F4 (appendix B.1): the best weight decay shrinks as the number of weight updates grows; normalized decay
lambda = lambda_norm sqrt(b / (B T)) removes the dependence.

Statistic: per budget, lambda* = the vertex of a parabola fitted to log test error over log2(lambda) (cells that
trained well); per axis (epochs at batch 128; batch size at fixed epochs), the exponent = slope of log lambda*
against log(updates), with a 95% bootstrap interval (:func:`decoupled.experiments.stats.scaling_exponent`).
Predictions beside it: normalized decay, -1/2 on both axes; the timescale view of Wang & Aitchison 2024 (a
constant EMA timescale 1 / (eta lambda) in epochs: lambda* proportional to b / B at fixed epochs): 0 along
epochs, -1 along batch size. Verdict per optimizer and axis by :func:`common.exponent_verdict`, combined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis import TRAINED_WITHIN, Findings, OptimizerFindings
from ..stats import Interval, LocationFit, basin_edge, parabola_vertex, scaling_exponent
from .common import FindingResult, combine, exponent_verdict, fmt_slope

TITLE = "The best weight decay depends on the number of updates"
CLAIM = (
    "The more weight updates (batch passes), the smaller the best weight decay; normalized weight decay "
    "lambda_norm sqrt(b / (B T)) removes that dependence."
)
PAPER = "Appendix B.1 (CIFAR-10, ImageNet32x32): lambda* falls with the budget; lambda_norm* stays put (exponent -1/2)"
FIGURE = "weight_decay_budgets.png"
OPTIMIZERS = ("adamw", "sgdw")
LABELS = {"adamw": "AdamW", "sgdw": "SGDW"}
# axis -> (arms along it, the timescale view's predicted exponent); normalized decay predicts -1/2 on both.
AXES = {
    "epochs": (("epochs-3", "epochs-6", "epochs-12"), 0.0),
    "batch size": (("epochs-6", "batch-64", "batch-32"), -1.0),
}
NORMALIZED = -0.5


@dataclass
class Budget:
    arm: str
    epochs: int
    batch_size: int
    updates: int
    log2_lambdas: np.ndarray
    test_mean: np.ndarray  # per lambda
    edge: LocationFit | None  # lambda_edge: the verdict's statistic
    vertex: LocationFit | None  # lambda*, a parabola's vertex: reported, decides nothing

    @property
    def normalizer(self) -> float:
        """sqrt(b / (B T)) = 1 / sqrt(updates): lambda = lambda_norm * normalizer."""
        return 1 / math.sqrt(self.updates)


def budget(arm: str, findings: Findings, name: str, stream: int) -> Budget | None:
    opt: OptimizerFindings | None = findings.by_name(name)
    if opt is None or opt.best is None:
        return None
    config = findings.config
    steps = math.ceil(config.data.train_size / config.train.batch_size)
    row = opt.best[0]
    y = np.log2(np.where(np.array(opt.grid.weight_decays) > 0, opt.grid.weight_decays, np.nan))
    usable = opt.usable[row] & ~np.isnan(y)
    best = float(np.min(opt.test_mean[row][usable])) if usable.any() else math.nan
    trained = usable & (opt.test_mean[row] <= TRAINED_WITHIN * best)
    vertex = parabola_vertex(np.nan_to_num(y), opt.test_by_seed[:, row, :], trained, stream=stream)
    positive = ~np.isnan(y)  # every measured lambda > 0 (a diverged seed counts as 100% error)
    edge = basin_edge(y[positive], opt.test_by_seed[:, row, positive], stream=stream, within=TRAINED_WITHIN)
    return Budget(arm, config.train.epochs, config.train.batch_size, config.train.epochs * steps, y,
                  opt.test_mean[row], edge, vertex)  # fmt: skip


def exponent(budgets: list[Budget | None], location: str = "edge") -> Interval | None:
    """The exponent of one axis' budgets' ``location`` ("edge": lambda_edge, "vertex": lambda*) against their
    number of updates; None unless every budget on the axis has that location inside its grid (a vertex outside
    the fitted cells is an extrapolation, on a plateau sometimes by dozens of octaves)."""
    fits = [getattr(b, location) for b in budgets if b is not None and getattr(b, location) is not None]
    fits = [fit for fit in fits if fit.inside]
    if len(fits) < len(budgets) or len(fits) < 2:
        return None
    return scaling_exponent([math.log2(b.updates) for b in budgets if b is not None], fits)


def analyze(arms: dict[tuple[str, str], Findings], folder: Path) -> FindingResult:
    budgets: dict[tuple[str, str], Budget | None] = {}
    for o, name in enumerate(OPTIMIZERS):
        for a, ((_, arm), findings) in enumerate(sorted(arms.items())):
            budgets[(name, arm)] = budget(arm, findings, name, stream=10 * o + a)
    verdicts, rows, parts, vertex_parts = [], [], [], []
    for name in OPTIMIZERS:
        for axis, (arm_names, timescale) in AXES.items():
            on_axis = [budgets.get((name, arm)) for arm in arm_names]
            interval = exponent(on_axis)
            verdict = exponent_verdict(interval, NORMALIZED)
            verdicts.append(verdict)
            label = LABELS[name]
            timescale_fits = "n/a" if interval is None else ("yes" if interval.contains(timescale) else "no")
            normalized_fits = "n/a" if interval is None else ("yes" if interval.contains(NORMALIZED) else "no")
            rows.append([label, axis, fmt_slope(interval), f"{NORMALIZED:+.1f} ({normalized_fits})",
                         f"{timescale:+.1f} ({timescale_fits})", verdict])  # fmt: skip
            parts.append(f"{label} along {axis} {fmt_slope(interval)}")
            vertex_parts.append(f"{label} along {axis} {fmt_slope(exponent(on_axis, 'vertex'))}")
    verdict = combine(verdicts)
    from .plots import plot_budgets

    plot_budgets(budgets, OPTIMIZERS, folder / FIGURE)
    budget_rows = []
    for (name, arm), b in sorted(budgets.items()):
        if b is None:
            continue
        edge = "n/a" if b.edge is None else _location(b.edge)
        norm = "n/a" if b.edge is None else f"{2**b.edge.location / b.normalizer:.3g}"
        star = "n/a" if b.vertex is None else f"2^{b.vertex.location:.2f}" + ("" if b.vertex.inside else " (outside)")
        budget_rows.append([name, arm, str(b.epochs), str(b.batch_size), str(b.updates), edge, norm, star])
    missing = sum(1 for b in budgets.values() if b is None or b.edge is None)
    details = [
        f"**F4: {verdict}.** Exponent of the basin's upper edge lambda_edge against the number of updates (95% "
        "interval): " + "; ".join(parts) + ". Normalized decay predicts -1/2 on both axes; a constant EMA "
        "timescale in epochs (Wang & Aitchison 2024) predicts 0 along epochs and -1 along batch size.",
        (
            f"{missing} of {len(budgets)} (optimizer, budget) pairs give no lambda_edge (the error never reaches "
            "twice its best within the grid), so their axes get no exponent. "
            if missing
            else ""
        )
        + "lambda_edge is where the mean test error, climbing from its lowest point towards larger lambda, first "
        "reaches twice its lowest (interpolated between grid points, so it moves continuously with the data, "
        "unlike an argmin). The curves are a plateau at small lambda and a cliff just past the best: the cliff "
        "places the edge tightly where the optimum of a plateau is poorly placed, and a curve that moves along log "
        "lambda with the budget moves its edge as its optimum.",
        "Cross-check, decides nothing: the same exponent from lambda* = the vertex of a parabola in log lambda "
        "fitted to the cells within twice the best error: " + "; ".join(vertex_parts) + " (n/a where some budget's "
        "cells show no minimum, or one outside them: the plateau).",
    ]
    return FindingResult(
        "F4", TITLE, CLAIM, PAPER, "; ".join(parts), verdict, FIGURE,
        "Test error against raw lambda (left) and against lambda_norm (right), one curve per budget",
        details,
        [("Exponent of lambda_edge per optimizer and axis", ["optimizer", "axis", "exponent [95% interval]",
                                                         "normalized decay (inside?)", "timescale view (inside?)",
                                                         "verdict"], rows),
         ("lambda_edge per budget (95% interval of its log2)",
          ["optimizer", "budget", "epochs", "batch", "updates", "lambda_edge", "lambda_edge / sqrt(b / (B T))",
           "lambda* (vertex)"], budget_rows)],
    )  # fmt: skip


def _location(fit: LocationFit) -> str:
    """2^-6.10 [-6.50, -5.80]: the location (log2 lambda) and the 95% interval of its replicates."""
    interval = fit.interval()
    return f"2^{fit.location:.2f} [{interval.low:.2f}, {interval.high:.2f}]"
