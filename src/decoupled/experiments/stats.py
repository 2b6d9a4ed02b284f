"""The statistics behind the verdicts of ``decoupled reproduce``: pure numpy, no plotting, no store.

Every verdict comes from an interval, never from one argmin: an argmin over a grid of 4x steps takes a few
discrete values, and another CPU's round-off can move it by a whole cell. Intervals move continuously with the
data, so two machines that agree to round-off agree on every verdict unless an interval's end sits exactly on a
threshold.

* :func:`paired_interval`: a difference of test errors at two fixed cells, paired over seeds (seed s gives the
  same initialization and batch order in every cell), with a Student-t interval.
* :func:`basin_slope`: the orientation of the good region of a learning-rate x weight-decay grid. A quadratic
  ``q(x, y) = a + b x + c y + d x^2 + e x y + f y^2`` is fitted to log10(error) over x = log2(lr), y =
  log2(weight decay), on the cells that trained well. For each x the best y is the valley floor
  y*(x) = -(c + e x) / (2 f), so d y* / d x = -e / (2 f): -1 for the paper's L2 diagonal (lambda * alpha
  constant), 0 for an axis-aligned basin. Its interval is a parametric bootstrap (below).
* :func:`edge_slope`: the same orientation from the basin's upper edge in each learning-rate row (where the
  row's error climbs to twice its lowest): the verdict's statistic, since MNIST-1D's grids are a plateau at small
  lambda and then a cliff, which a quadratic fits badly.
* :func:`parabola_vertex`: the best log2(weight decay) of one budget, the vertex of a parabola fitted to
  log10(error); :func:`basin_edge`: the upper edge of one budget's basin, where the error curve first climbs to
  twice its best above the best (the statistic for a plateau at small lambda, then a cliff, which a parabola fits
  badly); and :func:`scaling_exponent`: the slope of either location against log(number of updates) over
  budgets, with a bootstrap interval.

The bootstrap: each replicate adds Gaussian noise to the fitted cell values and refits. Its variance per cell is
the larger of (the pooled within-cell variance over seeds) / (seeds in the cell) and the fit's residual variance
(which also absorbs a surface that is not exactly quadratic). 2000 replicates from a fixed generator, so the
interval of a given set of runs is the same on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "LEVEL",
    "Interval",
    "SlopeFit",
    "LocationFit",
    "basin_edge",
    "basin_slope",
    "edge_slope",
    "paired_interval",
    "parabola_vertex",
    "scaling_exponent",
]

LEVEL = 0.95  # every interval of the report is a 95% interval
REPLICATES = 2000
_MIN_ERROR = 1e-4  # log10 of a 0% error (a tiny test set) is -inf: such cells count as 0.01%


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided ``level`` interval [low, high]."""

    estimate: float
    low: float
    high: float
    level: float = LEVEL
    n: int = 0  # seeds (paired) or budgets/cells behind it

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def scaled(self, factor: float) -> Interval:
        values = sorted((self.low * factor, self.high * factor))
        return Interval(self.estimate * factor, values[0], values[1], self.level, self.n)

    def format(self, digits: int = 2, scale: float = 1.0, sign: bool = True) -> str:
        fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
        return f"{fmt.format(self.estimate * scale)} [{fmt.format(self.low * scale)}, {fmt.format(self.high * scale)}]"


def _t_quantile(level: float, df: int) -> float:
    from scipy import stats as scipy_stats  # scipy comes with scikit-learn (the sweep extra)

    return float(scipy_stats.t.ppf(0.5 + level / 2, df))


def paired_interval(a: dict[int, float], b: dict[int, float], level: float = LEVEL) -> Interval | None:
    """Mean of a[s] - b[s] over the seeds s both have, with a Student-t interval; None with < 2 common seeds.

    >>> paired_interval({0: 0.30, 1: 0.32, 2: 0.31}, {0: 0.20, 1: 0.21, 2: 0.22}).estimate
    0.1
    """
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    mean = float(np.mean(d))
    half = _t_quantile(level, len(d) - 1) * float(np.std(d, ddof=1)) / math.sqrt(len(d))
    return Interval(round(mean, 12), mean - half, mean + half, level, len(d))


def _log_errors(errors: np.ndarray) -> np.ndarray:
    return np.log10(np.clip(errors, _MIN_ERROR, None))


def _cell_noise(log_by_seed: np.ndarray, fitted_residual_var: float) -> np.ndarray:
    """Variance of each cell's mean log error: max(pooled seed variance / n, residual variance of the fit).

    ``log_by_seed``: (seeds, cells), NaN where a seed is missing."""
    counts = np.sum(~np.isnan(log_by_seed), axis=0)
    return np.maximum(_pooled_variance(log_by_seed) / np.maximum(counts, 1), fitted_residual_var)


def _pooled_variance(log_by_seed: np.ndarray) -> float:
    """The within-cell variance of one seed, pooled over cells: (seeds, cells), NaN where a seed is missing."""
    log_by_seed = log_by_seed[:, np.any(~np.isnan(log_by_seed), axis=0)]  # cells without a run say nothing
    counts = np.sum(~np.isnan(log_by_seed), axis=0)
    centred = log_by_seed - np.nanmean(log_by_seed, axis=0)
    df = int(np.sum(np.maximum(counts - 1, 0)))
    return float(np.nansum(centred**2) / df) if df > 0 else 0.0


def _quantiles(draws: np.ndarray, undefined: int, level: float) -> tuple[float, float]:
    """The percentile interval of bootstrap ``draws``; each of ``undefined`` replicates (no minimum, so no
    value) counts once at -inf and once at +inf: it widens the interval, never narrows it."""
    pool = np.concatenate([draws, np.full(undefined, -np.inf), np.full(undefined, np.inf)])
    low, high = np.quantile(pool, [0.5 - level / 2, 0.5 + level / 2], method="inverted_cdf")  # no inf - inf
    return float(low), float(high)


def _design_2d(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])


@dataclass(frozen=True)
class SlopeFit:
    """The basin's orientation d log(lambda) / d log(alpha), its interval, and the cells (or rows) it used."""

    slope: float
    interval: Interval
    cells: int  # cells in the fit (or rows: ``unit``)
    unit: str = "cells"


def _slope_from(coef: np.ndarray) -> float:
    e, f = coef[4], coef[5]
    return float(-e / (2 * f)) if f > 0 else math.nan


def basin_slope(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    errors_by_seed: np.ndarray,
    usable: np.ndarray,
    level: float = LEVEL,
    replicates: int = REPLICATES,
) -> SlopeFit | None:
    """The basin orientation of a grid: x = log2 learning rates (n_x), y = log2 weight decays (n_y),
    ``errors_by_seed`` (seeds, n_x, n_y) fractions (NaN: missing), ``usable`` (n_x, n_y) the cells to fit.

    Returns None when the fit is not possible: fewer than 7 cells, fewer than 3 distinct values on an axis, or a
    surface without a valley across the weight-decay axis (f <= 0). Replicates without a valley are dropped;
    if more than half are, the interval is unbounded (-inf, inf): the data do not pin the orientation down.
    """
    xs, ys = np.meshgrid(np.asarray(x, float), np.asarray(y, float), indexing="ij")
    mask = np.asarray(usable, bool) & np.any(~np.isnan(errors_by_seed), axis=0)
    if mask.sum() < 7 or len(set(xs[mask])) < 3 or len(set(ys[mask])) < 3:
        return None
    log_by_seed = _log_errors(errors_by_seed[:, mask])
    target = np.nanmean(log_by_seed, axis=0)
    # Centre and scale the axes so the normal equations are well conditioned; the slope is scale-free in this
    # sense: with x' = (x - mx) / s and y' = (y - my) / s, dy/dx = dy'/dx'.
    mx, my = float(np.mean(xs[mask])), float(np.mean(ys[mask]))
    scale = max(float(np.std(xs[mask])), float(np.std(ys[mask])), 1e-12)
    design = _design_2d((xs[mask] - mx) / scale, (ys[mask] - my) / scale)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    slope = _slope_from(coef)
    if math.isnan(slope):
        return None
    fitted = design @ coef
    df = len(target) - design.shape[1]
    residual_var = float(np.sum((target - fitted) ** 2) / df) if df > 0 else 0.0
    sd = np.sqrt(_cell_noise(log_by_seed, residual_var))
    rng = np.random.default_rng(20190101)
    noise = rng.standard_normal((replicates, len(target))) * sd
    coefs, *_ = np.linalg.lstsq(design, (fitted + noise).T, rcond=None)
    e, f = coefs[4], coefs[5]
    valid = f > 0
    if valid.mean() < 0.5:
        interval = Interval(slope, -math.inf, math.inf, level, int(mask.sum()))
    else:
        draws = -e[valid] / (2 * f[valid])
        low, high = _quantiles(draws, int((~valid).sum()), level)
        interval = Interval(slope, low, high, level, int(mask.sum()))
    return SlopeFit(slope, interval, int(mask.sum()))


@dataclass(frozen=True)
class LocationFit:
    """A location on one budget's log2(weight decay) axis (a parabola's vertex, or the basin's upper edge), with
    its bootstrap replicates."""

    location: float  # log2 lambda
    draws: np.ndarray  # bootstrap replicates of the location (NaN where a replicate has none)
    inside: bool  # the location lies within the grid's range (a vertex outside it is an extrapolation)

    def interval(self, level: float = LEVEL) -> Interval:
        """The percentile interval of the replicates (unbounded when more than half have no location)."""
        valid = ~np.isnan(self.draws)
        if valid.mean() <= 0.5:
            return Interval(self.location, -math.inf, math.inf, level)
        low, high = _quantiles(self.draws[valid], int((~valid).sum()), level)
        return Interval(self.location, low, high, level)


def parabola_vertex(
    y: Sequence[float] | np.ndarray,
    errors_by_seed: np.ndarray,
    usable: np.ndarray,
    *,
    stream: int,
    replicates: int = REPLICATES,
) -> LocationFit | None:
    """Vertex of log10(error) ~ a + b y + c y^2 over y = log2 weight decays (n_y,), ``errors_by_seed``
    (seeds, n_y), ``usable`` (n_y,). None with fewer than 4 usable points or no minimum (c <= 0).

    ``stream``: which random stream draws the replicates; give each budget of one exponent its own (0, 1, ...),
    else their replicates share their noise and the exponent's interval comes out too narrow."""
    values = np.asarray(y, float)
    mask = np.asarray(usable, bool) & np.any(~np.isnan(errors_by_seed), axis=0)
    if mask.sum() < 4:
        return None
    log_by_seed = _log_errors(errors_by_seed[:, mask])
    target = np.nanmean(log_by_seed, axis=0)
    centre = float(np.mean(values[mask]))
    design = np.column_stack([np.ones(mask.sum()), values[mask] - centre, (values[mask] - centre) ** 2])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    if coef[2] <= 0:
        return None
    vertex = centre - coef[1] / (2 * coef[2])
    fitted = design @ coef
    df = len(target) - 3
    residual_var = float(np.sum((target - fitted) ** 2) / df) if df > 0 else 0.0
    sd = np.sqrt(_cell_noise(log_by_seed, residual_var))
    rng = np.random.default_rng([20190102, stream])
    coefs, *_ = np.linalg.lstsq(design, (fitted + rng.standard_normal((replicates, len(target))) * sd).T, rcond=None)
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = np.where(coefs[2] > 0, centre - coefs[1] / (2 * coefs[2]), np.nan)
    lo, hi = float(values[mask].min()), float(values[mask].max())
    # A vertex far outside the fitted range is extrapolation: clip replicates to one grid span beyond it.
    span = hi - lo
    draws = np.clip(draws, lo - span, hi + span)
    return LocationFit(float(vertex), draws, lo <= vertex <= hi)


def _first_crossing(y: np.ndarray, log_means: np.ndarray, rise: float) -> np.ndarray:
    """Per row of ``log_means`` (replicates, cells; ``y`` ascending): the y where the curve, linearly
    interpolated, first reaches min + ``rise`` above its minimum; NaN where it never does."""
    low = np.argmin(log_means, axis=1)
    level = log_means[np.arange(len(log_means)), low] + rise
    out = np.full(len(log_means), np.nan)
    for j in range(1, len(y)):  # a scan over the few cells, vectorized over the replicates
        fresh = np.isnan(out) & (j > low) & (log_means[:, j] >= level)
        if fresh.any():
            below, above = log_means[fresh, j - 1], log_means[fresh, j]
            share = (level[fresh] - below) / (above - below)
            out[fresh] = y[j - 1] + share * (y[j] - y[j - 1])
    return out


def basin_edge(
    y: Sequence[float] | np.ndarray,
    errors_by_seed: np.ndarray,
    *,
    stream: int,
    within: float = 2.0,
    replicates: int = REPLICATES,
    seed_variance: float | None = None,
) -> LocationFit | None:
    """The upper edge of one budget's basin: the log2(weight decay) at which the mean test error, climbing from
    its lowest point towards larger lambda, first reaches ``within`` x its lowest (linear in log10 error between
    grid points). None when it never does within the grid, or with fewer than 3 measured cells.

    ``y``: log2 weight decays (n_y,), ascending; ``errors_by_seed``: (seeds, n_y) error fractions (a diverged
    seed counts as 1.0; NaN: no run). Why an edge and not an optimum: at small lambda the error is often a
    plateau, flat to within the seed noise, and then a cliff just past the best; a plateau has no well-placed
    minimum, but the cliff is steep, so where it crosses a level is pinned down tightly. If the error curve moves
    along log lambda as the budget changes (as both predictions of F4 assume), its edge moves with its optimum.
    ``within`` = 2 is the toolkit's "trained well" (``analysis.TRAINED_WITHIN``), fixed before any F4 run.

    The interval: each replicate adds Gaussian noise to the cells' mean log errors (variance: the pooled seed
    variance / seeds per cell, as :func:`basin_slope`; ``seed_variance`` gives the pooled variance of one seed's
    log10 error instead, e.g. pooled over a whole grid) and finds the crossing again; ``stream`` as for
    :func:`parabola_vertex`.

    >>> round(basin_edge([-8, -6, -4, -2], np.array([[0.05, 0.05, 0.05, 0.4]] * 2), stream=0).location, 2)
    -3.33
    """
    values = np.asarray(y, float)
    if np.any(np.diff(values) <= 0):
        raise ValueError(f"basin_edge: y must be strictly ascending, got {values.tolist()}")
    measured = np.any(~np.isnan(errors_by_seed), axis=0)
    if measured.sum() < 3:
        return None
    values = values[measured]
    log_by_seed = _log_errors(errors_by_seed[:, measured])
    target = np.nanmean(log_by_seed, axis=0)
    rise = math.log10(within)
    edge = float(_first_crossing(values, target[None], rise)[0])
    if math.isnan(edge):
        return None
    if seed_variance is None:
        sd = np.sqrt(_cell_noise(log_by_seed, 0.0))
    else:
        sd = np.sqrt(seed_variance / np.maximum(np.sum(~np.isnan(log_by_seed), axis=0), 1))
    rng = np.random.default_rng([20190103, stream])
    draws = _first_crossing(values, target + rng.standard_normal((replicates, len(target))) * sd, rise)
    return LocationFit(edge, draws, True)


def scaling_exponent(
    log_updates: Sequence[float], fits: Sequence[LocationFit], level: float = LEVEL
) -> Interval | None:
    """Least-squares slope of log2(lambda) (a vertex or an edge per budget) against log2(updates) over budgets,
    with a bootstrap interval; None with fewer than 2 distinct budgets.

    Each replicate refits the slope to the budgets' location replicates. With 3 or more budgets it also adds the
    scatter of the locations about the line that their own noise does not explain (a grid's discreteness moves
    an interpolated location by a different share of a cell in each budget): a residual variance drawn per
    replicate as RSS / chi2(budgets - 2), less the locations' own variance, as independent noise per budget. That
    is the floor :func:`basin_slope` puts on its cells' noise, with a Student-t's width for few budgets. A
    replicate in which some budget has no location counts at both ends (it widens the interval)."""
    t = np.asarray(log_updates, float)
    if len(fits) < 2 or len(set(t)) < 2:
        return None
    vertices = np.array([fit.location for fit in fits])
    centred = t - t.mean()
    denominator = float(np.sum(centred**2))
    estimate = float(np.sum(centred * (vertices - vertices.mean())) / denominator)
    draws = np.stack([fit.draws for fit in fits])  # (budgets, replicates)
    valid = np.all(~np.isnan(draws), axis=0)
    if valid.mean() < 0.5:
        return Interval(estimate, -math.inf, math.inf, level, len(fits))
    d = draws[:, valid]
    if len(fits) >= 3:
        residual = vertices - vertices.mean() - estimate * centred
        own = float(np.mean(np.var(d, axis=1)))
        rng = np.random.default_rng([20190104, len(fits)])
        drawn = float(np.sum(residual**2)) / rng.chisquare(len(fits) - 2, size=d.shape[1])
        d = d + rng.standard_normal(d.shape) * np.sqrt(np.maximum(drawn - own, 0.0))
    slopes = np.sum(centred[:, None] * (d - d.mean(axis=0)), axis=0) / denominator
    low, high = _quantiles(slopes, int((~valid).sum()), level)
    return Interval(estimate, low, high, level, len(fits))


def edge_slope(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    errors_by_seed: np.ndarray,
    rows: np.ndarray,
    *,
    within: float = 2.0,
    replicates: int = REPLICATES,
) -> SlopeFit | None:
    """The basin's orientation from its upper edge: per learning-rate row, the log2(weight decay) at which the
    row's mean error first climbs to ``within`` x the row's lowest (:func:`basin_edge`), and the least-squares
    slope of those edges against x = log2(learning rate): d log lambda_edge / d log alpha, -1 where L2 ties
    weight decay to the learning rate (lambda alpha constant), 0 for an axis-aligned basin.

    ``y``: log2 weight decays (n_y,), ascending (only lambda > 0); ``errors_by_seed``: (seeds, n_x, n_y), a
    diverged seed as 1.0, NaN where no run; ``rows``: (n_x,) the rows that may count (their best cell trained
    well). A row counts when it also has an edge in the grid; fewer than 3 such rows: None. The interval: each
    row's edge replicates (noise from the seed variance pooled over the whole grid, an independent stream per
    row), and the slope refitted per replicate; a replicate in which a counted row has no edge counts at both
    ends, and with more than half such the interval is unbounded.

    On a grid that is a plateau at small lambda and then a cliff (what MNIST-1D's grids show), a quadratic has
    no well-placed valley (:func:`basin_slope` then gives an unbounded interval), while the cliff places each
    row's edge tightly.
    """
    xs = np.asarray(x, float)
    log_all = _log_errors(errors_by_seed.reshape(errors_by_seed.shape[0], -1))
    variance = _pooled_variance(log_all)
    fits, used = [], []
    for i in np.flatnonzero(np.asarray(rows, bool)):
        fit = basin_edge(y, errors_by_seed[:, i, :], stream=int(i), within=within, replicates=replicates,
                         seed_variance=variance)  # fmt: skip
        if fit is not None:
            fits.append(fit)
            used.append(xs[i])
    if len(fits) < 3:
        return None
    interval = scaling_exponent(used, fits)
    if interval is None:
        return None
    return SlopeFit(interval.estimate, replace(interval, n=len(fits)), len(fits), unit="rows")
