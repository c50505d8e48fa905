"""Dataset registry. ``load_dataset(name, seed)`` returns fixed, seeded train/val/test splits.

Each entry is a function ``(seed: int, root: Path | None) -> Splits`` registered with
``@DATASETS.register("name")``. Images are float32 in [0, 1], shape (N, C, H, W); sequences
(N, C, L); tabular (N, F) standardized. Labels are int64.
"""
from __future__ import annotations

import functools
import pathlib
from dataclasses import dataclass, field
from typing import Mapping

import torch

from core.registry import Registry

DATASETS: Registry = Registry("dataset")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str  # image | sequence | tabular
    input_shape: tuple[int, ...]  # one example, e.g. (1, 8, 8)
    n_classes: int
    value_range: tuple[float, float]  # range of the inputs models see ([0, 1] for images)
    sensitive: tuple[str, ...] = ()  # names of sensitive features (fairness), if any
    eps_scale: float = 1.0  # how adversarial eps maps onto this input scale (1 for [0,1] images)


@dataclass(frozen=True)
class Splits:
    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    # sensitive[split][feature] -> int64 tensor of group ids, aligned with that split's examples
    sensitive: Mapping[str, Mapping[str, torch.Tensor]] = field(default_factory=dict)
    seed: int = 0

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


@functools.lru_cache(maxsize=16)
def _cached(name: str, seed: int, root: str | None) -> Splits:
    return DATASETS.get(name)(seed, pathlib.Path(root) if root else None)


def load_dataset(name: str, seed: int = 0, root: str | pathlib.Path | None = None) -> Splits:
    """The seeded splits of a registered dataset (cached per process). Unknown names raise UnknownEntry."""
    DATASETS.get(name)  # clear error for unknown names before anything else
    return _cached(name, int(seed), str(root) if root else None)


def seeded_split(n: int, seed: int, fractions: tuple[float, float] = (0.6, 0.2)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index tensors (train, val, test) of a seeded permutation of range(n)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    a, b = int(n * fractions[0]), int(n * (fractions[0] + fractions[1]))
    return perm[:a], perm[a:b], perm[b:]


from zoo.datasets import embedded  # noqa: E402,F401  (fills the registry)
