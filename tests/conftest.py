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


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """ONE real Prefect server (subprocess, 127.0.0.1, free port, Prefect home in tmp) for the whole
    session; this process's Prefect client talks to it, results persist under the tmp home."""
    from deploy.server import prefect_env, start_server, stop

    home = tmp_path_factory.mktemp("prefect-home")
    server = start_server(home, fast=True, timeout=180)
    env = {k: v for k, v in prefect_env(home, server.api_url, fast=True).items() if k.startswith("PREFECT_")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from prefect.settings import (PREFECT_API_URL, PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH,
                                  PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings)

    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_HOME: str(home),
                                         PREFECT_LOCAL_STORAGE_PATH: str(home / "storage"),
                                         PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}):
            yield server, home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop(server.proc)


# --- labeling (issue 4): tiny trained digits models, shared by the labeling tests -----------------
def train_tiny_digits(arch: str, seed: int, epochs: int = 60, **knobs):
    """A small digits model trained full-batch with Adam (a second or so); returns (ModelRecord, state)."""
    from core.hashing import stable_hash
    from storage.writes import ModelRecord
    from zoo.archs import build
    from zoo.datasets import load_dataset

    splits = load_dataset("digits", 0)
    config = {"input_shape": [1, 8, 8], "n_classes": 10, **knobs}
    torch.manual_seed(seed)  # test-only: module init draws from the global RNG
    built = build(arch, config)
    model = built.module
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny full-batch steps: one thread is fastest, and far faster on a loaded machine
    try:
        for _ in range(epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(splits.x_train), splits.y_train).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    train_config = {"epochs": epochs, "lr": 0.02, "data_seed": 0}
    mid = stable_hash({"arch": arch, "config": config, "train": train_config, "seed": seed})
    rec = ModelRecord(mid, f"digits-{arch}", arch, config, "digits", built.spec, train_config, seed)
    return rec, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_digits_models():
    """3 CNNs (two of them trained longer) and 2 MLPs on digits."""
    return [train_tiny_digits("cnn", 0, channels=6, n_layers=2), train_tiny_digits("cnn", 1, channels=6, n_layers=2),
            train_tiny_digits("cnn", 2, epochs=15, channels=6, n_layers=2),
            train_tiny_digits("mlp", 0, width=16, depth=1), train_tiny_digits("mlp", 1, width=16, depth=1)]


# --- dataset cache (added by the datasets tests) ----------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _zoo_cache(tmp_path_factory):
    """Split files and generated data go to a cache shared by test sessions, never ~/.cache."""
    if not os.environ.get("ZOO_CACHE"):
        os.environ["ZOO_CACHE"] = str(tmp_path_factory.getbasetemp().parent / "zoo-cache")
    yield


class Proc:
    """What a `zoo` run left behind: exit code, stdout, stderr."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def zoo_cli(capsys, monkeypatch):
    """zoo(*args, lake=...) runs the real entry point (cli.main.main) in this process: same error
    handling and exit codes as the installed command, without a new interpreter per case."""
    import sys

    from cli.main import main

    def run(*args: str, lake=None) -> Proc:
        monkeypatch.setenv("ZOO_LOCK_TIMEOUT", "20")
        if lake is not None:
            monkeypatch.setenv("ZOO_LAKE", str(lake))
        monkeypatch.setattr(sys, "argv", ["zoo", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return Proc(code, out.out, out.err)

    return run


@pytest.fixture
def torch_one_thread():
    """Tiny models train faster on one thread (no thread sync per op, no fight over shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def filled(lake_dir, make_models):
    """A closed lake holding two models and a tag ``v1`` (so the CLI can open it)."""
    from storage.lake import Lake
    from storage.writes import write_models

    with Lake.open(lake_dir, create=True) as lk:
        write_models(lk, make_models(2), "two models")
        lk.tag("v1")
    return lake_dir
