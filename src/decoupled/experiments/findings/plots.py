"""The findings' own figures: intervals against 0 and the paper, F4's budgets, F5's schedules and curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..plots import _pyplot, epoch_axis, percent_axis
from ..stats import Interval

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _forest(
    ax,
    items: Sequence[tuple[str, Interval | None]],
    xlabel: str,
    paper: Sequence[float | None] = (),
    missing: str | Sequence[str] = "",
) -> None:
    """One row per interval (points), a line at 0, the paper's value as a red diamond where given; a row without
    an interval reads "n/a (``missing``)", ``missing`` one reason for all rows or one per row."""
    paper = list(paper) + [None] * (len(items) - len(paper))
    reasons = [missing] * len(items) if isinstance(missing, str) else list(missing)
    for row, ((_label, interval), value, reason) in enumerate(zip(items, paper, reasons)):
        y = len(items) - 1 - row
        if interval is None:
            ax.text(0, y, f"n/a ({reason})" if reason else "n/a", va="center", ha="center", fontsize=8,
                    color="#666666")  # fmt: skip
        else:
            low, high = max(interval.low, -1e3), min(interval.high, 1e3)
            ax.plot([100 * low, 100 * high], [y, y], color="black", linewidth=2)
            ax.plot([100 * interval.estimate], [y], "o", color="black")
        if value is not None:
            ax.plot([100 * value], [y], "D", color="red", label="the paper" if row == 0 or value else None)
    ax.axvline(0, color="#888888", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(items)), [label for label, _ in reversed(items)], fontsize=8)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylim(-0.7, len(items) - 0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles[:1], labels[:1], fontsize=8, loc="lower right")


def plot_intervals(
    items: Sequence[tuple[str, Interval | None]],
    path: Path,
    xlabel: str,
    title: str,
    paper: Sequence[float | None] = (),
    missing: str | Sequence[str] = "",
) -> Path:
    """A forest plot of error differences in points: estimate and 95% interval per row, 0 dashed; ``missing``:
    why a row has no interval (one reason, or one per row)."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(8, 0.6 * len(items) + 1.6))
    _forest(ax, items, xlabel, paper, missing)
    ax.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_budgets(budgets: dict[tuple[str, str], Any], optimizers: Sequence[str], path: Path) -> Path:
    """F4: test error against raw lambda (left) and lambda_norm (right), one curve per budget, per optimizer;
    each budget's lambda_edge (the basin's upper edge, the verdict's statistic) as a dotted vertical line."""
    plt = _pyplot()
    figure, axes = plt.subplots(len(optimizers), 2, figsize=(11, 3.8 * len(optimizers)), squeeze=False)
    for row, name in enumerate(optimizers):
        arms = sorted(((arm, b) for (n, arm), b in budgets.items() if n == name and b is not None),
                      key=lambda item: item[1].updates)  # fmt: skip
        for column, normalized in enumerate((False, True)):
            ax = axes[row][column]
            for k, (arm, b) in enumerate(arms):
                color = _COLORS[k % len(_COLORS)]
                scale = 1 / b.normalizer if normalized else 1.0
                x = 2**b.log2_lambdas * scale
                ok = ~np.isnan(x)
                ax.plot(x[ok], 100 * b.test_mean[ok], "o-", color=color, markersize=3,
                        label=f"{arm}: {b.updates} updates")  # fmt: skip
                if b.edge is not None:
                    ax.axvline(2**b.edge.location * scale, color=color, linestyle=":", linewidth=1)
            ax.set_xscale("log", base=2)
            lows = [float(np.nanmin(b.test_mean)) for _, b in arms if np.isfinite(b.test_mean).any()]
            if lows:  # every budget's good region in view: from the lowest minimum to twice the highest one
                ax.set_ylim(100 * min(lows) * 0.9, min(100.0, 100 * max(lows) * 2 + 0.5))
            percent_axis(ax, "test error (%)")
            label = {"adamw": "AdamW", "sgdw": "SGDW"}.get(name, name)
            ax.set_xlabel(r"$\lambda_{norm} = \lambda / \sqrt{b / (B T)}$" if normalized else r"raw $\lambda$")
            ax.set_title(f"{label}: against {'normalized' if normalized else 'raw'} weight decay", fontsize=10)
            if arms:
                ax.legend(fontsize=7)
    figure.suptitle("F4: curves that line up on the right mean normalized decay removes the budget dependence;"
                    " dotted: each budget's lambda_edge (error twice its best)", fontsize=10)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_schedules(
    comparisons: Sequence[tuple[str, Interval | None]],
    curves: dict[str, Any],
    ends: Sequence[float],
    path: Path,
    missing: str = "",
) -> Path:
    """F5: the schedule differences as intervals (left); test (solid) and validation (dashed) error against
    epoch for each cosine / warm-restart pair (right), restarts marked with vertical lines."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter  # after _pyplot(): matplotlib is the sweep extra's

    panels = max(len(curves), 1)
    figure, axes = plt.subplots(1, 1 + panels, figsize=(6 + 5 * panels, 4.4), squeeze=False)
    _forest(axes[0][0], comparisons, "test-error difference (points); > 0: the paper's direction", missing=missing)
    axes[0][0].set_title("F5: schedules (95% intervals, paired over seeds)", fontsize=10)
    for ax, (_name, (cos, wr)) in zip(axes[0][1:], curves.items()):
        epochs = 1
        for opt, color, what in ((cos, "tab:blue", "cosine"), (wr, "tab:red", "warm restarts")):
            for key, style, split in (("test_error", "-", "test"), ("val_error", "--", "validation")):
                curve = 100 * opt.best_curves[key]
                epochs = max(epochs, len(curve))
                ax.plot(np.arange(1, len(curve) + 1), curve, style, color=color, label=f"{opt.label} {what}, {split}")
        for k, end in enumerate(ends[:-1]):
            ax.axvline(end + 0.0, color="#999999", linestyle=":", linewidth=1, label="restart" if k == 0 else None)
        # A log axis: the first epochs (tens of points apart: what "anytime" is about) and the last (tenths of a
        # point apart) both in view.
        values = np.concatenate([100 * o.best_curves[k] for o in (cos, wr) for k in ("test_error", "val_error")])
        values = values[np.isfinite(values) & (values > 0)]
        if len(values):
            low, high = float(values.min()) * 0.8, min(100.0, float(values.max()) * 1.15)
            ax.set_yscale("log")
            ax.set_ylim(low, max(high, low * 2))
            ticks = [v * 10**e for e in range(-2, 3) for v in (1, 2, 5) if low <= v * 10**e <= high]
            ax.set_yticks(ticks or [low, high])
            ax.yaxis.set_minor_formatter(NullFormatter())
        epoch_axis(ax, epochs)
        percent_axis(ax, "error (%, log scale)")
        ax.set_title(f"{cos.label}: cosine vs warm restarts (anytime)", fontsize=10)
        ax.legend(fontsize=7)
    if not curves:
        axes[0][1].text(0.5, 0.5, "no warm-restart runs", ha="center", va="center", transform=axes[0][1].transAxes)
        axes[0][1].axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
