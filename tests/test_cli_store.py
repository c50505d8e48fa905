"""The store commands (issue 2 §3): init, sql (formats, --out, --at, read-only), snapshots, tag, show, export."""
from __future__ import annotations

import csv
import io
import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from core.errors import LakeError
from storage.files import state_from_safetensors
from storage.lake import Lake
from storage.writes import Label, read_weights, write_labels, write_models
from cli.main import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=True)
    return result


def assert_ok(result) -> str:
    assert result.exit_code == 0 and result.exception is None, (result.output, result.exception)
    return result.output


@pytest.fixture
def filled(lake_dir, make_models, monkeypatch):
    monkeypatch.setenv("ZOO_LAKE", str(lake_dir))
    with Lake.open(lake_dir, create=True) as lk:
        write_models(lk, make_models(3), "three models")
        lk.tag("v1")
        write_models(lk, make_models(2, seed=5), "two more")
        write_labels(lk, [Label("m0-00000", "test_accuracy", 0.875, "acc", 1)], "a label")
    return lake_dir


def test_init_creates_a_lake_at_the_given_location(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_LAKE", raising=False)
    out = assert_ok(invoke("init", str(tmp_path / "new")))
    assert (tmp_path / "new" / "zoo.ducklake").is_file() and "lake ready" in out
    assert_ok(invoke("init", "sqlite:" + str(tmp_path / "lite")))
    assert (tmp_path / "lite" / "zoo.sqlite").is_file()
    monkeypatch.chdir(tmp_path)
    assert_ok(invoke("init"))  # the project default ./lake
    assert (tmp_path / "lake" / "zoo.ducklake").is_file()


def test_sql_csv_json_table(filled):
    q = "SELECT model_id, seed FROM models ORDER BY model_id"
    rows = list(csv.DictReader(io.StringIO(assert_ok(invoke("sql", q, "--format", "csv")))))
    assert [r["model_id"] for r in rows] == ["m0-00000", "m0-00001", "m0-00002", "m5-00000", "m5-00001"]
    data = json.loads(assert_ok(invoke("sql", q, "--format", "json")))
    assert [d["seed"] for d in data] == [0, 0, 0, 5, 5]
    table = assert_ok(invoke("sql", "SELECT model_id, property, value FROM labels"))
    assert "m0-00000" in table and "0.875" in table


def test_sql_at_tag_and_snapshot(filled):
    q = "SELECT count(*) AS n FROM models"
    assert json.loads(assert_ok(invoke("sql", q, "--at", "v1", "-f", "json"))) == [{"n": 3}]
    with Lake.open(filled, read_only=True) as lk:
        sid = lk.resolve("v1")
    assert json.loads(assert_ok(invoke("sql", q, "--at", str(sid), "-f", "json"))) == [{"n": 3}]
    assert json.loads(assert_ok(invoke("sql", q, "-f", "json"))) == [{"n": 5}]


def test_sql_out_files(filled, tmp_path):
    q = "SELECT model_id, n_params FROM models ORDER BY model_id"
    assert_ok(invoke("sql", q, "--format", "parquet", "--out", str(tmp_path / "m.parquet")))
    t = pq.read_table(tmp_path / "m.parquet")
    assert t.num_rows == 5 and t.column_names == ["model_id", "n_params"] and set(t["n_params"].to_pylist()) == {23}
    assert_ok(invoke("sql", q, "--format", "csv", "--out", str(tmp_path / "m.csv")))
    assert (tmp_path / "m.csv").read_text().count("\n") == 6
    assert_ok(invoke("sql", q, "--format", "json", "--out", str(tmp_path / "m.json")))
    assert len(json.loads((tmp_path / "m.json").read_text())) == 5


def test_sql_bad_format_and_parquet_without_out(filled):
    r = invoke("sql", "SELECT 1", "--format", "xml")
    assert isinstance(r.exception, LakeError) and "xml" in str(r.exception)
    r = invoke("sql", "SELECT 1", "--format", "parquet")
    assert isinstance(r.exception, LakeError) and "--out" in str(r.exception)


def test_sql_is_read_only_unless_write(filled, fingerprint):
    before = fingerprint(filled)
    r = invoke("sql", "DELETE FROM labels")
    assert isinstance(r.exception, LakeError) and "DELETE" in str(r.exception)
    assert fingerprint(filled) == before
    r = invoke("sql", "--write", "--at", "v1", "DELETE FROM labels")
    assert isinstance(r.exception, LakeError)
    assert_ok(invoke("sql", "--write", "DELETE FROM labels"))
    after = fingerprint(filled)
    assert len(after[0]) == len(before[0]) + 1 and dict(after[1])["labels"] == ()


def test_snapshots_lists_messages_and_tags(filled):
    out = assert_ok(invoke("snapshots"))
    assert "three models" in out and "two more" in out and "v1" in out


def test_tag_names_current_snapshot(filled):
    out = assert_ok(invoke("tag", "release"))
    with Lake.open(filled, read_only=True) as lk:
        sid = lk.resolve("release")
        assert f"snapshot {sid}" in out
        assert lk.fetch("SELECT count(*) FROM models")[0][0] == 5
    assert_ok(invoke("tag", "old", "--at", "v1"))
    with Lake.open(filled, read_only=True) as lk:
        assert lk.resolve("old") == lk.resolve("v1")


def test_tag_name_that_is_a_number_is_refused(filled):
    r = invoke("tag", "12")
    assert isinstance(r.exception, LakeError) and "'12'" in str(r.exception)


def test_show_model(filled):
    out = assert_ok(invoke("show", "m0-00000"))
    assert "0.weight" in out and "3x4" in out and "test_accuracy" in out and "0.875" in out
    r = invoke("show", "missing-model")
    assert isinstance(r.exception, LakeError) and "missing-model" in str(r.exception)


def test_export_reloads_bit_exactly(filled, tmp_path):
    out = assert_ok(invoke("export", str(tmp_path / "exp"), "--at", "v1"))
    assert "exported 3 models" in out
    dirs = sorted(p.name for p in (tmp_path / "exp").iterdir())
    assert dirs == ["m0-00000", "m0-00001", "m0-00002"]
    with Lake.open(filled, read_only=True) as lk:
        stored = read_weights(lk, dirs)
        sid = lk.resolve("v1")
    for mid in dirs:
        loaded = state_from_safetensors(tmp_path / "exp" / mid / "model.safetensors")
        assert list(loaded) == list(stored[mid])
        for k, v in stored[mid].items():
            assert torch_bits(loaded[k]) == torch_bits(v)
        cfg = json.loads((tmp_path / "exp" / mid / "config.json").read_text())
        assert cfg["model_id"] == mid and cfg["arch"] == "mlp" and cfg["snapshot_id"] == sid
        assert cfg["labels"] == {}  # the label came after v1
    assert_ok(invoke("export", str(tmp_path / "all"), "--where", "seed = 0"))
    cfg = json.loads((tmp_path / "all" / "m0-00000" / "config.json").read_text())
    assert cfg["labels"] == {"test_accuracy": 0.875}
    assert len(list((tmp_path / "all").iterdir())) == 3


def torch_bits(t) -> bytes:
    return t.contiguous().reshape(-1).view(__import__("torch").uint8).numpy().tobytes()
