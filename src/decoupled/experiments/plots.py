"""Figures of the report (matplotlib, written as PNG): Figure 2-style heatmaps and Figure 3-4-style curves.

Readable at a glance: every cell label picks black or white by the luminance of its own colour; the validation
map (which picks the cells) sits beside the test map (which reports them); each cell shows its seed spread
(+-std) under its mean; a cell where any seed diverged is hatched and labelled, and never ringed or picked.
Curves use percent axes, whole-epoch ticks and a legend on every panel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .analysis import Findings, OptimizerFindings
from .axes import steps_per_epoch, weight_decay_axis
from .config import OPTIMIZERS
from .train import format_power_of_two

__all__ = [
    "HEATMAP_FILENAME", "CURVES_FILENAME", "drawable", "heatmap_figure", "plot_curves", "plot_heatmaps",
    "plot_precision_heatmaps",
]  # fmt: skip

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
    """One color scale (error in %) shared by all panels: from the lowest usable cell to the lowest + max(5
    points, 2x the lowest), so the good region keeps its detail; worse cells saturate (the colorbar says so)."""
    return _color_range(findings.optimizers)


def _color_range(optimizers: Iterable[OptimizerFindings]) -> tuple[float, float]:
    means = [np.concatenate([f.test_mean[f.usable], f.val_mean[f.usable]]) for f in optimizers]
    values = np.concatenate(means) * 100 if means else np.array([])
    if values.size == 0:
        return 0.0, 100.0
    low = float(values.min())
    top = low + max(5.0, 2 * low)
    # Errors are fractions: the scale ends at 100% at most, unless a store holds larger numbers (another scale).
    return low, min(100.0, top) if low < 100 else top


def _text_color(cmap, low: float, high: float, value: float) -> str:
    """Black or white, whichever reads better on the cell's colour (WCAG relative luminance)."""
    r, g, b, _ = cmap(min(max((value - low) / max(high - low, 1e-9), 0.0), 1.0))
    luminance = 0.2126 * r**2.2 + 0.7152 * g**2.2 + 0.0722 * b**2.2
    return "black" if luminance > 0.18 else "white"


def _panel(
    ax, opt: OptimizerFindings, split: str, low: float, high: float, cmap, weight_decay_unit: str = "lambda",
    steps: int = 1,
):  # fmt: skip
    grid = opt.grid
    means = opt.test_mean if split == "test" else opt.val_mean
    table = opt.test_by_seed if split == "test" else opt.val_by_seed
    shown = np.where(opt.usable, means, np.nan)
    data = (shown * 100).T  # rows: weight decay (y), columns: learning rate (x)
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
    small = len(grid.lrs) * len(grid.weight_decays) <= 64
    from matplotlib.patches import Rectangle

    for (i, j), value in np.ndenumerate(means):
        if opt.runs[i, j] == 0:
            continue
        if opt.diverged[i, j]:
            ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, facecolor="#eeeeee", edgecolor="#999999", hatch="xx",
                                   linewidth=0))  # fmt: skip
            ax.text(i, j, f"diverged\n{opt.diverged[i, j]}/{opt.runs[i, j]}", ha="center", va="center", fontsize=6.5,
                    color="black")  # fmt: skip
            continue
        if small:
            seeds = table[:, i, j][~np.isnan(table[:, i, j])]
            label = f"{100 * value:.1f}"
            if len(seeds) > 1:
                label += f"\n$\\pm${100 * float(np.std(seeds, ddof=1)):.1f}"
            ax.text(i, j, label, ha="center", va="center", fontsize=7, linespacing=0.9,
                    color=_text_color(cmap, low, high, 100 * value))  # fmt: skip
    if split == "test":
        for i, j in opt.top_cells(10):
            ax.add_patch(_circle(i, j))
    if opt.best is not None:
        ax.add_patch(_square(*opt.best))
        if split == "test":
            title = f"{opt.label}: test error, {100 * opt.best_test_mean:.2f}%"
            if not math.isnan(opt.best_test_std):
                title += f" $\\pm$ {100 * opt.best_test_std:.2f}"
        else:
            title = f"{opt.label}: validation error (picks the cell)"
        if not opt.inside:
            title += "  [edge]"
    else:
        title = f"{opt.label}: " + ("every cell diverged" if opt.cells_measured else "no runs")
    if len(grid.weight_decays) > 2 * len(grid.lrs):  # a panel narrower than its title: the label on a line
        title = title.replace(": ", ":\n", 1)
    ax.set_title(title, fontsize=9.5)
    return image


def _circle(i: int, j: int):
    """A ring inside cell (i, j) (cells are square: the panels keep an equal aspect)."""
    from matplotlib.patches import Ellipse

    return Ellipse((i, j), 0.9, 0.9, fill=False, edgecolor="black", linewidth=1.0)


def _square(i: int, j: int):
    from matplotlib.patches import Rectangle

    return Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.2)


def plot_heatmaps(findings: Findings, path: Path, *, weight_decay_unit: str = "lambda") -> Path:
    """Two panels per optimizer, test error and validation error in % on one shared colour scale (SGD, SGDW /
    Adam, AdamW); rings mark the 10 best usable cells on test error, the red square the cell picked on
    validation; hatched cells diverged in at least one seed; grey cells have no runs.
    ``weight_decay_unit="tau"`` labels the decoupled panels' weight decays as timescales in epochs (axes.py)."""
    plt = _pyplot()
    figure = heatmap_figure(findings, weight_decay_unit=weight_decay_unit)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


MAX_PANEL_SHAPE = 2.5  # a panel is at most this many times taller than wide (a 1 x 11 grid: one tall column)


def heatmap_figure(findings: Findings, *, weight_decay_unit: str = "lambda"):
    """The figure of :func:`plot_heatmaps`, laid out by matplotlib's constrained layout: the title, the panels'
    titles and labels and the colour bar never overlap or leave the figure, whatever the grid's shape."""
    data = findings.config.data
    steps = steps_per_epoch(data.train_size, findings.config.train.batch_size)
    plt = _pyplot()
    present = {f.name: f for f in findings.optimizers}
    order = [name for name in _PANEL_ORDER if name in present]
    order += [f.name for f in findings.optimizers if f.name not in order]
    per_row = 2 if len(order) > 1 else 1
    rows = max(math.ceil(len(order) / per_row), 1)
    columns = 2 * per_row
    # Cells about square, so that two lines of label fit in each: taller panels for more weight decays than
    # learning rates (F1's grid: 9 x 5), up to a limit.
    shape = max((len(f.grid.weight_decays) / max(len(f.grid.lrs), 1) for f in findings.optimizers), default=1.0)
    height = max(4.4, 1.2 + 3.4 * min(shape, MAX_PANEL_SHAPE))
    # A tall panel is narrower than its slot; the slot stays wide enough for the panel's title.
    width = min(4.6, max(3.9, (height - 1.2) / shape + 1.6))
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns + 0.8, height * rows + 0.6), squeeze=False,
                                layout="constrained")  # fmt: skip
    low, high = color_range(findings)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")  # grey: cells not run (yet), or diverged
    image = None
    flat = list(axes.flat)
    for index, name in enumerate(order):
        image = _panel(flat[2 * index], present[name], "test", low, high, cmap, weight_decay_unit, steps)
        _panel(flat[2 * index + 1], present[name], "val", low, high, cmap, weight_decay_unit, steps)
    for ax in flat[2 * len(order) :]:
        ax.axis("off")
    config = findings.config
    figure.suptitle(
        f"Final error (%) on {drawable(repr(config.task)) if config.task else config.data.dataset}, "
        f"{config.train.epochs} epochs, {config.train.schedule} schedule, mean of {config.seeds} "
        f"seed{'s' if config.seeds > 1 else ''} (second line: +-std over seeds)\n"
        "rings: 10 best cells on test error; red square: the cell picked on validation; hatched: diverged",
        fontsize=10,
    )
    if image is not None:
        bar = figure.colorbar(image, ax=flat, extend="max" if high < 100 else "neither", fraction=0.02, pad=0.01,
                              shrink=0.8)  # fmt: skip
        bar.set_label("error (%)")
    return figure


def plot_precision_heatmaps(
    columns: Sequence[tuple[str, Findings]], path: Path, *, weight_decay_unit: str = "lambda"
) -> Path:
    """The test-error heatmaps of several sweeps of one grid side by side: a row per optimizer, a column per
    sweep (float32, then each precision arm of a low-precision sweep; ``columns``: (label, findings)), on one
    colour scale, marked as in :func:`plot_heatmaps`. A panel is grey where a column has no such optimizer."""
    plt = _pyplot()
    names: list[str] = []
    for _, findings in columns:
        names += [f.name for f in findings.optimizers if f.name not in names]
    order = [name for name in _PANEL_ORDER if name in names] + [n for n in names if n not in _PANEL_ORDER]
    grids = [f.grid for _, findings in columns for f in findings.optimizers]
    shape = max((len(g.weight_decays) / max(len(g.lrs), 1) for g in grids), default=1.0)
    height = max(4.4, 1.2 + 3.4 * min(shape, MAX_PANEL_SHAPE))
    width = min(4.6, max(3.9, (height - 1.2) / shape + 1.6))
    figure, axes = plt.subplots(len(order), len(columns), figsize=(width * len(columns) + 0.8, height * len(order)
                                + 0.6), squeeze=False, layout="constrained")  # fmt: skip
    low, high = _color_range(f for _, findings in columns for f in findings.optimizers)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    image = None
    for column, (label, findings) in enumerate(columns):
        present = {f.name: f for f in findings.optimizers}
        steps = steps_per_epoch(findings.config.data.train_size, findings.config.train.batch_size)
        for row, name in enumerate(order):
            ax = axes[row, column]
            if name not in present:
                ax.axis("off")
                continue
            image = _panel(ax, present[name], "test", low, high, cmap, weight_decay_unit, steps)
            ax.set_title(f"{drawable(label)}\n{ax.get_title()}", fontsize=9.5)
    config = columns[0][1].config if columns else None
    if config is not None:
        figure.suptitle(
            f"Test error (%) by parameter precision on {drawable(repr(config.task)) if config.task else config.data.dataset}, "
            f"{config.train.epochs} epochs, mean of {config.seeds} seed{'s' if config.seeds > 1 else ''}\n"
            "rings: 10 best cells on test error; red square: the cell picked on validation; hatched: diverged",
            fontsize=10,
        )
    if image is not None:
        bar = figure.colorbar(image, ax=list(axes.flat), extend="max" if high < 100 else "neither", fraction=0.02,
                              pad=0.01, shrink=0.8)  # fmt: skip
        bar.set_label("test error (%)")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def drawable(text: str) -> str:
    """``text`` (a user's name) as the figures' font draws it: ``$`` escaped (no mathtext), and each character
    the font has no glyph for (CJK or emoji on a machine without such fonts) as its code point, ``\\u65e5``,
    instead of an empty box and a "Glyph missing" warning."""
    from matplotlib import font_manager, ft2font

    font = ft2font.FT2Font(font_manager.findfont(font_manager.FontProperties()))
    shown = []
    for char in text:
        if char.isprintable() and (char.isascii() or font.get_char_index(ord(char))):
            shown.append(char)
        else:
            shown.append(ascii(char)[1:-1])
    return "".join(shown).replace("$", r"\$")


def epoch_axis(ax, epochs: int) -> None:
    """Whole-epoch ticks on an epoch axis."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(0.5, max(epochs, 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def percent_axis(ax, label: str) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_ylabel(label)


def plot_curves(findings: Findings, path: Path) -> Path:
    """Training loss and validation/test error per epoch of each optimizer's best (validation-picked) cell, mean
    over seeds with a band of +- one standard deviation. Optimizers without a usable cell are left out."""
    plt = _pyplot()
    figure, (loss_ax, error_ax) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"sgd": "tab:blue", "sgdw": "tab:cyan", "adam": "tab:red", "adamw": "tab:orange"}
    epochs, positive_loss = 1, False
    for opt in findings.optimizers:
        if opt.best is None:
            continue
        label = f"{opt.label} (lr {format_power_of_two(opt.best_lr)}, wd {format_power_of_two(opt.best_weight_decay)})"
        for ax, key, scale, style, suffix in (
            (loss_ax, "train_loss", 1.0, "-", ""),
            (error_ax, "test_error", 100.0, "-", " test"),
            (error_ax, "val_error", 100.0, "--", " validation"),
        ):
            mean = opt.best_curves[key] * scale
            std = np.nan_to_num(opt.best_curves_std[key] * scale)
            steps = np.arange(1, len(mean) + 1)
            epochs = max(epochs, len(mean))
            ax.plot(steps, mean, style, color=colors.get(opt.name), label=label + suffix)
            if style == "-":
                ax.fill_between(steps, mean - std, mean + std, color=colors.get(opt.name), alpha=0.2, linewidth=0)
            if key == "train_loss" and np.any(np.isfinite(mean) & (mean > 0)):
                positive_loss = True
    if positive_loss:  # a log axis needs a positive value: a sweep whose every run diverged has none
        loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training loss (cross-entropy, mean over the epoch)")
    percent_axis(error_ax, "error (%): test solid, validation dashed")
    for ax in (loss_ax, error_ax):
        epoch_axis(ax, epochs)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no optimizer has a cell that trained (every run diverged)", ha="center",
                    va="center", transform=ax.transAxes, fontsize=9)  # fmt: skip
    figure.suptitle(
        "Best setting of each optimizer (picked on validation): mean over seeds, band = +-1 std", fontsize=10
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
