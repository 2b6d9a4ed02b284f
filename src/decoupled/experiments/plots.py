"""Figures of the report (matplotlib, written as PNG): Figure 2-style heatmaps and Figure 3-4-style curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .analysis import Findings, OptimizerFindings
from .axes import steps_per_epoch, weight_decay_axis
from .config import OPTIMIZERS
from .train import format_power_of_two

__all__ = ["HEATMAP_FILENAME", "CURVES_FILENAME", "plot_curves", "plot_heatmaps"]

HEATMAP_FILENAME = "heatmaps.png"
CURVES_FILENAME = "curves.png"
# The paper's Figure 2: SGD | SGDW over Adam | AdamW; then the later rules when a sweep selects them.
_PANEL_ORDER = ("sgd", "sgdw", "adam", "adamw", "sgdw-cautious", "adamw-cautious", "adamc")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, and safe in worker-less CI
    import matplotlib.pyplot as plt

    return plt


def _tick(value: float) -> str:
    text = format_power_of_two(value)
    return f"$2^{{{text[2:]}}}$" if text.startswith("2^") else text


def color_range(findings: Findings) -> tuple[float, float]:
    """One color scale (test error in %) shared by all panels: from the lowest cell to the lowest + max(5
    points, 2x the lowest), so the good region keeps its detail; worse cells saturate (the colorbar says so)."""
    means = [f.test_mean[~np.isnan(f.test_mean)] for f in findings.optimizers]
    values = np.concatenate(means) * 100 if means else np.array([])
    if values.size == 0:
        return 0.0, 100.0
    low = float(values.min())
    return low, min(100.0, low + max(5.0, 2 * low))


def _panel(ax, opt: OptimizerFindings, low: float, high: float, cmap, weight_decay_unit: str, steps: int):
    grid = opt.grid
    data = (opt.test_mean * 100).T  # rows: weight decay (y), columns: learning rate (x)
    image = ax.imshow(np.ma.masked_invalid(data), origin="lower", cmap=cmap, vmin=low, vmax=high, aspect="equal")
    ax.set_xticks(range(len(grid.lrs)), [_tick(v) for v in grid.lrs], fontsize=8)
    spec = OPTIMIZERS[opt.name]
    ticks, tau_label = weight_decay_axis(
        grid.weight_decays, decay=spec.decay, unit=weight_decay_unit, steps=steps,
        lambda_ticks=[_tick(v) for v in grid.weight_decays],
    )  # fmt: skip
    ax.set_yticks(range(len(grid.weight_decays)), ticks, fontsize=8)
    ax.set_xlabel(r"learning rate $\alpha$", fontsize=9)
    if spec.decay == "l2":
        ax.set_ylabel(r"L2 factor $\lambda$  ($g \leftarrow g + \lambda\theta$)", fontsize=9)
    elif tau_label is not None:
        ax.set_ylabel(tau_label, fontsize=9)
    else:
        ax.set_ylabel(r"weight decay $\lambda$  ($\theta \leftarrow \theta - \eta_t\lambda\theta$)", fontsize=9)
    small = len(grid.lrs) * len(grid.weight_decays) <= 100
    for (i, j), value in np.ndenumerate(opt.test_mean):
        if np.isnan(value):
            continue
        if opt.diverged[i, j] == opt.runs[i, j]:
            ax.text(i, j, "x", ha="center", va="center", fontsize=9, color="white")
        elif small:
            shade = (value * 100 - low) / max(high - low, 1e-9)
            ax.text(i, j, f"{100 * value:.1f}", ha="center", va="center", fontsize=6.5,
                    color="white" if shade > 0.6 else "black")  # fmt: skip
    for i, j in opt.top_cells(10):
        ax.add_patch(_circle(i, j))
    if opt.best is not None:
        ax.add_patch(_square(*opt.best))
        title = f"{opt.label}: {100 * opt.best_test_mean:.2f}% test"
        if not math.isnan(opt.best_test_std):
            title += f" $\\pm$ {100 * opt.best_test_std:.2f}"
        if not opt.inside:
            title += "  [edge]"
    else:
        title = f"{opt.label}: no runs"
    ax.set_title(title, fontsize=10)
    return image


def _circle(i: int, j: int):
    """A ring inside cell (i, j) (cells are square: the panels keep an equal aspect)."""
    from matplotlib.patches import Ellipse

    return Ellipse((i, j), 0.8, 0.8, fill=False, edgecolor="black", linewidth=1.1)


def _square(i: int, j: int):
    from matplotlib.patches import Rectangle

    return Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.2)


def plot_heatmaps(findings: Findings, path: Path, *, weight_decay_unit: str = "lambda") -> Path:
    """One panel per optimizer (SGD, SGDW / Adam, AdamW), test error in % on one shared color scale; circles mark
    the 10 best cells on test error, the red square the cell picked on validation; x: diverged in every seed.
    ``weight_decay_unit="tau"`` labels the decoupled panels' weight decays as timescales in epochs (axes.py)."""
    data = findings.config.data
    steps = steps_per_epoch(data.train_size, findings.config.train.batch_size)
    plt = _pyplot()
    present = {f.name: f for f in findings.optimizers}
    order = [name for name in _PANEL_ORDER if name in present]
    columns = 2 if len(order) > 1 else 1
    rows = math.ceil(len(order) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.3 * rows), squeeze=False)
    low, high = color_range(findings)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("#dddddd")  # cells not run (yet)
    image = None
    for ax, name in zip(axes.flat, order):
        image = _panel(ax, present[name], low, high, cmap, weight_decay_unit, steps)
    for ax in list(axes.flat)[len(order) :]:
        ax.axis("off")
    config = findings.config
    figure.suptitle(
        f"Test error (%) on {repr(config.task) if config.task else config.data.dataset}, {config.train.epochs} epochs, {config.train.schedule} schedule, "
        f"mean of {config.seeds} seed{'s' if config.seeds > 1 else ''}\n"
        "rings: 10 best cells on test error; red square: best cell picked on validation; x: diverged",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0, 0.9, 1))
    if image is not None:
        bar_axes = figure.add_axes((0.91, 0.12, 0.018, 0.72))
        bar = figure.colorbar(image, cax=bar_axes, extend="max" if high < 100 else "neither")
        bar.set_label("test error (%)")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_curves(findings: Findings, path: Path) -> Path:
    """Training loss and test error per epoch of each optimizer's best (validation-picked) cell, mean over
    seeds with a band of +- one standard deviation."""
    plt = _pyplot()
    figure, (loss_ax, error_ax) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"sgd": "tab:blue", "sgdw": "tab:cyan", "adam": "tab:red", "adamw": "tab:orange"}
    for opt in findings.optimizers:
        if opt.best is None:
            continue
        label = f"{opt.label} (lr {format_power_of_two(opt.best_lr)}, wd {format_power_of_two(opt.best_weight_decay)})"
        for ax, key, scale in ((loss_ax, "train_loss", 1.0), (error_ax, "test_error", 100.0)):
            mean = opt.best_curves[key] * scale
            std = opt.best_curves_std[key] * scale
            epochs = np.arange(1, len(mean) + 1)
            ax.plot(epochs, mean, color=colors.get(opt.name), label=label)
            ax.fill_between(epochs, mean - std, mean + std, color=colors.get(opt.name), alpha=0.2, linewidth=0)
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss (cross-entropy, mean over the epoch)")
    error_ax.set_xlabel("epoch")
    error_ax.set_ylabel("test error (%)")
    error_ax.set_yscale("log")
    error_ax.legend(fontsize=8)
    figure.suptitle(
        "Best setting of each optimizer (picked on validation): mean over seeds, band = +-1 std", fontsize=10
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
