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
