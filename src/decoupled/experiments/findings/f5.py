"""F5 (Figures 1 and 4): Adam benefits from a scheduled learning-rate multiplier: cosine annealing beats a fixed
and a step-drop schedule, and warm restarts (AdamWR, SGDWR) improve anytime performance.

Statistics, each paired over seeds with a Student-t 95% interval, at each arm's validation-picked best cell:
* for Adam (L2) and AdamW: test error under the fixed schedule minus under cosine, and step-drop minus cosine;
* anytime: AdamW minus AdamWR and SGDW minus SGDWR, test error at the end of each warm-restart period before the
  last (epochs 1, 3, 7 of 15), averaged over those epochs; also the error at every period's end and the first
  epoch at which each reaches a target (the worse of the two final errors + 0.5 points).
Verdicts by :func:`common.direction_verdict` (effect > 0 in the paper's direction), combined.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis import Findings, OptimizerFindings
from ..stats import Interval, paired_interval
from ..tasks import warm_restart_periods
from .common import FindingResult, combine, direction_verdict, fmt_points, no_interval_reason

TITLE = "Adam benefits from a scheduled learning-rate multiplier"
CLAIM = "Cosine annealing beats fixed and step-drop schedules for Adam, and warm restarts improve anytime performance."
PAPER = "Figure 1 (cosine best of fixed, step-drop, cosine) and Figure 4 (AdamWR, SGDWR good early; up to 10x faster)"
FIGURE = "schedules.png"
LABELS = {"adam": "Adam (L2)", "adamw": "AdamW", "sgdw": "SGDW"}


def best_errors(findings: Findings | None, name: str) -> tuple[OptimizerFindings | None, dict[int, float]]:
    opt = findings.by_name(name) if findings else None
    if opt is None or opt.best is None:
        return opt, {}
    return opt, opt.cell_errors(opt.best)


def anytime(cos: OptimizerFindings | None, wr: OptimizerFindings | None, ends: list[float]) -> Interval | None:
    """cosine minus warm restarts, test error averaged over the ends of every period but the last."""
    if cos is None or wr is None or len(ends) < 2:
        return None
    a, b = cos.best_seed_curves, wr.best_seed_curves
    marks = [int(round(e)) - 1 for e in ends[:-1]]
    mean_a = {s: float(np.mean(c[marks])) for s, c in a.items() if len(c) > max(marks)}
    mean_b = {s: float(np.mean(c[marks])) for s, c in b.items() if len(c) > max(marks)}
    return paired_interval(mean_a, mean_b)


def reach_epoch(curve: np.ndarray, target: float) -> str:
    hits = np.nonzero(curve <= target)[0]
    return str(int(hits[0]) + 1) if len(hits) else "never"


def analyze(arms: dict[tuple[str, str], Findings], folder: Path) -> FindingResult:
    cosine, constant, step = (arms.get(("F5", n)) for n in ("cosine", "constant", "step"))
    restarts = arms.get(("F5", "restarts"))
    comparisons: list[tuple[str, Interval | None]] = []
    verdicts = []
    for name in ("adam", "adamw"):
        _, cos = best_errors(cosine, name)
        for label, arm in (("fixed", constant), ("step-drop", step)):
            _, other = best_errors(arm, name)
            interval = paired_interval(other, cos)
            comparisons.append((f"{LABELS[name]}: {label} minus cosine", interval))
            verdicts.append(direction_verdict(interval))
    epochs = cosine.config.train.epochs if cosine else 0
    _, ends = warm_restart_periods(epochs) if epochs else (0, [])
    curves, anytime_rows = {}, []
    for name in ("adamw", "sgdw"):
        cos_opt = cosine.by_name(name) if cosine else None
        wr_opt = restarts.by_name(name) if restarts else None
        interval = anytime(cos_opt, wr_opt, ends)
        comparisons.append((f"{LABELS[name]} minus {LABELS[name]}R (anytime)", interval))
        verdicts.append(direction_verdict(interval))
        if cos_opt is not None and wr_opt is not None and cos_opt.best and wr_opt.best:
            c, w = cos_opt.best_curves["test_error"], wr_opt.best_curves["test_error"]
            curves[name] = (cos_opt, wr_opt)
            target = max(float(c[-1]), float(w[-1])) + 0.005
            at_ends = ", ".join(f"{int(e)}: {100 * c[int(e) - 1]:.1f}% / {100 * w[int(e) - 1]:.1f}%" for e in ends
                                if int(e) - 1 < min(len(c), len(w)))  # fmt: skip
            anytime_rows.append([f"{LABELS[name]} / {LABELS[name]}R", at_ends, f"{100 * target:.2f}%",
                                 f"{reach_epoch(c, target)} / {reach_epoch(w, target)}"])  # fmt: skip
    verdict = combine(verdicts)
    from .plots import plot_schedules

    why = no_interval_reason(arms.values())
    plot_schedules(comparisons, curves, ends, folder / FIGURE, missing=why)
    ours = "; ".join(f"{label} {fmt_points(interval, why)}" for label, interval in comparisons)
    rows = [[label, fmt_points(interval, why), direction_verdict(interval)] for label, interval in comparisons]
    details = [
        f"**F5: {verdict}.** Each difference is test error (points) at the validation-picked best cells, paired "
        "over seeds; > 0 is the paper's direction (the schedule, or warm restarts, helps).",
        "Anytime: the warm-restart runs are compared at the end of each period but the last ("
        + ", ".join(f"epoch {int(e)}" for e in ends[:-1])
        + "), where their schedule is at its low point; at the end "
        "of the run both schedules reach eta = 0.",
        "The warm-restart runs read the grid's weight decay as lambda_norm (renormalized each period), the others as "
        "raw lambda; each is picked on validation from its own grid.",
    ]
    return FindingResult(
        "F5", TITLE, CLAIM, PAPER, ours, verdict, FIGURE,
        "Schedule comparisons (left) and test error against epoch with warm restarts marked (right)",
        details,
        [("Differences (95% intervals, paired over seeds)", ["comparison", "difference", "verdict"], rows),
         ("Anytime performance (cosine / warm restarts)", ["pair", "test error at period ends (epoch: cos / WR)",
                                                           "target", "first epoch at target"], anytime_rows)],
    )  # fmt: skip
