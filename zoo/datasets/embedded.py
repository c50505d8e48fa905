"""Datasets that need no network."""
from __future__ import annotations

import pathlib

import torch

from zoo.datasets import DATASETS, DatasetInfo, Splits, seeded_split


@DATASETS.register("digits")
def digits(seed: int, root: pathlib.Path | None) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, va, te = seeded_split(len(y), seed)
    info = DatasetInfo("digits", "image", (1, 8, 8), 10, (0.0, 1.0))
    return Splits(info, x[tr], y[tr], x[va], y[va], x[te], y[te], seed=seed)
