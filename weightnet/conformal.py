"""Split-conformal intervals shared by WeightNet and every baseline (Lei et al. 2018, Vovk et al. 2005).

A valid split-conformal interval needs residuals on a *calibration set that the fit never saw*: not in
training, not in early stopping, not in the linear recalibration. ``split_calibration`` carves that set
out of the validation models (by training run, so checkpoints of one run never straddle the two parts);
the fit uses only the rest. With n exchangeable calibration residuals, the interval
``prediction +- (ceil((n + 1)(1 - alpha))-th smallest residual)`` covers a new model with probability
``ceil((n + 1)(1 - alpha)) / (n + 1)`` (>= 1 - alpha; exactly that for continuous residuals), and
infinite width is the only honest answer when that rank exceeds n.

Normalized scores (Papadopoulos et al. 2008; Lei et al. 2018, section 5.2): with a scale ``sigma(x)`` that
depends only on what the fit saw, the calibration scores ``|y - y_hat| / sigma(x)`` are as exchangeable
as the plain residuals, so ``y_hat +- q * sigma(x)`` keeps the same coverage guarantee, while the
interval now widens for a model far from the training models. ``Novelty`` gives that scale: the mean
distance to the k nearest training models in a predictor's own representation. Plain intervals hold
only for test models exchangeable with the calibration models; measured on the benchmark zoos, they
covered 0.61-0.77 of models from outside recipes and 0.63-0.86 of a held-out family (docs/results.md).

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
NOVELTY_K = 10  # neighbours averaged into a model's novelty scale
NOVELTY_REFERENCE = 2000  # training models kept as the reference set (a seeded subset): O(N * 2000) distances
NOVELTY_DIM = 128  # wider representations are projected to this many dimensions (seeded Gaussian projection)
NOVELTY_FLOOR = 0.1  # the scale never drops below this share of the reference set's median scale


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


def reference_subset(n: int, seed: int, size: int = NOVELTY_REFERENCE) -> list[int]:
    """Sorted indices of the (at most ``size``) training models a novelty reference is built from."""
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 104723))[:size].tolist())


def conformal_rank(n: int, alpha: float) -> int | None:
    """1-based rank of the residual that bounds a 1 - alpha interval from n residuals (None: no finite one)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    k = math.ceil((n + 1) * (1 - alpha) - 1e-12)  # the epsilon keeps (n+1)(1-alpha) = integer from rounding up
    return k if 1 <= k <= n else None


@dataclass
class Novelty:
    """A model's distance from the training models: the mean Euclidean distance to its ``k`` nearest
    reference (training) models, in a predictor's representation z-scored with the reference set's
    statistics (and projected to ``NOVELTY_DIM`` dimensions when wider). Floored at ``floor`` so a
    model that duplicates a training model still gets a positive scale."""

    reference: np.ndarray  # (M, D) z-scored (projected) reference representations
    mean: np.ndarray  # (D0,) and std (D0,): z-scoring of the raw representation
    std: np.ndarray
    projection: np.ndarray | None = None  # (D0, D) or None
    k: int = NOVELTY_K
    floor: float = 0.0

    @classmethod
    def fit(cls, x: np.ndarray, seed: int, k: int = NOVELTY_K, size: int = NOVELTY_REFERENCE) -> "Novelty":
        """From the (N, D0) representations of the training models; ``seed`` picks the reference subset
        and the projection."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"novelty needs an (N >= 2, D) representation, got shape {x.shape}")
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)  # any scale keeps the guarantee; NaN would not
        x = x[reference_subset(len(x), seed, size)]  # callers that pre-select with it pass through unchanged
        rng = np.random.default_rng(int(seed) + 104729)
        mean, std = x.mean(0), x.std(0)
        std = np.where(std > 1e-12, std, 1.0)
        proj = rng.normal(size=(x.shape[1], NOVELTY_DIM)) / math.sqrt(NOVELTY_DIM) if x.shape[1] > NOVELTY_DIM else None
        nov = cls(np.zeros((0, 0)), mean, std, proj, min(k, len(x) - 1))
        nov.reference = nov._project(x)
        d = nov._distances(nov.reference, exclude_self=True)  # leave-one-out: a reference is not its own neighbour
        nov.floor = max(NOVELTY_FLOOR * float(np.median(d)), 1e-12)  # identical references: still positive
        return nov

    def _project(self, x: np.ndarray) -> np.ndarray:
        z = (np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0) - self.mean) / self.std
        return z @ self.projection if self.projection is not None else z

    def _distances(self, z: np.ndarray, exclude_self: bool = False) -> np.ndarray:
        ref = torch.as_tensor(self.reference)
        out = []
        for i in range(0, len(z), 2048):  # (chunk, M) distance blocks stay small
            d = torch.cdist(torch.as_tensor(z[i:i + 2048]), ref)
            if exclude_self:
                d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = math.inf
            out.append(d.topk(self.k, dim=1, largest=False).values.mean(1))
        return torch.cat(out).numpy() if out else np.zeros(0)

    def scale(self, x: np.ndarray) -> np.ndarray:
        """(N,) novelty scales of (N, D0) representations, each >= the floor."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.size:
            raise ValueError(f"novelty expects representations of width {self.mean.size}, got shape {x.shape}")
        return np.maximum(self._distances(self._project(x)), self.floor)

    def state(self) -> dict:
        return {"reference": torch.as_tensor(self.reference), "mean": torch.as_tensor(self.mean),
                "std": torch.as_tensor(self.std), "k": self.k, "floor": self.floor,
                "projection": torch.as_tensor(self.projection) if self.projection is not None else torch.zeros(0)}

    @classmethod
    def from_state(cls, d: Mapping | None) -> "Novelty | None":
        if not d:
            return None
        proj = torch.as_tensor(d["projection"]).double().numpy()
        return cls(torch.as_tensor(d["reference"]).double().numpy(), torch.as_tensor(d["mean"]).double().numpy(),
                   torch.as_tensor(d["std"]).double().numpy(), proj if proj.size else None, int(d["k"]), float(d["floor"]))


@dataclass
class Conformal:
    """Sorted calibration scores per property, and the intervals they give. Scores are absolute
    residuals, or residuals divided by each calibration model's novelty scale (``normalized``): then
    every interval needs the test model's scale too."""

    residuals: dict[str, np.ndarray] = field(default_factory=dict)
    calibration_ids: tuple[str, ...] = ()  # model ids of the calibration set (checked disjoint in tests)
    normalized: bool = False

    @classmethod
    def fit(cls, pred: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
            ids: Sequence[str] = (), scale: np.ndarray | None = None) -> "Conformal":
        res = {}
        for prop, p in pred.items():
            y = np.asarray(labels[prop], dtype=np.float64)
            r = np.abs(clip_to_bounds(prop, np.asarray(p, dtype=np.float64)) - y)
            if scale is not None:
                r = r / _check_scale(scale, r.size)
            res[prop] = np.sort(r[np.isfinite(r)])
        return cls(res, tuple(ids), scale is not None)

    def radius(self, prop: str, alpha: float) -> float:
        """The score quantile: the half-width itself, or (normalized) the half-width per unit of scale."""
        r = self.residuals.get(prop)
        k = conformal_rank(0 if r is None else r.size, alpha)
        return math.inf if k is None else float(r[k - 1])

    def interval(self, prop: str, pred: np.ndarray, alpha: float,
                 scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) around bounded ``pred``, clipped to the property's range; ``scale`` is each model's
        novelty scale, required exactly when the scores are normalized."""
        if self.normalized != (scale is not None):
            raise ValueError("normalized conformal scores need each model's novelty scale" if self.normalized
                             else "these conformal scores are not normalized: pass no scale")
        p = clip_to_bounds(prop, np.asarray(pred, dtype=np.float64))
        q = self.radius(prop, alpha)
        half = q * _check_scale(scale, p.size) if scale is not None and math.isfinite(q) else q
        lo, hi = property_bounds(prop)
        return np.maximum(p - half, lo), np.minimum(p + half, hi)

    def intervals(self, pred: Mapping[str, np.ndarray], alpha: float, scale: np.ndarray | None
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``interval`` for every property; ``scale`` is used only when the scores are normalized (older
        checkpoints and predictors without a novelty reference hold plain residuals)."""
        scale = scale if self.normalized else None
        return {t: self.interval(t, p, alpha, scale) for t, p in pred.items()}

    def state(self) -> dict:
        return {"residuals": {k: torch.as_tensor(v) for k, v in self.residuals.items()},
                "calibration_ids": list(self.calibration_ids), "normalized": self.normalized}

    @classmethod
    def from_state(cls, d: Mapping) -> "Conformal":
        return cls({k: torch.as_tensor(v).double().numpy() for k, v in d.get("residuals", {}).items()},
                   tuple(d.get("calibration_ids", ())), bool(d.get("normalized", False)))


def _check_scale(scale: np.ndarray, n: int) -> np.ndarray:
    s = np.asarray(scale, dtype=np.float64).reshape(-1)
    if s.size != n or not np.all(s > 0):
        raise ValueError(f"novelty scales must be {n} positive numbers, got {s.size} (min {s.min() if s.size else None})")
    return s


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
