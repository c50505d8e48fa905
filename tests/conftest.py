"""Shared fixtures. Every test gets its own lake; nothing touches ./lake or the user's Prefect home."""
from __future__ import annotations

import os
import pathlib

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def lake_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A folder for a fresh DuckDB-catalog lake (not created yet)."""
    return tmp_path / "lake"


@pytest.fixture
def lake(lake_dir: pathlib.Path):
    from storage.lake import Lake

    lk = Lake.open(lake_dir, create=True)
    yield lk
    lk.close()


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --- storage helpers (added by the store tests) ---------------------------------------------------
def _tiny_spec(width: int = 3):
    """A 2-layer MLP spec (4 -> width -> 2) with its hidden units as one permutation group."""
    from core.spec import ParamSpec, PermGroup, WeightSpec

    return WeightSpec(
        (ParamSpec("0.weight", (width, 4), "linear", "weight", 0, ("h", None)),
         ParamSpec("0.bias", (width,), "linear", "bias", 0, ("h",)),
         ParamSpec("1.weight", (2, width), "linear", "weight", 1, (None, "h")),
         ParamSpec("1.bias", (2,), "linear", "bias", 1, (None,))),
        (PermGroup("h", width),))


@pytest.fixture
def make_models():
    """make_models(n, seed=0, prefix="m", dtype=float32) -> [(ModelRecord, state dict)] of a tiny MLP."""
    from storage.writes import ModelRecord

    def make(n: int, seed: int = 0, prefix: str = "m", dtype: torch.dtype = torch.float32) -> list:
        spec = _tiny_spec()
        g = torch.Generator().manual_seed(seed)
        out = []
        for i in range(n):
            state = {p.name: torch.randn(p.shape, generator=g).to(dtype) for p in spec.params}
            rec = ModelRecord(model_id=f"{prefix}{seed}-{i:05d}", family="tiny", arch="mlp",
                              arch_config={"input_shape": [4], "n_classes": 2, "width": 3}, dataset="none",
                              spec=spec, seed=seed)
            out.append((rec, state))
        return out

    return make


def lake_fingerprint(location) -> tuple:
    """(snapshot ids, tags, every table's rows sorted): equal fingerprints = the lake is unchanged."""
    from storage.lake import Lake
    from storage.schema import TABLES

    with Lake.open(location, read_only=True, lock_timeout=30) as lk:
        snaps = tuple((s["snapshot_id"], s["message"]) for s in lk.snapshots())
        tables = tuple((name, tuple(lk.fetch(f"SELECT * FROM lake.main.{name} ORDER BY ALL"))) for name in TABLES)
    return snaps, tables


@pytest.fixture
def fingerprint():
    """The ``lake_fingerprint`` function, as a fixture."""
    return lake_fingerprint
