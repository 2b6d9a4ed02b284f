"""The numbers of the report, computed from stored runs: pure functions over arrays, no plotting.

Conventions (stated in the report too):

* a run's error is its final error; a diverged run (NaN/inf loss) counts as 100% error;
* a cell's error is the mean over its seeds; its spread is the sample standard deviation (ddof=1);
* each optimizer's best cell is picked on the VALIDATION error and reported on the TEST error;
* the decoupling slope is the least-squares slope of log10(best weight decay) against log10(learning rate),
  with one point per learning-rate row (the row's best weight decay on validation), over rows that trained
  well (the row's best validation error at most 2x the optimizer's best) and whose best weight decay is > 0:
  in rows that barely trained every weight decay is about as bad, and their argmin is noise;
* the basin width is the number of cells whose mean test error is within 1 point of the lowest mean test
  error of that optimizer's grid (the test-error heatmap's best cell);
* a cell where any seed diverged is a diverged cell: it is drawn with an x and never picked, ringed, counted
  in a basin or used by a slope (its mean is at least 100% / seeds, and its other seeds say little);
* the basin orientation (``basin``, :func:`stats.edge_slope`) is the whole-grid statistic behind F1's verdict:
  in each learning-rate row whose best cell trained well (mean test error at most 2x the grid's best), the
  basin's upper edge (where the row's mean test error climbs to twice the row's lowest, a diverged seed counting
  as 100%), and the slope d log2(lambda_edge) / d log2(alpha) of those edges, with a 95% bootstrap interval;
* ``basin_quadratic`` (:func:`stats.basin_slope`), shown beside it and deciding nothing: the valley of a
  quadratic fitted to log10(test error) over the cells that trained well;
* what the weight decay buys (:func:`decay_effect`, for comparing precisions): in the learning-rate row of the
  best cell, the mean test error at the grid's smallest weight decay (lambda = 0 when the grid has it) minus the
  best cell's; it matters when that exceeds 2x its noise (the larger of the standard error of the seeds' paired
  differences and sqrt(2) x the test-set noise, as for :class:`Comparison`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import OPTIMIZERS, OptimizerGrid, SweepConfig
from .stats import SlopeFit, basin_slope, edge_slope

__all__ = [
    "Comparison", "DecayEffect", "Findings", "OptimizerFindings", "analyze", "compare_best", "decay_effect",
    "run_error",
]  # fmt: skip

BASIN_POINTS = 1.0  # percentage points: "within 1 point of the best"
TRAINED_WITHIN = 2.0  # a row counts for the slope if its best validation error is <= 2x the optimizer's best
NOISE_MULTIPLE = 2.0  # a difference counts as real beyond 2 standard errors


def run_error(row: dict[str, Any], split: str) -> float:
    """The final ``split`` ("val" or "test") error of a stored run, 1.0 for a diverged run."""
    if row["diverged"]:
        return 1.0
    return float(row[f"final_{split}_error"])


@dataclass
class OptimizerFindings:
    """One optimizer's grid, summarized. Arrays are indexed [lr index, weight-decay index]; errors are fractions."""

    grid: OptimizerGrid
    val_mean: np.ndarray
    test_mean: np.ndarray
    test_std: np.ndarray
    runs: np.ndarray  # runs per cell
    diverged: np.ndarray  # diverged runs per cell
    best: tuple[int, int] | None  # picked on validation, never a diverged cell
    best_test_errors: list[float] = field(default_factory=list)  # per seed, of the best cell
    best_curves: dict[str, np.ndarray] = field(default_factory=dict)  # mean per epoch: train_loss, test_error
    best_curves_std: dict[str, np.ndarray] = field(default_factory=dict)
    slope: float | None = None
    slope_rows: int = 0
    row_best: list[tuple[float, float]] = field(default_factory=list)  # (lr, best weight decay) per used row
    row_best_on_edge: int = 0  # used rows whose best weight decay is the smallest or largest of the grid
    basin_width: int = 0
    cells_measured: int = 0
    edges: list[str] = field(default_factory=list)  # where the best cell touches the grid's edge
    val_by_seed: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))  # [seed, lr, wd], NaN: no run
    test_by_seed: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    basin: SlopeFit | None = None  # the basin orientation from its upper edge (module docstring): F1's verdict
    basin_quadratic: SlopeFit | None = None  # a quadratic's valley (module docstring): a cross-check
    best_seed_curves: dict[int, np.ndarray] = field(default_factory=dict)  # seed -> test error per epoch, best cell

    @property
    def diverged_cells(self) -> np.ndarray:
        """Cells where at least one seed diverged (never picked, ringed or counted)."""
        return self.diverged > 0

    @property
    def usable(self) -> np.ndarray:
        """Cells with runs and no diverged seed."""
        return (self.runs > 0) & ~self.diverged_cells

    def cell_errors(self, cell: tuple[int, int], split: str = "test") -> dict[int, float]:
        """Seed -> final ``split`` error of one cell (1.0 for a diverged seed)."""
        table = self.test_by_seed if split == "test" else self.val_by_seed
        return {s: float(table[s][cell]) for s in range(table.shape[0]) if not np.isnan(table[s][cell])}

    def best_in(self, cells: np.ndarray) -> tuple[int, int] | None:
        """The usable cell of lowest mean validation error among ``cells`` (a boolean mask); None if none."""
        mask = cells & self.usable
        if not mask.any():
            return None
        flat = int(np.argmin(np.where(mask, self.val_mean, np.inf)))
        i, j = np.unravel_index(flat, mask.shape)
        return int(i), int(j)

    @property
    def name(self) -> str:
        return self.grid.optimizer

    @property
    def label(self) -> str:
        return OPTIMIZERS[self.name].label

    @property
    def inside(self) -> bool:
        return self.best is not None and not self.edges

    @property
    def best_lr(self) -> float:
        assert self.best is not None
        return self.grid.lrs[self.best[0]]

    @property
    def best_weight_decay(self) -> float:
        assert self.best is not None
        return self.grid.weight_decays[self.best[1]]

    @property
    def best_test_mean(self) -> float:
        return float(np.mean(self.best_test_errors)) if self.best_test_errors else math.nan

    @property
    def best_test_std(self) -> float:
        return float(np.std(self.best_test_errors, ddof=1)) if len(self.best_test_errors) > 1 else math.nan

    @property
    def best_val_mean(self) -> float:
        return float(self.val_mean[self.best]) if self.best is not None else math.nan

    def top_cells(self, count: int = 10) -> list[tuple[int, int]]:
        """The ``count`` cells of lowest mean test error (as marked in the paper's Figure 2)."""
        usable = self.usable
        flat = np.argsort(np.where(usable, self.test_mean, np.inf), axis=None, kind="stable")
        cells = [tuple(int(i) for i in np.unravel_index(index, self.test_mean.shape)) for index in flat]
        return [cell for cell in cells if usable[cell]][:count]  # type: ignore[misc]


@dataclass
class Comparison:
    """Decoupled variant vs its L2 counterpart at their validation-picked best cells (errors as fractions)."""

    base: OptimizerFindings  # L2
    variant: OptimizerFindings  # decoupled
    difference: float  # base - variant: > 0 when the decoupled variant has lower test error
    relative: float  # difference / base
    standard_error: float  # of the difference, from the seed-to-seed spread of both cells (nan with 1 seed)
    test_set_noise: float  # binomial standard error of one error measurement on the test set

    @property
    def noise(self) -> float:
        """The larger of the seed noise and the test-set noise of the difference."""
        candidates = [v for v in (self.standard_error, math.sqrt(2) * self.test_set_noise) if not math.isnan(v)]
        return max(candidates) if candidates else math.nan

    @property
    def verdict(self) -> str:
        """ "better", "worse" or "tie": whether the decoupled variant differs by more than 2 noise units."""
        if math.isnan(self.noise) or abs(self.difference) <= NOISE_MULTIPLE * self.noise:
            return "tie"
        return "better" if self.difference > 0 else "worse"


# Sweep optimizers compared with AdamW when both are in a sweep (each at its own validation-picked best cell).
VARIANTS_OF_ADAMW = ("adamw-cautious", "sgdw-cautious", "adamc")


@dataclass
class Findings:
    config: SweepConfig
    optimizers: list[OptimizerFindings]
    comparisons: list[Comparison]
    runs_used: int
    runs_expected: int
    runs_diverged: int
    runs_other: int  # stored runs outside this sweep's grid (older or other sweeps in the same folder)
    # used runs whose final errors lie outside [0, 1] (stored by another program or an older version: errors are
    # fractions, and a diverged run counts as 1.0)
    runs_not_fractions: int
    wall_time_total_s: float  # sum of the runs' wall times (compute, not elapsed)
    hardware: dict[str, Any]
    code_versions: list[str]
    # The later weight-decay rules (cautious, corrected) each against AdamW: base = AdamW, variant = the rule.
    variant_comparisons: list[Comparison] = field(default_factory=list)

    def by_name(self, name: str) -> OptimizerFindings | None:
        return next((f for f in self.optimizers if f.name == name), None)


def _optimizer_findings(
    grid: OptimizerGrid, cell_rows: dict[tuple[int, int], list[dict]], seeds: int
) -> OptimizerFindings:
    shape = (len(grid.lrs), len(grid.weight_decays))
    val_by_seed, test_by_seed = np.full((seeds, *shape), np.nan), np.full((seeds, *shape), np.nan)
    val_mean, test_mean, test_std = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    runs, diverged = np.zeros(shape, dtype=int), np.zeros(shape, dtype=int)
    for cell, rows in cell_rows.items():
        val_mean[cell] = np.mean([run_error(r, "val") for r in rows])
        tests = [run_error(r, "test") for r in rows]
        test_mean[cell] = np.mean(tests)
        test_std[cell] = np.std(tests, ddof=1) if len(tests) > 1 else np.nan
        runs[cell] = len(rows)
        diverged[cell] = sum(r["diverged"] for r in rows)
        for r in rows:
            val_by_seed[(r["seed"],) + tuple(cell)] = run_error(r, "val")
            test_by_seed[(r["seed"],) + tuple(cell)] = run_error(r, "test")
    findings = OptimizerFindings(grid, val_mean, test_mean, test_std, runs, diverged, None)
    findings.val_by_seed, findings.test_by_seed = val_by_seed, test_by_seed
    findings.cells_measured = int((runs > 0).sum())
    findings.best = findings.best_in(np.ones(shape, bool))
    if findings.best is None:  # no runs, or every cell diverged: nothing to pick, ring or fit
        return findings
    best_rows = sorted(cell_rows[findings.best], key=lambda r: r["seed"])
    findings.best_test_errors = [run_error(r, "test") for r in best_rows]
    findings.best_curves, findings.best_curves_std = _curves(best_rows)
    epochs = len(findings.best_curves["test_error"])
    findings.best_seed_curves = {r["seed"]: np.array(_padded(r, "test_error", 1.0, epochs)) for r in best_rows}
    findings.edges = _edges(grid, findings.best)
    _slope(findings)
    usable = findings.usable
    best_test = float(np.min(test_mean[usable]))
    findings.basin_width = int(np.sum(usable & (test_mean <= best_test + BASIN_POINTS / 100 + 1e-12)))
    positive = np.array(grid.weight_decays)[None, :] > 0
    trained = usable & positive & (test_mean <= TRAINED_WITHIN * best_test)
    if positive.any():
        x, columns = np.log2(grid.lrs), positive[0]
        findings.basin_quadratic = basin_slope(
            x, np.log2(np.where(columns, grid.weight_decays, 1.0)), test_by_seed, trained
        )
        row_best = np.min(np.where(usable & positive, test_mean, np.inf), axis=1)
        findings.basin = edge_slope(
            x, np.log2(np.array(grid.weight_decays)[columns]), test_by_seed[:, :, columns],
            row_best <= TRAINED_WITHIN * best_test, within=TRAINED_WITHIN,
        )  # fmt: skip
    return findings


def _curves(rows: list[dict]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Mean and std over seeds of the per-epoch curves (diverged runs' missing epochs count as 100% error)."""
    means, stds = {}, {}
    epochs = max(len(r["test_error"]) for r in rows) if rows else 0
    epochs = max(epochs, max((r["config"]["train"]["epochs"] for r in rows), default=0))
    for key, fill in (("test_error", 1.0), ("val_error", 1.0), ("train_loss", math.nan)):
        table = np.array([_padded(r, key, fill, epochs) for r in rows], dtype=float)
        with warnings.catch_warnings():  # epochs after every seed diverged are all-NaN: nan is the answer
            warnings.simplefilter("ignore", RuntimeWarning)
            means[key] = np.nanmean(table, axis=0) if len(table) else np.array([])
            stds[key] = np.nanstd(table, axis=0, ddof=1) if len(table) > 1 else np.zeros(epochs)
    return means, stds


def _padded(row: dict, key: str, fill: float, epochs: int) -> list[float]:
    """A run's per-epoch ``key`` over ``epochs`` epochs: a diverged run's missing epochs are ``fill``; a run
    measured only after its last epoch (train.curves = false) has NaN before it."""
    values = list(row[key])
    if key != "train_loss" and not row["config"]["train"].get("curves", True) and not row["diverged"]:
        return [math.nan] * (epochs - len(values)) + values
    return values + [fill] * (epochs - len(values))


def _edges(grid: OptimizerGrid, cell: tuple[int, int]) -> list[str]:
    edges = []
    for index, values, noun in ((cell[0], grid.lrs, "learning rate"), (cell[1], grid.weight_decays, "weight decay")):
        if len(values) == 1:
            edges.append(f"{noun} has one value")
        elif index == 0:
            edges.append(f"smallest {noun}")
        elif index == len(values) - 1:
            edges.append(f"largest {noun}")
    return edges


def _slope(findings: OptimizerFindings) -> None:
    grid = findings.grid
    points = []
    usable = findings.usable
    threshold = TRAINED_WITHIN * float(np.min(findings.val_mean[usable]))
    for i, lr in enumerate(grid.lrs):
        row = np.where(usable[i], findings.val_mean[i], np.inf)
        if not np.isfinite(row).any() or row.min() > threshold:
            continue
        j = int(np.argmin(row))
        if grid.weight_decays[j] <= 0:
            continue
        points.append((lr, grid.weight_decays[j]))
        if len(grid.weight_decays) > 1 and j in (0, len(grid.weight_decays) - 1):
            findings.row_best_on_edge += 1
    findings.row_best = points
    findings.slope_rows = len(points)
    if len({lr for lr, _ in points}) >= 2:
        x = np.log10([lr for lr, _ in points])
        y = np.log10([wd for _, wd in points])
        findings.slope = float(np.polyfit(x, y, 1)[0])


def compare_best(base: OptimizerFindings, variant: OptimizerFindings, test_size: int) -> Comparison:
    """``base`` against ``variant`` at their validation-picked best cells (both must have one)."""
    a, b = base.best_test_mean, variant.best_test_mean
    difference = a - b
    relative = difference / a if a > 0 else math.nan
    standard_error = math.nan
    if len(base.best_test_errors) > 1 and len(variant.best_test_errors) > 1:
        standard_error = math.sqrt(
            base.best_test_std**2 / len(base.best_test_errors)
            + variant.best_test_std**2 / len(variant.best_test_errors)
        )
    p = (a + b) / 2
    # A task without Data (its loop brings its own) has no known test size: that noise term is unknown.
    test_set_noise = math.sqrt(max(p * (1 - p), 0.0) / test_size) if test_size > 0 else math.nan
    return Comparison(base, variant, difference, relative, standard_error, test_set_noise)


@dataclass(frozen=True)
class DecayEffect:
    """What the weight decay buys one optimizer at the learning rate of its best cell (errors as fractions)."""

    lr: float
    best_weight_decay: float
    smallest_weight_decay: float  # the grid's smallest (0 when the grid has it)
    best_error: float  # mean test error of the best cell
    smallest_error: float  # mean test error at the smallest weight decay, same learning rate
    noise: float  # of the difference (module docstring); nan when unknown

    @property
    def gain(self) -> float:
        """Test error at the smallest weight decay minus at the best one: > 0 when the decay helps."""
        return self.smallest_error - self.best_error

    @property
    def matters(self) -> bool:
        """Whether the gain exceeds NOISE_MULTIPLE x its noise (never with an unknown noise)."""
        return not math.isnan(self.noise) and self.gain > NOISE_MULTIPLE * self.noise


def decay_effect(opt: OptimizerFindings, test_size: int) -> DecayEffect | None:
    """:class:`DecayEffect` of ``opt``; None without a best cell or without runs at the smallest weight decay."""
    if opt.best is None or opt.runs[opt.best[0], 0] == 0:
        return None
    row, best = opt.best
    tests = opt.test_by_seed[:, row, :]
    paired = tests[:, 0] - tests[:, best]
    paired = paired[~np.isnan(paired)]
    seed_error = float(np.std(paired, ddof=1) / math.sqrt(len(paired))) if len(paired) > 1 else math.nan
    best_error, smallest_error = float(opt.test_mean[row, best]), float(opt.test_mean[row, 0])
    p = (best_error + smallest_error) / 2
    test_noise = math.sqrt(2 * max(p * (1 - p), 0.0) / test_size) if test_size > 0 else math.nan
    candidates = [v for v in (seed_error, test_noise) if not math.isnan(v)]
    return DecayEffect(
        opt.grid.lrs[row], opt.grid.weight_decays[best], opt.grid.weight_decays[0], best_error, smallest_error,
        max(candidates) if candidates else math.nan,
    )  # fmt: skip


def _errors_are_fractions(row: dict[str, Any]) -> bool:
    """Whether a stored run's final errors lie in [0, 1] (a diverged run's count as 1.0)."""
    return bool(row["diverged"]) or all(0 <= row[f"final_{split}_error"] <= 1 for split in ("val", "test"))


def analyze(config: SweepConfig, rows: list[dict[str, Any]]) -> Findings:
    """Summarize the stored ``rows`` that belong to ``config``'s grid (other rows are counted, not used). A sweep
    of several precision arms is analyzed one arm at a time (``config.by_precision()``)."""
    precision = config.precision
    index: dict[str, tuple[str, int, int]] = {}
    for grid in config.grids:
        for i, lr in enumerate(grid.lrs):
            for j, weight_decay in enumerate(grid.weight_decays):
                index[config.run_config(grid.optimizer, lr, weight_decay, precision).key()] = (grid.optimizer, i, j)
    cells: dict[str, dict[tuple[int, int], list[dict]]] = {grid.optimizer: {} for grid in config.grids}
    used, other = [], 0
    for row in rows:
        where = index.get(row["config_hash"])
        if where is None or row["seed"] >= config.seeds:
            other += 1
            continue
        cells[where[0]].setdefault((where[1], where[2]), []).append(row)
        used.append(row)
    optimizers = [_optimizer_findings(grid, cells[grid.optimizer], config.seeds) for grid in config.grids]
    by_name = {f.name: f for f in optimizers}
    comparisons = [
        compare_best(by_name[base], by_name[variant], config.data.test_size)
        for base, variant in (("adam", "adamw"), ("sgd", "sgdw"))
        if base in by_name and variant in by_name and by_name[base].best and by_name[variant].best
    ]
    variant_comparisons = [
        compare_best(by_name["adamw"], by_name[variant], config.data.test_size)
        for variant in VARIANTS_OF_ADAMW
        if "adamw" in by_name and variant in by_name and by_name["adamw"].best and by_name[variant].best
    ]
    hardware = used[-1]["hardware"] if used else {}
    return Findings(
        config=config,
        optimizers=optimizers,
        comparisons=comparisons,
        runs_used=len(used),
        runs_expected=sum(grid.cells for grid in config.grids) * config.seeds,
        runs_diverged=sum(r["diverged"] for r in used),
        runs_other=other,
        runs_not_fractions=sum(not _errors_are_fractions(r) for r in used),
        wall_time_total_s=float(sum(r["wall_time_s"] for r in used)),
        hardware=hardware,
        code_versions=sorted({r["code_version"] for r in used}),
        variant_comparisons=variant_comparisons,
    )
