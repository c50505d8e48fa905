"""Split-conformal intervals shared by WeightNet and every baseline (Lei et al. 2018, Vovk et al. 2005).

A valid split-conformal interval needs residuals on a *calibration set that the fit never saw*: not in
training, not in early stopping, not in the linear recalibration. ``split_calibration`` carves that set
out of the validation models (by training run, so checkpoints of one run never straddle the two parts);
the fit uses only the rest. With n exchangeable calibration residuals, the interval
``prediction +- (ceil((n + 1)(1 - alpha))-th smallest residual)`` covers a new model with probability
``ceil((n + 1)(1 - alpha)) / (n + 1)`` (>= 1 - alpha; exactly that for continuous residuals), and
infinite width is the only honest answer when that rank exceeds n.

Bounded properties (accuracies, robust accuracies, F1) have their predictions and intervals clipped to
their range: the true value lies in the range, so clipping never lowers coverage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from weightnet.data import ZooSample

CALIBRATION_FRACTION = 0.5  # share of the validation runs held out for conformal residuals only


def property_bounds(prop: str) -> tuple[float, float]:
    """The range a property's value lies in: [0, 1] for accuracies / robust accuracies / F1 and the
    fairness gaps, [-1, 1] for accuracy generalization gaps, (-inf, inf) for everything else."""
    if prop.startswith("gen_gap_"):
        return (-1.0, 1.0) if prop.endswith("accuracy") else (-math.inf, math.inf)
    if prop.endswith(("_accuracy", "_f1")) or prop.startswith(("pgd_", "autoattack_", "fairness_acc_", "fairness_dp_",
                                                              "fairness_eo_")):
        return (0.0, 1.0)
    if prop.startswith("corruption_") and prop != "corruption_error_ratio":
        return (0.0, 1.0)
    return (-math.inf, math.inf)


def clip_to_bounds(prop: str, values: np.ndarray) -> np.ndarray:
    lo, hi = property_bounds(prop)
    return np.clip(values, lo, hi) if math.isfinite(lo) or math.isfinite(hi) else values


def split_calibration(val: Sequence[ZooSample], seed: int, fraction: float = CALIBRATION_FRACTION
                      ) -> tuple[list[ZooSample], list[ZooSample]]:
    """(models the fit may use for early stopping / recalibration, calibration models), split by run.

    The calibration part gets ``floor(runs * fraction)`` runs chosen by ``seed``; with fewer than two
    runs everything stays with the fit (intervals are then infinite)."""
    runs = sorted({s.run_id for s in val})
    n_cal = int(math.floor(len(runs) * fraction)) if len(runs) >= 2 else 0
    order = torch.randperm(len(runs), generator=torch.Generator().manual_seed(int(seed) + 7919)).tolist()
    cal_runs = {runs[i] for i in order[:n_cal]}
    return [s for s in val if s.run_id not in cal_runs], [s for s in val if s.run_id in cal_runs]


def conformal_rank(n: int, alpha: float) -> int | None:
    """1-based rank of the residual that bounds a 1 - alpha interval from n residuals (None: no finite one)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    k = math.ceil((n + 1) * (1 - alpha) - 1e-12)  # the epsilon keeps (n+1)(1-alpha) = integer from rounding up
    return k if 1 <= k <= n else None


@dataclass
class Conformal:
    """Sorted absolute calibration residuals per property, and the intervals they give."""

    residuals: dict[str, np.ndarray] = field(default_factory=dict)
    calibration_ids: tuple[str, ...] = ()  # model ids of the calibration set (checked disjoint in tests)

    @classmethod
    def fit(cls, pred: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
            ids: Sequence[str] = ()) -> "Conformal":
        res = {}
        for prop, p in pred.items():
            y = np.asarray(labels[prop], dtype=np.float64)
            r = np.abs(clip_to_bounds(prop, np.asarray(p, dtype=np.float64)) - y)
            res[prop] = np.sort(r[np.isfinite(r)])
        return cls(res, tuple(ids))

    def radius(self, prop: str, alpha: float) -> float:
        r = self.residuals.get(prop)
        k = conformal_rank(0 if r is None else r.size, alpha)
        return math.inf if k is None else float(r[k - 1])

    def interval(self, prop: str, pred: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) around bounded ``pred``, clipped to the property's range."""
        q = self.radius(prop, alpha)
        lo, hi = property_bounds(prop)
        p = clip_to_bounds(prop, np.asarray(pred, dtype=np.float64))
        return np.maximum(p - q, lo), np.minimum(p + q, hi)

    def state(self) -> dict:
        return {"residuals": {k: torch.as_tensor(v) for k, v in self.residuals.items()},
                "calibration_ids": list(self.calibration_ids)}

    @classmethod
    def from_state(cls, d: Mapping) -> "Conformal":
        return cls({k: torch.as_tensor(v).double().numpy() for k, v in d.get("residuals", {}).items()},
                   tuple(d.get("calibration_ids", ())))


# --- linear recalibration (fitted on the fit's own validation part, never the calibration part) ---
def identity_calibration(n: int) -> torch.Tensor:
    """(n, 2) rows (a, b) = (1, 0): predictions left as they are."""
    return torch.tensor([[1.0, 0.0]] * n).reshape(n, 2)


def linear_calibration(pred: torch.Tensor, y: torch.Tensor, min_points: int = 5) -> torch.Tensor:
    """(N, P) predictions and labels -> (P, 2) rows (a, b) minimizing sum (a * pred + b - y)^2 per property,
    with a > 0 (a ranking is never reversed). Too few labelled points, no spread in the predictions or a
    non-positive slope leave that property as it is: (1, 0)."""
    out = identity_calibration(pred.shape[1])
    for j in range(pred.shape[1]):
        ok = ~torch.isnan(y[:, j])
        p, t = pred[ok, j].double(), y[ok, j].double()
        if p.numel() < min_points or float(p.std()) < 1e-12:
            continue
        a = float(((p - p.mean()) * (t - t.mean())).sum() / ((p - p.mean()) ** 2).sum())
        if a > 0:
            out[j] = torch.tensor([a, float(t.mean() - a * p.mean())])
    return out
