"""F1 (Figure 2): L2 and weight decay are not identical. With L2 the best weight decay is tied to the learning
rate (a diagonal basin, slope about -1), with decoupled decay it is not (axis-aligned, slope about 0).

Statistic: each optimizer's basin orientation from the basin's upper edge
(:func:`~decoupled.experiments.stats.edge_slope`: in each learning-rate row that trained well, where the test
error climbs to twice the row's lowest; the slope of those edges against log alpha) with its 95% bootstrap
interval; verdict per family by
:func:`common.slope_pair_verdict`, combined over SGD and Adam. The valley of a quadratic fitted to the whole grid
(:func:`~decoupled.experiments.stats.basin_slope`) and the argmin slope are shown beside it and decide nothing.
"""

from __future__ import annotations

from pathlib import Path

from ..analysis import Findings, OptimizerFindings
from ..plots import plot_heatmaps
from ..train import format_power_of_two
from .common import FindingResult, combine, fmt_slope, slope_pair_verdict

TITLE = "L2 regularization and weight decay are not identical"
CLAIM = (
    "With L2 the best weight decay is tied to the learning rate (a diagonal basin); with decoupled weight decay "
    "the two are tuned independently (an axis-aligned basin)."
)
PAPER = (
    "Figure 2 (CIFAR-10, 26 2x64d ResNet, 100 epochs): diagonal basins for SGD and Adam, axis-aligned for SGDW "
    "and AdamW"
)
FIGURE = "heatmaps.png"
PAIRS = (("sgd", "sgdw"), ("adam", "adamw"))


def pair_verdicts(findings: Findings) -> list[tuple[OptimizerFindings, OptimizerFindings, str]]:
    """(L2 variant, decoupled variant, verdict) for each family in the grid."""
    result = []
    for base_name, variant_name in PAIRS:
        base, variant = findings.by_name(base_name), findings.by_name(variant_name)
        if base is None or variant is None:
            continue
        verdict = slope_pair_verdict(
            base.basin.interval if base.basin else None, variant.basin.interval if variant.basin else None
        )
        result.append((base, variant, verdict))
    return result


def pair_sentence(base: OptimizerFindings, variant: OptimizerFindings, verdict: str) -> str:
    """One family's F1 verdict in words, with both intervals (no 'rises' for 0, no verdict from equal slopes)."""

    def describe(opt: OptimizerFindings) -> str:
        if opt.best is None:
            return f"{opt.label}: no basin orientation ({'every cell diverged' if opt.cells_measured else 'no runs'})"
        if opt.basin is None:
            return (f"{opt.label}: no basin orientation (fewer than 3 learning-rate rows trained well and reach "
                    "twice their best error within the grid)")  # fmt: skip
        return f"{opt.label} {fmt_slope(opt.basin.interval)} ({opt.basin.cells} {opt.basin.unit})"

    return (
        f"**F1 {base.label} vs {variant.label}: {verdict}.** Basin slope d log(lambda_edge) / d log(alpha), 95% "
        f"interval: {describe(base)}; {describe(variant)}. The paper: about -1 with L2, about 0 decoupled."
    )


def analyze(arms: dict[tuple[str, str], Findings], folder: Path) -> FindingResult:
    findings = arms[("F1", "main")]
    pairs = pair_verdicts(findings)
    verdict = combine([v for _, _, v in pairs])
    ours = "; ".join(
        f"{b.label} {fmt_slope(b.basin.interval if b.basin else None)}, "
        f"{w.label} {fmt_slope(w.basin.interval if w.basin else None)}"
        for b, w, _ in pairs
    )
    plot_heatmaps(findings, folder / FIGURE)
    header = ["optimizer", "basin slope (upper edge) [95% interval]", "rows", "quadratic valley [95% interval]",
              "argmin slope (rows)", "best lr", "best weight decay", "test error at the best cell"]  # fmt: skip
    rows = []
    for opt in findings.optimizers:
        if opt.best is None:
            rows.append([opt.label, "n/a (no cell trained)", "0", "n/a", "n/a", "", "", ""])
            continue
        quadratic = opt.basin_quadratic
        rows.append([
            opt.label, fmt_slope(opt.basin.interval if opt.basin else None), str(opt.basin.cells if opt.basin else 0),
            "n/a" if quadratic is None else f"{fmt_slope(quadratic.interval)} ({quadratic.cells} cells)",
            "n/a" if opt.slope is None else f"{opt.slope:+.2f} ({opt.slope_rows})", format_power_of_two(opt.best_lr),
            format_power_of_two(opt.best_weight_decay),
            f"{100 * opt.best_test_mean:.2f}%" + ("" if opt.inside else " (grid edge)"),
        ])  # fmt: skip
    details = [pair_sentence(b, w, v) for b, w, v in pairs]
    details.append(
        "The basin's upper edge in a learning-rate row is where its mean test error, climbing from the row's lowest "
        "towards larger lambda, first reaches twice that lowest (interpolated between grid points; a diverged seed "
        "counts as 100% error). On these grids the error is a plateau at small lambda and then a cliff: the "
        "plateau's lowest cell is a coin toss within the seed noise, the cliff is not. The interval adds the edges' "
        "scatter about their line beyond their own noise (a 4x grid places an interpolated edge with an error of "
        "its own). Shown for comparison only: the valley of a quadratic fitted to the whole grid (wide where the "
        "surface is a plateau and a cliff, not a bowl) and the argmin slope (one best weight decay per row: on a "
        "grid of 4x steps it takes a few discrete values, and a neighbouring cell within the seed noise moves it)."
    )
    return FindingResult(
        "F1", TITLE, CLAIM, PAPER, ours, verdict, FIGURE,
        "Test error (left) and validation error (right) over learning rate x weight decay, per optimizer",
        details, [("Basin orientation of each optimizer", header, rows)],
    )  # fmt: skip
