"""F3: weight decay is equally effective in SGD and Adam, so AdamW generalizes better than Adam+L2 (about 15%
relative lower test error in the paper) and SGDW about as well as SGD+L2.

Statistic: Adam+L2's test error minus AdamW's, each at its validation-picked best cell (lambda > 0), paired over
seeds, with a Student-t 95% interval; verdict :func:`common.direction_verdict` against the paper's 15% of
Adam+L2's error. Beside it: the gains of AdamW and SGDW over lambda = 0, their difference, and SGD+L2 - SGDW.
Adam+L2 and SGD+L2 are F2's runs (same data, network and budget).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis import Findings, OptimizerFindings
from ..stats import Interval, paired_interval
from .common import FindingResult, direction_verdict, fmt_points, no_interval_reason
from .f2 import cell_text, gain_by_seed, gain_interval, zero_and_best
from .plots import plot_intervals

TITLE = "Weight decay is equally effective in SGD and Adam"
CLAIM = "Decoupled weight decay helps Adam as much as SGD: AdamW generalizes better than Adam with L2."
PAPER = "AdamW about 15% relative lower test error than Adam+L2 (CIFAR-10 and ImageNet32x32, 100+ epochs)"
FIGURE = "comparisons.png"
PAPER_RELATIVE = 0.15


def best_difference(base: OptimizerFindings | None, variant: OptimizerFindings | None) -> Interval | None:
    """base's test error minus variant's, each at its best lambda > 0 cell, paired over seeds."""
    if base is None or variant is None:
        return None
    base_cell, variant_cell = zero_and_best(base)[1], zero_and_best(variant)[1]
    if base_cell is None or variant_cell is None:
        return None
    return paired_interval(base.cell_errors(base_cell), variant.cell_errors(variant_cell))


def analyze(arms: dict[tuple[str, str], Findings], folder: Path) -> FindingResult:
    own, l2 = arms[("F3", "main")], arms.get(("F2", "main"))
    adamw, sgdw = own.by_name("adamw"), own.by_name("sgdw")
    adam = l2.by_name("adam") if l2 else None
    sgd = l2.by_name("sgd") if l2 else None
    adam_vs_adamw, sgd_vs_sgdw = best_difference(adam, adamw), best_difference(sgd, sgdw)
    gain_adamw, gain_sgdw = gain_interval(adamw), gain_interval(sgdw)
    equal = None
    if adamw is not None and sgdw is not None:
        a, s = gain_by_seed(adamw), gain_by_seed(sgdw)
        equal = paired_interval(a, s) if a and s else None
    paper_points = None
    adam_best = zero_and_best(adam)[1] if adam is not None else None
    if adam is not None and adam_best is not None:
        paper_points = PAPER_RELATIVE * float(np.mean(list(adam.cell_errors(adam_best).values())))
    verdict = direction_verdict(adam_vs_adamw, paper_points)
    why = no_interval_reason(arms.values())
    why_l2 = why if l2 is not None else "F2's runs are missing"  # Adam+L2 and SGD+L2 are F2's
    relative = ""
    if adam_vs_adamw is not None and paper_points is not None:
        relative = f" ({100 * adam_vs_adamw.estimate / (paper_points / PAPER_RELATIVE):+.1f}% relative)"
    ours = f"Adam+L2 minus AdamW: {fmt_points(adam_vs_adamw, why_l2)}{relative}"
    plot_intervals(
        [("Adam+L2 minus AdamW (best cells)", adam_vs_adamw), ("SGD+L2 minus SGDW (best cells)", sgd_vs_sgdw),
         ("AdamW: gain over lambda = 0", gain_adamw), ("SGDW: gain over lambda = 0", gain_sgdw),
         ("AdamW's gain minus SGDW's", equal)],
        folder / FIGURE, "test-error difference (points): > 0 means the decoupled variant / decay helps",
        "F3: decoupled weight decay in Adam and SGD (95% intervals, paired over seeds)",
        paper=[paper_points, None, None, None, None], missing=[why_l2, why_l2, why, why, why],
    )  # fmt: skip
    rows = []
    for opt in (adam, adamw, sgd, sgdw):
        if opt is not None:
            zero, best = zero_and_best(opt)
            rows.append([opt.label, cell_text(opt, zero), cell_text(opt, best)])
    paper_text = "n/a" if paper_points is None else f"{100 * paper_points:.2f} points"
    details = [
        f"**F3: {verdict}.** Adam+L2 minus AdamW at their validation-picked best cells: "
        f"{fmt_points(adam_vs_adamw, why_l2)}{relative}; the paper's 15% of Adam+L2's error here would be "
        f"{paper_text}. SGD+L2 minus SGDW: {fmt_points(sgd_vs_sgdw, why_l2)} (the paper: about equal for SGD, "
        "Proposition 1).",
        f"Decay's gain over lambda = 0: AdamW {fmt_points(gain_adamw, why)}, SGDW {fmt_points(gain_sgdw, why)}; "
        f"AdamW's minus SGDW's {fmt_points(equal, why)} (equally effective: an interval around 0).",
        "Where decay barely helps (a gain within the noise), no comparison of decay methods can show a difference: "
        "read the gains first. The CIFAR-10 preset (`decoupled sweep --preset paper`) is where a GPU tests the "
        "paper's 15%.",
    ]
    if l2 is None:
        details.append("F2's runs (Adam+L2, SGD+L2) are missing: run F2 too (`decoupled reproduce --only F2,F3`).")
    return FindingResult(
        "F3", TITLE, CLAIM, PAPER, ours, verdict, FIGURE, "Decoupled vs L2 and decay vs none, Adam and SGD",
        details, [("Best cells (picked on validation)", ["optimizer", "best lambda = 0", "best lambda > 0"], rows)],
    )  # fmt: skip
