"""Metrics on known answers and against scipy.stats."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from core.errors import ZooError
from weightnet import metrics


def test_kendall_tau_perfect_and_reversed_ranking():
    y = np.array([0.1, 0.5, 0.2, 0.9, 0.7])
    assert metrics.kendall_tau(y, y * 3 + 1) == pytest.approx(1.0)
    assert metrics.kendall_tau(y, -y) == pytest.approx(-1.0)
    assert metrics.spearman(y, np.exp(y)) == pytest.approx(1.0)
    assert metrics.spearman(y, -y) == pytest.approx(-1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, 40).astype(float)  # many ties
    p = y + rng.normal(0, 2, 40)
    p[:5] = p[5]  # ties in predictions as well
    assert metrics.kendall_tau(y, p) == pytest.approx(scipy.stats.kendalltau(y, p).statistic, abs=1e-12)
    assert metrics.spearman(y, p) == pytest.approx(scipy.stats.spearmanr(y, p).statistic, abs=1e-12)


def test_errors_and_r2_known_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.0, 2.0, 3.0, 6.0])
    assert metrics.mae(y, p) == pytest.approx(0.5)
    assert metrics.rmse(y, p) == pytest.approx(1.0)
    assert metrics.r2(y, p) == pytest.approx(1 - 4 / 5)
    assert metrics.r2(y, np.full(4, y.mean())) == pytest.approx(0.0)
    assert metrics.r2(y, y) == pytest.approx(1.0)
    assert math.isnan(metrics.r2(np.ones(3), np.arange(3.0)))


def test_coverage_of_known_intervals():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    assert metrics.coverage(y, y - 0.1, y + 0.1) == 1.0
    assert metrics.coverage(y, y + 0.1, y + 0.2) == 0.0
    assert metrics.coverage(y, np.array([0, 0, 0, 0.0]), np.array([1.5, 1.5, 1.5, 1.5])) == 0.5
    with pytest.raises(ZooError, match="lower > upper"):
        metrics.coverage(y, y + 1, y)


def test_interval_width_is_the_median_width_and_inf_without_a_finite_interval():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    s = metrics.score(y, y, (y - np.array([0.1, 0.2, 0.3, 5.0]), y + 0.1))
    assert s["interval_width"] == pytest.approx(0.35) and s["coverage"] == 1.0  # widths 0.2, 0.3, 0.4, 5.1
    assert metrics.score(y, y, (np.full(4, -math.inf), np.full(4, math.inf)))["interval_width"] == math.inf
    assert math.isnan(metrics.score(y, y)["interval_width"])  # no interval
    assert metrics.fmt((math.inf, math.nan)) == "inf"


def test_length_mismatch_is_a_clear_error():
    with pytest.raises(ZooError, match="differ in length"):
        metrics.mae(np.zeros(3), np.zeros(4))


def test_aggregate_mean_and_std_over_seeds_ignores_nan():
    agg = metrics.aggregate([{"r2": 0.5, "coverage": math.nan}, {"r2": 0.7, "coverage": 0.9}, {"r2": 0.6, "coverage": 0.8}])
    assert agg["r2"][0] == pytest.approx(0.6)
    assert agg["r2"][1] == pytest.approx(np.std([0.5, 0.7, 0.6]))
    assert agg["coverage"][0] == pytest.approx(0.85)
    assert metrics.fmt(agg["r2"]) == "0.600 ± 0.082"
