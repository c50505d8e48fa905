"""Regression and ranking metrics per property, and their mean/std over seeds.

Kendall tau is tau-b (ties handled as scipy does); Spearman is the Pearson correlation of average
ranks. Both are written here with numpy so the eval stack has no hidden dependency, and the tests
check them against ``scipy.stats``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from core.errors import ZooError

METRICS = ("mae", "rmse", "r2", "spearman", "kendall_tau", "coverage", "interval_width")


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, dtype=np.float64).ravel(), np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ZooError(f"metric inputs differ in length: {y.shape[0]} targets vs {p.shape[0]} predictions")
    return y, p


def mae(y: np.ndarray, p: np.ndarray) -> float:
    y, p = _check(y, p)
    return float(np.mean(np.abs(y - p))) if y.size else math.nan


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    y, p = _check(y, p)
    return float(np.sqrt(np.mean((y - p) ** 2))) if y.size else math.nan


def r2(y: np.ndarray, p: np.ndarray) -> float:
    """1 - SS_res / SS_tot; NaN when the targets are constant (R2 is undefined then)."""
    y, p = _check(y, p)
    ss_tot = float(np.sum((y - y.mean()) ** 2)) if y.size else 0.0
    if ss_tot == 0.0:
        return math.nan
    return 1.0 - float(np.sum((y - p) ** 2)) / ss_tot


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), 1-based like scipy.stats.rankdata."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def spearman(y: np.ndarray, p: np.ndarray) -> float:
    y, p = _check(y, p)
    if y.size < 2:
        return math.nan
    ry, rp = _ranks(y), _ranks(p)
    sy, sp = ry.std(), rp.std()
    if sy == 0 or sp == 0:
        return math.nan
    return float(np.mean((ry - ry.mean()) * (rp - rp.mean())) / (sy * sp))


def kendall_tau(y: np.ndarray, p: np.ndarray) -> float:
    """Kendall tau-b over all pairs: (concordant - discordant) / sqrt((n0 - ties_y)(n0 - ties_p)). O(n^2)."""
    y, p = _check(y, p)
    if y.size < 2:
        return math.nan
    dy = np.sign(y[:, None] - y[None, :])  # (n, n)
    dp = np.sign(p[:, None] - p[None, :])
    iu = np.triu_indices(len(y), k=1)
    dy, dp = dy[iu], dp[iu]
    s = float(np.sum(dy * dp))
    n_y, n_p = float(np.sum(dy != 0)), float(np.sum(dp != 0))
    if n_y == 0 or n_p == 0:
        return math.nan
    return s / math.sqrt(n_y * n_p)


def coverage(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of targets inside [lower, upper] (closed interval)."""
    y, lo = _check(y, lower)
    _, hi = _check(y, upper)
    if np.any(lo > hi):
        raise ZooError("prediction interval with lower > upper")
    return float(np.mean((y >= lo) & (y <= hi))) if y.size else math.nan


def score(y: np.ndarray, p: np.ndarray, interval: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """All metrics for one property; coverage is NaN when the predictor gives no interval."""
    return {
        "mae": mae(y, p), "rmse": rmse(y, p), "r2": r2(y, p), "spearman": spearman(y, p),
        "kendall_tau": kendall_tau(y, p),
        "coverage": coverage(y, *interval) if interval is not None else math.nan,
        # median width of the intervals (inf when there is no finite one): what a coverage figure costs
        "interval_width": float(np.median(interval[1] - interval[0])) if interval is not None and y.size else math.nan,
    }


def aggregate(per_seed: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """metric -> (mean, std) over seeds, ignoring NaNs; std is the population std (0 for one seed)."""
    out: dict[str, tuple[float, float]] = {}
    keys = sorted({k for d in per_seed for k in d})
    for k in keys:
        vals = np.array([d[k] for d in per_seed if k in d and not math.isnan(d[k])], dtype=np.float64)
        out[k] = (float(vals.mean()), float(vals.std())) if vals.size else (math.nan, math.nan)
    return out


def fmt(mean_std: tuple[float, float], digits: int = 3) -> str:
    m, s = mean_std
    if math.isnan(m):
        return "n/a"
    if math.isinf(m):
        return "inf"
    return f"{m:.{digits}f} ± {s:.{digits}f}"
