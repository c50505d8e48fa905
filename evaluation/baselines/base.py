"""Shared pieces of the baselines: target scaling, split-conformal intervals, a small torch fit loop."""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from core.errors import ZooError
from weightnet.conformal import Conformal, Novelty, clip_to_bounds, reference_subset, split_calibration
from weightnet.data import ZooSample


def target_matrix(samples: Sequence[ZooSample], targets: Sequence[str]) -> np.ndarray:
    """(N, T) float64 labels; a missing label is an error naming the model and property."""
    out = np.empty((len(samples), len(targets)), dtype=np.float64)
    for i, s in enumerate(samples):
        for j, t in enumerate(targets):
            if t not in s.labels:
                raise ZooError(f"model {s.model_id} has no label {t!r}")
            out[i, j] = s.labels[t]
    return out


class ConformalMixin:
    """Split-conformal intervals (weightnet.conformal) for a baseline.

    ``fit`` first calls ``self._split_calibration(val, seed)``, fits on the training models and the first
    part only (early stopping), then calls ``self._calibrate(calibration, train, seed)``: the residuals
    come from models the fit never saw. A baseline that defines ``_representation`` gets normalized
    intervals: residuals divided by the model's novelty scale (distance to the training models in that
    representation), so intervals widen for models unlike the zoo. ``predict`` implementations return
    ``self._bounded(...)`` so bounded properties stay inside their range.
    """

    targets: tuple[str, ...]
    conformal: Conformal
    novelty: Novelty | None = None

    def predict(self, samples: Sequence[ZooSample]) -> dict[str, np.ndarray]:  # pragma: no cover - overridden
        raise NotImplementedError

    @staticmethod
    def _split_calibration(val: Sequence[ZooSample], seed: int) -> tuple[list[ZooSample], list[ZooSample]]:
        return split_calibration(val, seed)

    @staticmethod
    def _bounded(pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {t: clip_to_bounds(t, v) for t, v in pred.items()}

    def _representation(self, samples: Sequence[ZooSample]) -> np.ndarray | None:
        """(N, D) the fitted model's view of each sample, for novelty scales; None: plain intervals."""
        return None

    def _predict_scaled(self, samples: Sequence[ZooSample]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Predictions and each sample's novelty scale (None without a novelty reference)."""
        nov = self.novelty
        return self.predict(samples), (nov.scale(self._representation(samples)) if nov is not None else None)

    def _calibrate(self, calibration: Sequence[ZooSample], train: Sequence[ZooSample] = (), seed: int = 0) -> None:
        self.conformal, self.novelty = Conformal(), None
        if len(train) >= 2:
            x = self._representation([train[i] for i in reference_subset(len(train), seed)])
            self.novelty = Novelty.fit(x, seed) if x is not None else None
        if not calibration:
            return
        y = target_matrix(calibration, self.targets)
        pred, scale = self._predict_scaled(calibration)
        self.conformal = Conformal.fit(pred, {t: y[:, j] for j, t in enumerate(self.targets)},
                                       [s.model_id for s in calibration], scale)

    def predict_with_intervals(self, samples: Sequence[ZooSample], alpha: float = 0.1
                               ) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
        pred, scale = self._predict_scaled(samples)
        return pred, getattr(self, "conformal", Conformal()).intervals(pred, alpha, scale)

    def predict_interval(self, samples: Sequence[ZooSample], alpha: float = 0.1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return self.predict_with_intervals(samples, alpha)[1]


class Standardizer:
    """Z-scoring fitted on the training rows: per column, or one scalar for all (``per_column=False``,
    for raw weights, whose relative scales carry information); constant columns keep scale 1."""

    def __init__(self, x: np.ndarray, per_column: bool = True) -> None:
        self.mean = x.mean(axis=0) if per_column else np.full(x.shape[1], x.mean())
        std = x.std(axis=0) if per_column else np.full(x.shape[1], x.std())
        self.std = np.where(std > 1e-12, std, 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean


def mlp(d_in: int, d_out: int, hidden: int = 64, depth: int = 2, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout)]
        d = hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, then restore the previous count.

    Baseline networks are tiny (a few thousand parameters, batches of 16-32): thread hand-offs cost more
    than they save, and on busy shared CPUs two spinning threads made the NFN fit 10x slower (measured).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_torch(model: nn.Module, batches: Callable[[str, torch.Generator], Iterable[tuple[object, torch.Tensor]]],
              forward: Callable[[nn.Module, object], torch.Tensor], seed: int, epochs: int = 200, lr: float = 1e-3,
              weight_decay: float = 1e-4, patience: int = 30, max_examples: int | None = None) -> nn.Module:
    """Adam on MSE (standardized targets) with early stopping on the validation loss.

    ``batches(split, generator)`` yields (inputs, y) for split "train" (shuffled) or "val"; the best
    validation state is restored at the end (the last state when there is no validation set).
    ``max_examples`` caps the training examples seen (the epoch in progress stops there and is
    validated), so the fit's cost stops growing with the zoo's size.
    """
    if max_examples is not None and max_examples < 1:
        raise ZooError(f"max_examples must be >= 1 (got {max_examples})")
    with one_thread():
        return _fit_torch(model, batches, forward, seed, epochs, lr, weight_decay, patience, max_examples)


def _fit_torch(model: nn.Module, batches, forward, seed: int, epochs: int, lr: float, weight_decay: float,
               patience: int, max_examples: int | None = None) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, waited, seen = math.inf, None, 0, 0
    for _ in range(epochs):
        model.train()
        for x, y in batches("train", g):
            opt.zero_grad()
            loss = torch.mean((forward(model, x) - y) ** 2)
            loss.backward()
            opt.step()
            seen += len(y)
            if max_examples is not None and seen >= max_examples:
                break
        model.eval()
        with torch.no_grad():
            losses = [torch.mean((forward(model, x) - y) ** 2).item() for x, y in batches("val", g)]
        if losses:
            val = float(np.mean(losses))
            if val < best - 1e-6:
                best, best_state, waited = val, copy.deepcopy(model.state_dict()), 0
            else:
                waited += 1
                if waited >= patience:
                    break
        if max_examples is not None and seen >= max_examples:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model
