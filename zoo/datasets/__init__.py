"""Dataset registry. ``load_dataset(name, seed)`` returns fixed, seeded train/val/test splits.

Each entry is a function ``(seed: int, root: Path | None) -> Splits`` registered with
``@DATASETS.register("name")``. Images are float32 in [0, 1], shape (N, C, H, W); sequences
(N, C, L); tabular (N, F) standardized. Labels are int64.

Splits are stored: the first load of (dataset, seed) writes the split indices to
``<cache>/splits/<dataset>-seed<seed>.npz`` with a checksum and a fingerprint of the data, and every
later load (any process, any machine sharing the cache) reads them back, so every label and every
WeightNet split refers to the same examples. The cache is ``$ZOO_CACHE``, else
``~/.cache/weightnet-zoo``; downloadable datasets live under ``root``, else ``$ZOO_DATA``, else
``<cache>/data``.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pathlib
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from core import settings
from core.errors import ZooError
from core.registry import Registry

DATASETS: Registry = Registry("dataset")


class SplitMismatch(ZooError):
    """A stored split file is corrupt, or was made for different data than what is loaded now."""


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


def cache_dir() -> pathlib.Path:
    return settings.cache_root()


def data_root(root: pathlib.Path | None) -> pathlib.Path:
    return pathlib.Path(root) if root else settings.data_root()


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


def fingerprint(*arrays: torch.Tensor | np.ndarray) -> str:
    """sha256 of the arrays' shapes and bytes: identifies the exact examples a split refers to."""
    h = hashlib.sha256()
    for a in arrays:
        a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(repr((a.shape, str(a.dtype))).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _checksum(parts: Mapping[str, np.ndarray], data: str) -> str:
    h = hashlib.sha256(data.encode())
    for k in ("train", "val", "test"):
        h.update(np.ascontiguousarray(parts[k], dtype=np.int64).tobytes())
    return h.hexdigest()


def stored_split(name: str, seed: int, n: int, data: str, n_test: int = 0,
                 fractions: tuple[float, float] = (0.6, 0.2)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, val, test) indices of (dataset ``name``, ``seed``), read from the split file if it exists.

    ``data`` is the data's ``fingerprint``. With ``n_test`` > 0 the last ``n_test`` examples are the
    dataset's official test set and the rest is split train/val by ``fractions[1]`` relative to the
    train+val share; otherwise all ``n`` examples are split by ``fractions``.
    """
    path = cache_dir() / "splits" / f"{name}-seed{seed}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                parts = {k: f[k] for k in ("train", "val", "test")}
                stored_data, checksum = str(f["data"]), str(f["checksum"])
        except (OSError, ValueError, KeyError) as e:
            raise SplitMismatch(f"split file {path} is unreadable ({e}); delete it to re-split") from None
        if _checksum(parts, stored_data) != checksum:
            raise SplitMismatch(f"split file {path} fails its checksum; delete it to re-split")
        if stored_data != data:
            raise SplitMismatch(f"dataset {name!r} differs from the data split file {path} was made for "
                                "(labels made on the old split would no longer match); delete it to re-split")
        return tuple(torch.from_numpy(parts[k]).long() for k in ("train", "val", "test"))  # type: ignore[return-value]
    if n_test:
        n_fit = n - n_test
        val_share = fractions[1] / (fractions[0] + fractions[1])
        tr, va, _ = seeded_split(n_fit, seed, (1.0 - val_share, val_share))
        te = torch.arange(n_fit, n)
    else:
        tr, va, te = seeded_split(n, seed, fractions)
    parts = {"train": tr.numpy(), "val": va.numpy(), "test": te.numpy()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **parts, data=np.array(data), checksum=np.array(_checksum(parts, data)))
    os.replace(tmp, path)  # atomic: concurrent first loads write the same content
    return tr, va, te


def make_splits(info: DatasetInfo, x: torch.Tensor, y: torch.Tensor, seed: int, n_test: int = 0,
                sensitive: Mapping[str, torch.Tensor] | None = None) -> Splits:
    """Cut (x, y[, sensitive features]) into the stored splits of (info.name, seed)."""
    tr, va, te = stored_split(info.name, seed, len(y), fingerprint(x, y), n_test)
    sens = {split: {k: v[idx] for k, v in (sensitive or {}).items()}
            for split, idx in (("train", tr), ("val", va), ("test", te))} if sensitive else {}
    return Splits(info, x[tr], y[tr], x[va], y[va], x[te], y[te], sensitive=sens, seed=seed)


from zoo.datasets import downloadable, embedded  # noqa: E402,F401  (fill the registry)
