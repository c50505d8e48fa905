"""The interface every property predictor shares (WeightNet and each baseline), so evaluation can
train and compare them on identical splits."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from weightnet.data import ZooSample


@runtime_checkable
class Predictor(Protocol):
    name: str

    def fit(self, train: Sequence[ZooSample], val: Sequence[ZooSample], targets: Sequence[str], seed: int) -> None:
        """Learn to predict ``targets`` (label names) from weights; ``val`` is for early stopping / calibration."""

    def predict(self, samples: Sequence[ZooSample]) -> dict[str, np.ndarray]:
        """Point predictions: property -> array of shape (len(samples),)."""

    def predict_interval(self, samples: Sequence[ZooSample], alpha: float = 0.1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(lower, upper) per property, split-conformal with nominal coverage 1 - alpha (weightnet.conformal)."""

