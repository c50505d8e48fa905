"""Bad input to the store (issue 2 §4): one test per case. Each ends in a one-line error naming the
culprit (a non-zero exit from the CLI) and leaves the lake exactly as it was."""
from __future__ import annotations

import json
import struct
import subprocess

import pytest
import torch

from core.errors import BadWeights, LakeError
from storage.files import FileLimits, state_from_safetensors, state_to_safetensors
from storage.lake import Lake
from storage.writes import write_models


@pytest.fixture
def zoo(zoo_cli):
    return zoo_cli


def assert_one_line_error(proc: subprocess.CompletedProcess, *culprits: str) -> None:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for c in culprits:
        assert c in lines[0], (c, lines[0])


def assert_refused_file(filled, fingerprint, path, make_models, *culprits: str) -> None:
    """Ingesting ``path`` raises one-line BadWeights naming the file; the lake is unchanged."""
    before = fingerprint(filled)
    with pytest.raises(BadWeights) as err:
        state = state_from_safetensors(path)
        rec, _ = make_models(1, seed=9)[0]
        with Lake.open(filled) as lk:
            write_models(lk, [(rec, state)], "ingest")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    for c in culprits:
        assert c in msg, (c, msg)
    assert fingerprint(filled) == before


def good_file(tmp_path, make_models) -> tuple:
    _, state = make_models(1, seed=9)[0]
    path = tmp_path / "good.safetensors"
    state_to_safetensors(state, path)
    return path, path.read_bytes()


def test_truncated_safetensors(filled, fingerprint, make_models, tmp_path):
    path, raw = good_file(tmp_path, make_models)
    path.write_bytes(raw[:-7])
    assert_refused_file(filled, fingerprint, path, make_models, "truncated")


def test_corrupt_safetensors_header(filled, fingerprint, make_models, tmp_path):
    path, raw = good_file(tmp_path, make_models)
    (n,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(raw[:8] + b"{" + b"\x00" * (n - 1) + raw[8 + n:])
    assert_refused_file(filled, fingerprint, path, make_models, "corrupt")


def test_safetensors_with_absurd_declared_shape(filled, fingerprint, make_models, tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 16]}}).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    assert_refused_file(filled, fingerprint, path, make_models, "'w'", "limit")


def test_safetensors_header_over_limit(tmp_path):
    path = tmp_path / "big-header.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(BadWeights, match="header of 1099511627776 bytes exceeds"):
        state_from_safetensors(path)
    with pytest.raises(BadWeights, match="exceeds the limit of 10"):
        state_from_safetensors(path, FileLimits(max_header_bytes=10))


def test_nan_weights(filled, fingerprint, make_models, tmp_path):
    _, state = make_models(1, seed=9)[0]
    state["0.weight"][1, 2] = float("nan")
    path = tmp_path / "nan.safetensors"
    state_to_safetensors(state, path)
    before = fingerprint(filled)
    rec, _ = make_models(1, seed=9)[0]
    with Lake.open(filled) as lk, pytest.raises(BadWeights, match=rf"{rec.model_id}.*'0.weight'.*NaN or Inf"):
        write_models(lk, [(rec, state_from_safetensors(path))], "nan")
    assert fingerprint(filled) == before


def test_inf_weights(filled, fingerprint, make_models):
    rec, state = make_models(1, seed=9, dtype=torch.bfloat16)[0]
    state["1.bias"][0] = float("-inf")
    before = fingerprint(filled)
    with Lake.open(filled) as lk, pytest.raises(BadWeights, match=r"'1.bias'.*NaN or Inf"):
        write_models(lk, [(rec, state)], "inf")
    assert fingerprint(filled) == before


def test_shape_disagrees_with_architecture(filled, fingerprint, make_models):
    rec, state = make_models(1, seed=9)[0]
    state["0.weight"] = torch.zeros(3, 5)
    before = fingerprint(filled)
    with Lake.open(filled) as lk, pytest.raises(BadWeights, match=r"'0.weight' has shape \(3, 5\).*expects \(3, 4\)"):
        write_models(lk, [(rec, state)], "shape")
    assert fingerprint(filled) == before


def test_bad_sql(filled, fingerprint, zoo):
    before = fingerprint(filled)
    proc = zoo("sql", "SELEKT * FROM models", lake=filled)
    assert_one_line_error(proc, "SQL error", "SELEKT")
    proc = zoo("sql", "SELECT nope FROM models", lake=filled)
    assert_one_line_error(proc, "SQL error", "nope")
    assert fingerprint(filled) == before


def test_unknown_snapshot(filled, fingerprint, zoo):
    before = fingerprint(filled)
    assert_one_line_error(zoo("sql", "SELECT 1", "--at", "999", lake=filled), "unknown snapshot 999")
    assert fingerprint(filled) == before


def test_unknown_tag(filled, fingerprint, zoo):
    before = fingerprint(filled)
    assert_one_line_error(zoo("sql", "SELECT 1", "--at", "no-such-tag", lake=filled), "no-such-tag")
    assert_one_line_error(zoo("tag", "v2", "--at", "no-such-tag", lake=filled), "no-such-tag")
    assert fingerprint(filled) == before


def test_path_that_is_not_a_lake(tmp_path, zoo):
    plain = tmp_path / "just-a-folder"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    assert_one_line_error(zoo("sql", "SELECT 1", lake=plain), str(plain), "not a zoo lake")
    assert_one_line_error(zoo("snapshots", lake=plain / "notes.txt"), "notes.txt", "not a zoo lake")
    assert sorted(p.name for p in plain.iterdir()) == ["notes.txt"]  # nothing created there


def test_catalog_file_that_is_not_a_catalog(tmp_path, zoo):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "zoo.ducklake").write_bytes(b"this is not a database" * 100)
    before = (fake / "zoo.ducklake").read_bytes()
    assert_one_line_error(zoo("sql", "SELECT 1", lake=fake), str(fake), "cannot open lake")
    assert (fake / "zoo.ducklake").read_bytes() == before


def test_read_only_sql_refuses_writes(filled, fingerprint, zoo):
    before = fingerprint(filled)
    for q in ("DELETE FROM models", "INSERT INTO tags VALUES ('x', 1, now())", "DROP TABLE labels",
              "SELECT 1; DELETE FROM models", "DETACH lake", "USE memory",
              "COPY (SELECT 1) TO 'leak.csv'", "SELECT * FROM read_csv('/etc/passwd')"):
        proc = zoo("sql", q, lake=filled)
        assert_one_line_error(proc)
    assert fingerprint(filled) == before


def test_write_sql_needs_flag_and_lands(filled, fingerprint, zoo):
    proc = zoo("sql", "--write", "DELETE FROM models WHERE model_id = 'm0-00000'", lake=filled)
    assert proc.returncode == 0, proc.stderr
    with Lake.open(filled, read_only=True) as lk:
        assert lk.fetch("SELECT count(*) FROM models")[0][0] == 1
        assert lk.snapshots()[-1]["message"].startswith("zoo sql --write")


def test_library_errors_are_lake_errors(filled):
    with Lake.open(filled, read_only=True) as lk:
        with pytest.raises(LakeError, match="unknown snapshot or tag 'zz'"):
            lk.resolve("zz")


MLP = {"input_shape": [4], "n_classes": 2, "width": 3, "depth": 1}


def mlp_state() -> dict[str, torch.Tensor]:
    from zoo.archs import build

    torch.manual_seed(0)
    return {k: v.clone() for k, v in build("mlp", MLP).module.state_dict().items()}


def write_case(case: str, path) -> str:
    """Write a bad weight file for ``case``; returns the culprit the error must name."""
    state = mlp_state()
    if case == "nan":
        state["layers.0.weight"][0, 0] = float("nan")
    elif case == "inf":
        state["head.bias"][1] = float("inf")
    elif case == "shape":
        state["layers.0.weight"] = torch.zeros(3, 5)
    state_to_safetensors(state, path)
    raw = path.read_bytes()
    if case == "truncated":
        path.write_bytes(raw[: len(raw) - 5])
    elif case == "corrupt":
        path.write_bytes(raw[:8] + b"\xff" * (len(raw) - 8))
    return {"nan": "layers.0.weight", "inf": "head.bias", "shape": "layers.0.weight"}.get(case, path.name)


@pytest.mark.parametrize("case", ["truncated", "corrupt", "nan", "inf", "shape"])
def test_cli_ingest_bad_file(filled, fingerprint, zoo, tmp_path, case):
    """The same cases through `zoo ingest file` (ingest's reader): exit 2, one line, lake unchanged."""
    path = tmp_path / f"{case}.safetensors"
    culprit = write_case(case, path)
    before = fingerprint(filled)
    proc = zoo("ingest", "file", str(path), "--arch", "mlp", "--config", json.dumps(MLP), lake=filled)
    assert_one_line_error(proc, culprit)
    assert proc.returncode == 2
    assert fingerprint(filled) == before
