"""F2: L2 regularization is not effective in Adam: Adam+L2's best barely beats Adam without regularization,
while L2 does help SGD.

Statistic: for Adam and for SGD, the gain of L2 = test error of the best lambda = 0 cell minus test error of the
best lambda > 0 cell (each picked on validation), paired over seeds; then SGD's gain minus Adam's, paired over
seeds, with a Student-t 95% interval. Verdict: :func:`common.direction_verdict` on that difference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis import Findings, OptimizerFindings
from ..stats import Interval, paired_interval
from ..train import format_power_of_two
from .common import FindingResult, direction_verdict, fmt_points, no_interval_reason
from .plots import plot_intervals

TITLE = "L2 regularization is not effective in Adam"
CLAIM = "Adam with L2 barely beats Adam without regularization, while L2 does help SGD."
PAPER = "Section 1 and Figure 2 (CIFAR-10): Adam+L2 gains little over lambda = 0; no single number given"
FIGURE = "gains.png"


def zero_and_best(opt: OptimizerFindings) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(best cell with lambda = 0, best cell with lambda > 0), each picked on validation."""
    decays = np.array(opt.grid.weight_decays)[None, :].repeat(len(opt.grid.lrs), axis=0)
    return opt.best_in(decays == 0), opt.best_in(decays > 0)


def gain_by_seed(opt: OptimizerFindings) -> dict[int, float] | None:
    """Seed -> test error at lambda = 0 minus at the best lambda > 0 (> 0: regularization helps)."""
    zero, best = zero_and_best(opt)
    if zero is None or best is None:
        return None
    a, b = opt.cell_errors(zero), opt.cell_errors(best)
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def gain_interval(opt: OptimizerFindings | None) -> Interval | None:
    gains = gain_by_seed(opt) if opt is not None else None
    return paired_interval(gains, {s: 0.0 for s in gains}) if gains else None


def cell_text(opt: OptimizerFindings, cell: tuple[int, int] | None) -> str:
    if cell is None:
        return "n/a"
    errors = opt.cell_errors(cell)
    lrs, decays = opt.grid.lrs, opt.grid.weight_decays
    edges = []
    if len(lrs) > 1 and cell[0] in (0, len(lrs) - 1):
        edges.append("smallest lr" if cell[0] == 0 else "largest lr")
    positive = [j for j, wd in enumerate(decays) if wd > 0]
    if decays[cell[1]] > 0 and len(positive) > 1 and cell[1] in (positive[0], positive[-1]):
        edges.append("smallest lambda > 0" if cell[1] == positive[0] else "largest lambda")
    return (
        f"lr {format_power_of_two(lrs[cell[0]])}, wd {format_power_of_two(decays[cell[1]])}: "
        f"{100 * float(np.mean(list(errors.values()))):.2f}%" + (f" (grid edge: {', '.join(edges)})" if edges else "")
    )


def analyze(arms: dict[tuple[str, str], Findings], folder: Path) -> FindingResult:
    findings = arms[("F2", "main")]
    adam, sgd = findings.by_name("adam"), findings.by_name("sgd")
    adam_gain, sgd_gain = gain_interval(adam), gain_interval(sgd)
    difference = None
    if adam is not None and sgd is not None:
        a, s = gain_by_seed(sgd), gain_by_seed(adam)
        difference = paired_interval(a, s) if a and s else None
    verdict = direction_verdict(difference)
    why = no_interval_reason(arms.values())
    ours = f"SGD's L2 gain minus Adam's: {fmt_points(difference, why)}"
    plot_intervals(
        [("Adam: L2 gain over lambda = 0", adam_gain), ("SGD: L2 gain over lambda = 0", sgd_gain),
         ("SGD's gain minus Adam's", difference)],
        folder / FIGURE, "test-error gain (points): > 0 means the first term helps",
        "F2: what L2 regularization gains in Adam and in SGD (95% intervals, paired over seeds)", missing=why,
    )  # fmt: skip
    rows = []
    for opt in (adam, sgd):
        if opt is None:
            continue
        zero, best = zero_and_best(opt)
        rows.append([opt.label, cell_text(opt, zero), cell_text(opt, best), fmt_points(gain_interval(opt), why)])
    details = [
        f"**F2: {verdict}.** L2's gain (test error at the best lambda = 0 cell minus at the best lambda > 0 cell, "
        f"both picked on validation, paired over seeds): Adam {fmt_points(adam_gain, why)}, SGD "
        f"{fmt_points(sgd_gain, why)}; SGD's minus Adam's {fmt_points(difference, why)}.",
        "Reproduced means L2 helps Adam significantly less than it helps SGD; an interval within +-0.5 points around "
        "0 means regularization barely matters for either here, so this setting cannot show the claim.",
    ]
    return FindingResult(
        "F2", TITLE, CLAIM, PAPER, ours, verdict, FIGURE, "L2's gain over no regularization, Adam and SGD",
        details, [("Best cells without and with L2", ["optimizer", "best lambda = 0", "best lambda > 0",
                                                      "gain [95% interval]"], rows)],
    )  # fmt: skip
