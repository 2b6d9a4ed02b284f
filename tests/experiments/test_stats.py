"""The statistics of the verdicts on synthetic grids with known answers, and the coverage of their intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from decoupled.experiments.stats import (
    REPLICATES,
    Interval,
    LocationFit,
    basin_edge,
    basin_slope,
    edge_slope,
    paired_interval,
    parabola_vertex,
    scaling_exponent,
)

X = np.arange(-8, -3, dtype=float)  # log2 learning rates
Y = np.arange(-12, -2, 2, dtype=float)  # log2 weight decays


def _grid(slope: float, seeds: int, noise: float, rng: np.random.Generator, y0: float = -7.0) -> np.ndarray:
    """Errors whose valley floor is y = y0 + slope (x - x_mid): log10 err = -1.5 + 0.02 (x-xm)^2 + 0.03 (y-y*)^2."""
    xs, ys = np.meshgrid(X, Y, indexing="ij")
    floor = y0 + slope * (xs - X.mean())
    log_error = -1.5 + 0.02 * (xs - X.mean()) ** 2 + 0.03 * (ys - floor) ** 2
    return 10 ** (log_error[None] + noise * rng.standard_normal((seeds, *xs.shape)))


@pytest.mark.parametrize("truth", [-1.0, 0.0, 0.5])
def test_basin_slope_recovers_diagonal_and_axis_aligned_basins(truth):
    rng = np.random.default_rng(1)
    fit = basin_slope(X, Y, _grid(truth, seeds=2, noise=0.0, rng=rng), np.ones((5, 5), bool))
    assert fit is not None and fit.slope == pytest.approx(truth, abs=1e-9)
    assert fit.interval.low - 1e-9 <= truth <= fit.interval.high + 1e-9 and fit.interval.half_width < 1e-6
    noisy = basin_slope(X, Y, _grid(truth, seeds=3, noise=0.02, rng=rng), np.ones((5, 5), bool))
    assert noisy is not None and abs(noisy.slope - truth) < 0.3 and noisy.interval.contains(noisy.slope)


def test_basin_slope_needs_enough_cells_and_a_valley():
    rng = np.random.default_rng(0)
    errors = _grid(0.0, 2, 0.0, rng)
    few = np.zeros((5, 5), bool)
    few[:2, :3] = True
    assert basin_slope(X, Y, errors, few) is None
    ridge = 10 ** (-1.5 - 0.03 * (Y[None, None, :] + 7.0) ** 2 + 0 * X[None, :, None])  # a maximum across y
    assert basin_slope(X, Y, np.repeat(ridge, 2, axis=0), np.ones((5, 5), bool)) is None


def test_basin_slope_interval_covers_the_truth_at_about_its_nominal_rate():
    rng = np.random.default_rng(7)
    hits = 0
    trials = 150
    for _ in range(trials):
        fit = basin_slope(X, Y, _grid(-1.0, 3, 0.03, rng), np.ones((5, 5), bool), replicates=400)
        hits += fit is not None and fit.interval.contains(-1.0)
    assert 0.88 <= hits / trials <= 1.0  # nominal 95%; the residual-variance floor makes it a little conservative


def _budget_errors(exponent: float, log_updates: float, seeds: int, noise: float, rng) -> np.ndarray:
    y = np.arange(-12, -1, 1.0)
    best = -6.0 + exponent * (log_updates - 10)
    log_error = -1.3 + 0.02 * (y - best) ** 2
    return 10 ** (log_error[None] + noise * rng.standard_normal((seeds, len(y))))


def test_scaling_exponent_is_recovered_with_a_covering_interval():
    y = np.arange(-12, -1, 1.0)
    budgets = [9.0, 10.0, 11.0]
    rng = np.random.default_rng(3)
    exact = [
        parabola_vertex(y, _budget_errors(-0.5, t, 2, 0.0, rng), np.ones(len(y), bool), stream=k)
        for k, t in enumerate(budgets)
    ]
    interval = scaling_exponent(budgets, exact)
    assert interval is not None and interval.estimate == pytest.approx(-0.5, abs=1e-9)
    hits, trials = 0, 100
    for _ in range(trials):
        fits = [
            parabola_vertex(y, _budget_errors(-0.5, t, 3, 0.02, rng), np.ones(len(y), bool), stream=k, replicates=400)
            for k, t in enumerate(budgets)
        ]
        result = scaling_exponent(budgets, fits)
        hits += result is not None and result.contains(-0.5)
    assert 0.88 <= hits / trials <= 1.0


def test_parabola_vertex_refuses_a_maximum_and_too_few_points():
    y = np.arange(-6, 0, 1.0)
    hill = 10 ** (-1 - 0.05 * (y + 3) ** 2)[None].repeat(2, axis=0)
    assert parabola_vertex(y, hill, np.ones(len(y), bool), stream=0) is None
    assert parabola_vertex(y[:3], hill[:, :3], np.ones(3, bool), stream=0) is None


def test_paired_interval_mean_and_coverage():
    assert paired_interval({0: 0.1}, {0: 0.2}) is None
    assert paired_interval({0: 0.3, 1: 0.5}, {0: 0.2, 2: 0.1}) is None  # one common seed
    rng = np.random.default_rng(11)
    hits, trials = 0, 400
    for _ in range(trials):
        shared = rng.normal(0.1, 0.02, 4)  # the seed effect both cells share
        a = {s: shared[s] + 0.01 + rng.normal(0, 0.005) for s in range(4)}
        b = {s: shared[s] + rng.normal(0, 0.005) for s in range(4)}
        hits += paired_interval(a, b).contains(0.01)
    assert 0.91 <= hits / trials <= 0.985


def test_interval_helpers():
    interval = Interval(0.01, -0.002, 0.03)
    assert interval.contains(0.0) and not interval.contains(0.05)
    assert interval.scaled(100).format() == "+1.00 [-0.20, +3.00]"
    assert interval.scaled(-1).low == pytest.approx(-0.03)
    assert math.isclose(interval.half_width, 0.016)


FINE = np.arange(-12, -1, 1.0)  # log2 weight decays 2x apart, as F4's


def _plateau_cliff(edge: float, seeds: int, noise: float, rng, y: np.ndarray = FINE) -> np.ndarray:
    """F4's measured shape: 3% error flat at small lambda, then a cliff whose log10 error rises 0.4 per unit of
    log2 lambda from ``edge - log10(2) / 0.4`` on (so it reaches 2x the plateau exactly at ``edge``)."""
    start = edge - math.log10(2) / 0.4
    log_error = math.log10(0.03) + 0.4 * np.clip(y - start, 0, None)
    return np.clip(10 ** (log_error[None] + noise * rng.standard_normal((seeds, len(y)))), None, 0.9)


def test_basin_edge_finds_the_cliff_of_a_plateau_where_a_parabolas_vertex_follows_the_grid():
    y = np.arange(-12, -1, 1.0)
    rng = np.random.default_rng(5)
    exact = _plateau_cliff(-5.3, 2, 0.0, rng)
    fit = basin_edge(y, exact, stream=0)
    assert fit is not None and fit.location == pytest.approx(-5.3, abs=1e-9) and fit.interval().half_width < 1e-9
    # On a plateau the parabola's vertex sits wherever the grid's lower end puts it; the edge stays put.
    wider = np.arange(-16, -1, 1.0)
    wide = _plateau_cliff(-5.3, 2, 0.0, rng, y=wider)
    vertices = [
        parabola_vertex(grid, errors, errors[0] <= 2 * errors[0].min(), stream=0)
        for grid, errors in ((y, exact), (wider, wide))
    ]
    assert all(v is not None for v in vertices) and vertices[0].location - vertices[1].location > 1.0
    assert basin_edge(wider, wide, stream=0).location == pytest.approx(-5.3, abs=1e-9)
    noisy = basin_edge(y, _plateau_cliff(-5.3, 3, 0.03, rng), stream=0)
    assert noisy is not None and abs(noisy.location + 5.3) < 0.3 and noisy.interval().contains(noisy.location)


def test_basin_edge_none_without_a_cliff_and_diverged_seeds_count_as_errors():
    y = np.arange(-12, -1, 1.0)
    flat = np.full((2, len(y)), 0.03)
    assert basin_edge(y, flat, stream=0) is None  # never reaches twice the best
    assert basin_edge(y[:2], flat[:, :2], stream=0) is None  # too few cells
    with pytest.raises(ValueError, match="ascending"):
        basin_edge(y[::-1], flat, stream=0)
    diverged = flat.copy()
    diverged[:, -3:] = 1.0  # the three largest lambdas diverged (a diverged seed counts as 100% error)
    fit = basin_edge(y, diverged, stream=0)
    assert fit is not None and y[-4] < fit.location < y[-3]
    missing = flat.copy()
    missing[:, 4] = np.nan  # a cell with no run is skipped, not read as a crossing
    missing[:, -1] = 0.5
    fit = basin_edge(y, missing, stream=0)
    assert fit is not None and y[-2] < fit.location < y[-1]


def test_edge_exponent_is_recovered_with_a_covering_interval():
    """Budgets whose curves move along log lambda with a known exponent: the edges' exponent recovers it."""
    budgets = [9.0, 10.0, 11.0]
    y = np.arange(-12, -1, 1.0)
    rng = np.random.default_rng(8)
    exact = [basin_edge(y, _plateau_cliff(-5.0 - 0.5 * (t - 10), 2, 0.0, rng), stream=k) for k, t in enumerate(budgets)]
    interval = scaling_exponent(budgets, exact)
    assert interval is not None and interval.estimate == pytest.approx(-0.5, abs=1e-9)
    hits, trials = 0, 100
    for _ in range(trials):
        fits = [
            basin_edge(y, _plateau_cliff(-5.0 - 0.5 * (t - 10), 3, 0.03, rng), stream=k, replicates=400)
            for k, t in enumerate(budgets)
        ]
        result = scaling_exponent(budgets, fits) if all(fits) else None
        hits += result is not None and result.contains(-0.5)
    assert 0.88 <= hits / trials <= 1.0


def _cliff_grid(slope: float, seeds: int, noise: float, rng, y: np.ndarray = FINE[:-1]) -> np.ndarray:
    """(seeds, lr, wd) errors: a plateau, then a linear cliff in log error whose 2x point (the edge) moves
    ``slope`` units of log2 lambda per unit of log2 lr around 2^-7."""
    return np.stack([_plateau_cliff(-7.0 + slope * (x - X.mean()), seeds, noise, rng, y=y) for x in X], axis=1)


@pytest.mark.parametrize("truth", [-1.0, 0.0, 0.5])
def test_edge_slope_recovers_diagonal_and_axis_aligned_basins(truth):
    y = np.arange(-12, -2, 1.0)
    rng = np.random.default_rng(2)
    fit = edge_slope(X, y, _cliff_grid(truth, 2, 0.0, rng), np.ones(len(X), bool))
    assert fit is not None and fit.unit == "rows" and fit.cells == len(X)
    assert fit.slope == pytest.approx(truth, abs=1e-9) and fit.interval.half_width < 1e-6
    noisy = edge_slope(X, y, _cliff_grid(truth, 3, 0.03, rng), np.ones(len(X), bool))
    assert noisy is not None and abs(noisy.slope - truth) < 0.3 and noisy.interval.contains(noisy.slope)


def test_edge_slope_needs_three_rows_with_an_edge():
    y = np.arange(-12, -2, 1.0)
    errors = _cliff_grid(0.0, 2, 0.0, np.random.default_rng(0))
    assert edge_slope(X, y, errors, np.array([True, True, False, False, False])) is None
    flat = np.full_like(errors, 0.03)
    flat[:, :2, -1] = 0.5  # only two rows reach twice their best within the grid
    assert edge_slope(X, y, flat, np.ones(len(X), bool)) is None


def test_edge_slope_interval_covers_the_truth_at_about_its_nominal_rate():
    y = np.arange(-12, -2, 2.0)  # a coarse grid, 4x steps as the default sweep's: interpolation is inexact too
    rng = np.random.default_rng(9)
    hits, trials = 0, 150
    for _ in range(trials):
        fit = edge_slope(X, y, _cliff_grid(-1.0, 2, 0.03, rng, y=y), np.ones(len(X), bool), replicates=400)
        hits += fit is not None and fit.interval.contains(-1.0)
    assert 0.88 <= hits / trials <= 1.0


def test_scaling_exponent_widens_for_scatter_its_locations_noise_does_not_explain():
    """Exact locations (no replicate noise) that scatter about their line: the residual floor gives the slope
    a Student-t-like interval instead of a zero-width one."""
    t = np.array([8.0, 9.0, 10.0, 11.0, 12.0])
    exact = [LocationFit(v, np.full(REPLICATES, v), True) for v in (-5.0, -5.9, -6.0, -6.4, -7.1)]
    interval = scaling_exponent(t, exact)
    slope, intercept = np.polyfit(t, [f.location for f in exact], 1)
    se = math.sqrt(np.sum((np.array([f.location for f in exact]) - (slope * t + intercept)) ** 2) / 3 / 10)
    assert interval.estimate == pytest.approx(slope)
    assert 1.5 * 1.96 * se < interval.half_width < 1.3 * 3.18 * se  # near t(3)'s 3.18 x se, far wider than 0
    two = scaling_exponent(t[:2], exact[:2])  # two budgets: no residual, only the locations' own noise
    assert two.half_width == 0
