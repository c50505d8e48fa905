"""The object-store data path for real: a local S3-compatible server (moto's server mode) holds the Parquet
files of a lake whose catalog is SQLite. A zoo written with ZOO_DATA_PATH=s3://... reads back bit-exactly,
time-travels, and two writer processes at once both land every model."""
from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys
import time

import pytest
import torch

from core.net import free_port
from storage.lake import Lake
from storage.writes import Label, read_models, read_weights, write_labels, write_models

ROOT = pathlib.Path(__file__).resolve().parent.parent
moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
boto3 = pytest.importorskip("boto3")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; yields (endpoint, boto3 client)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="zoo-key", aws_secret_access_key="zoo-secret")
    client.create_bucket(Bucket="zoo")
    try:
        yield f"127.0.0.1:{port}", client
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch, request) -> str:
    """ZOO_DATA_PATH on the server (a fresh prefix per test) and the ZOO_S3_* settings; returns the prefix."""
    endpoint, _ = s3
    prefix = f"lakes/{request.node.name}"
    env = {"ZOO_DATA_PATH": f"s3://zoo/{prefix}/", "ZOO_S3_KEY_ID": "zoo-key", "ZOO_S3_SECRET": "zoo-secret",
           "ZOO_S3_REGION": "us-east-1", "ZOO_S3_ENDPOINT": endpoint, "ZOO_S3_URL_STYLE": "path",
           "ZOO_S3_USE_SSL": "false"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return prefix


def assert_bit_exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8)), k


def test_zoo_on_s3_reads_back_bit_exactly_and_time_travels(tmp_path, s3, s3_env, make_models) -> None:
    _, client = s3
    location = f"sqlite:{tmp_path / 'lake'}"
    first = make_models(3, seed=1) + make_models(2, seed=2, prefix="h", dtype=torch.float16)
    second = make_models(2, seed=3, dtype=torch.bfloat16)
    with Lake.open(location, create=True) as lk:
        assert lk.config.object_store and lk.data_path == f"s3://zoo/{s3_env}/"
        write_models(lk, first, "first")
        s1 = lk.current_snapshot()
        lk.tag("v1")
        write_models(lk, second, "second")
        write_labels(lk, [Label("m1-00000", "test_accuracy", 0.5, "acc", 1)], "a label")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="zoo", Prefix=s3_env).get("Contents", [])]
    assert any(k.endswith(".parquet") for k in keys)  # the data really went to the server
    assert not list((tmp_path / "lake").rglob("*.parquet"))  # and not to the local folder
    with Lake.open(location, read_only=True) as lk:
        got = read_weights(lk, [r.model_id for r, _ in first + second])
        for rec, state in first + second:
            assert_bit_exact(state, got[rec.model_id])
        assert lk.fetch("SELECT count(*) FROM labels")[0][0] == 1
    for at in (s1, "v1"):
        with Lake.open(location, at=at) as old:
            assert sorted(r.model_id for r in read_models(old)) == sorted(r.model_id for r, _ in first)
            assert old.fetch("SELECT count(*) FROM labels")[0][0] == 0
            assert_bit_exact(first[0][1], read_weights(old, [first[0][0].model_id])[first[0][0].model_id])


WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from storage.lake import Lake
from storage.writes import ModelRecord, write_models
from tests.conftest import _tiny_spec
name, location = sys.argv[1], sys.argv[2]
spec = _tiny_spec()
g = torch.Generator().manual_seed(sum(map(ord, name)))
import pathlib, time
with Lake.open(location, lock_timeout=60) as lk:
    pathlib.Path(sys.argv[3], name + ".ready").touch()
    while not pathlib.Path(sys.argv[3], "go").exists():  # both writers start writing together
        time.sleep(0.01)
    for b in range(3):
        batch = []
        for i in range(2):
            state = {{p.name: torch.randn(p.shape, generator=g) for p in spec.params}}
            rec = ModelRecord(model_id=f"{{name}}-{{b}}-{{i}}", family="tiny", arch="mlp",
                              arch_config={{"input_shape": [4], "n_classes": 2, "width": 3}}, dataset="none", spec=spec)
            batch.append((rec, state))
        write_models(lk, batch, f"{{name}} batch {{b}}")
        torch.save({{r.model_id: s for r, s in batch}}, f"{{sys.argv[3]}}/{{name}}-{{b}}.pt")
print("done", name)
"""


def test_two_writers_at_once_on_s3_with_a_sqlite_catalog(tmp_path, s3_env) -> None:
    location = f"sqlite:{tmp_path / 'lake'}"
    with Lake.open(location, create=True):
        pass  # the schema exists before the writers race
    script = WRITER.format(root=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", script, name, location, str(tmp_path)], env=os.environ.copy(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    deadline = time.monotonic() + 240
    while not all((tmp_path / f"{n}.ready").exists() for n in "ab") and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    with Lake.open(location, read_only=True) as lk:
        ids = sorted(r.model_id for r in read_models(lk))
        assert ids == sorted(f"{n}-{b}-{i}" for n in "ab" for b in range(3) for i in range(2))
        got = read_weights(lk, ids)
        messages = [s["message"] for s in lk.snapshots()]
    assert sum((m or "").startswith(("a batch", "b batch")) for m in messages) == 6
    for f in tmp_path.glob("*.pt"):
        for mid, state in torch.load(f, weights_only=True).items():
            assert_bit_exact(state, got[mid])
