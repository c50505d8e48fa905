"""Batch `zoo ingest file`: many paths, a folder, a glob, a CSV/JSONL manifest in one process, a snapshot
per batch; a bad file is reported by name while the rest land; --strict writes nothing when any file fails."""
from __future__ import annotations

import csv
import json
import pathlib

import pytest
import torch
from typer.testing import CliRunner

from core.errors import ZooError
from storage.files import state_to_safetensors
from storage.lake import Lake
from storage.writes import read_models
from zoo.archs import build
from cli.main import app
from zoo.ingest import ingest_file, prepare_file
from zoo.ingest_batch import collect, ingest_many

MLP = {"input_shape": [1, 8, 8], "n_classes": 10, "width": 8, "depth": 2}
WIDE = {**MLP, "width": 12}


def save(path: pathlib.Path, seed: int, cfg: dict = MLP, bad: str = "") -> pathlib.Path:
    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in build("mlp", cfg).module.state_dict().items()}
    if bad == "nan":
        state["head.bias"][0] = float("nan")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pt":
        torch.save(state, path)
    else:
        state_to_safetensors(state, path)
    if bad == "corrupt":
        raw = path.read_bytes()
        path.write_bytes(raw[:8] + b"\xff" * (len(raw) - 8))
    return path


@pytest.fixture
def folder(tmp_path: pathlib.Path) -> pathlib.Path:
    """Five good files (one a torch checkpoint, one in a sub-folder) and two bad ones, plus a stray text file."""
    d = tmp_path / "models"
    for i in range(3):
        save(d / f"good{i}.safetensors", i)
    save(d / "good3.pt", 3)
    save(d / "sub" / "good4.safetensors", 4)
    save(d / "bad_nan.safetensors", 5, bad="nan")
    save(d / "bad_corrupt.safetensors", 6, bad="corrupt")
    (d / "README.txt").write_text("not weights")
    return d


def model_snapshots(lake: Lake) -> dict[str, int]:
    """Snapshot message -> models added by it (from the lake's own history)."""
    out = {}
    for s in lake.snapshots():
        if (s["message"] or "").startswith("ingest "):
            with lake.viewing(s["snapshot_id"]) as old:
                out[s["snapshot_id"]] = len(read_models(old))
    return out


def test_folder_lands_good_files_in_batches_and_names_bad_ones(lake, folder: pathlib.Path) -> None:
    items = collect([str(folder)], "mlp", MLP)
    assert len(items) == 7 and not any(i.path.endswith(".txt") for i in items)
    calls = []
    report = ingest_many(lake, items, batch_size=2, progress=lambda d, t, p: calls.append((d, t)))
    assert calls == [(i, 7) for i in range(1, 8)]
    assert len(report.stored) == 5 and not report.already
    assert sorted(pathlib.Path(p).name for p, _ in report.failed) == ["bad_corrupt.safetensors", "bad_nan.safetensors"]
    assert any("NaN" in r for _, r in report.failed)
    assert len(report.snapshots) == 3  # 5 good files, 2 per snapshot
    counts = sorted(model_snapshots(lake).values())
    assert counts == [2, 4, 5]  # cumulative models after each batch snapshot
    # the same ids as one-at-a-time ingest: batch and single ingest are interchangeable
    want = {prepare_file(folder / "good0.safetensors", "mlp", MLP)[0].model_id,
            prepare_file(folder / "good3.pt", "mlp", MLP)[0].model_id}
    assert want <= set(report.stored)
    again = ingest_many(lake, collect([str(folder)], "mlp", MLP), batch_size=10)
    assert sorted(again.already) == sorted(report.stored) and not again.stored
    assert ingest_file(lake, folder / "good1.safetensors", "mlp", MLP).new is False


def lake_state(lake: Lake) -> tuple:
    return (tuple(s["snapshot_id"] for s in lake.snapshots()),
            tuple(lake.fetch("SELECT model_id, name, data FROM lake.main.tensors ORDER BY ALL")))


def test_strict_refuses_before_writing_anything(lake, folder: pathlib.Path) -> None:
    before = lake_state(lake)
    with pytest.raises(ZooError, match="nothing written") as e:
        ingest_many(lake, collect([str(folder)], "mlp", MLP), strict=True)
    assert "bad_nan.safetensors" in str(e.value) and "bad_corrupt.safetensors" in str(e.value)
    assert lake_state(lake) == before
    good = collect([str(folder / "good*.safetensors"), str(folder / "sub")], "mlp", MLP)
    assert [pathlib.Path(i.path).name for i in good] == ["good0.safetensors", "good1.safetensors",
                                                         "good2.safetensors", "good4.safetensors"]
    assert len(ingest_many(lake, good, strict=True).stored) == 4


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_rows_name_arch_config_and_dataset(lake, tmp_path: pathlib.Path, kind: str) -> None:
    save(tmp_path / "w" / "a.safetensors", 0)
    save(tmp_path / "w" / "b.safetensors", 1, WIDE)
    save(tmp_path / "w" / "c.pt", 2)
    rows = [{"path": "w/a.safetensors", "arch": "mlp", "config": {"width": 8, "depth": 2}, "dataset": "digits"},
            {"path": str(tmp_path / "w" / "b.safetensors"), "arch": "mlp", "config": {"width": 12, "depth": 2},
             "dataset": "digits"},
            {"path": "w/c.pt", "config": MLP}]  # no arch: the --arch default
    manifest = tmp_path / f"models.{kind}"
    if kind == "csv":
        with open(manifest, "w", newline="") as fh:
            w = csv.DictWriter(fh, ["path", "arch", "config", "dataset"])
            w.writeheader()
            for r in rows:
                w.writerow({**r, "config": json.dumps(r["config"])})
    else:
        manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = collect([str(manifest)], "mlp")
    assert [i.dataset for i in items] == ["digits", "digits", "none"]
    report = ingest_many(lake, items)
    assert len(report.stored) == 3 and not report.failed and len(report.snapshots) == 1
    widths = sorted(r.arch_config["width"] for r in read_models(lake))
    assert widths == [8, 8, 12]
    assert {r.dataset for r in read_models(lake)} == {"digits", "none"}


def test_manifest_errors_name_the_row(tmp_path: pathlib.Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text('{"path": "a.safetensors", "arch": "mlp"}\n{"arch": "mlp"}\n')
    with pytest.raises(ZooError, match=r"m.jsonl:2: no 'path'"):
        collect([str(m)], None)
    m.write_text('{"path": "a.safetensors"}\n')
    with pytest.raises(ZooError, match=r"m.jsonl:1: no 'arch'"):
        collect([str(m)], None)
    with pytest.raises(ZooError, match="matches no file"):
        collect([str(tmp_path / "*.safetensors")], "mlp")


def test_cli_ingests_many_in_one_call(tmp_path: pathlib.Path, folder: pathlib.Path, monkeypatch) -> None:
    monkeypatch.setenv("ZOO_LAKE", str(tmp_path / "lake"))
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", "file", str(folder / "good0.safetensors"), str(folder / "sub"),
                              str(folder / "bad_nan.safetensors"), "--arch", "mlp", "--config", json.dumps(MLP),
                              "--batch-size", "1"])
    assert isinstance(res.exception, ZooError) and "bad_nan.safetensors" in str(res.exception)
    assert "1 of 3 files were not ingested" in str(res.exception)
    with Lake.open(tmp_path / "lake", read_only=True) as lk:
        ids = sorted(r.model_id for r in read_models(lk))
        assert len([s for s in lk.snapshots() if s["message"] == "ingest 1 files"]) == 2
    assert len(ids) == 2 and set(ids) <= set(res.stdout.split())
    res = runner.invoke(app, ["ingest", "file", str(folder), "--arch", "mlp", "--config", json.dumps(MLP),
                              "--strict"])
    assert isinstance(res.exception, ZooError) and "nothing written" in str(res.exception)
    with Lake.open(tmp_path / "lake", read_only=True) as lk:
        assert sorted(r.model_id for r in read_models(lk)) == ids


@pytest.mark.parametrize("lines, culprit", [
    (['{"path": "a.safetensors", "arch": "mlp"}', "not json"], r"m\.jsonl:2: the line is not JSON"),
    (["[1]"], r"m\.jsonl:1: the line must be a JSON object"),
    (['{"path": "a.safetensors", "arch": "mlp", "config": "{bad"}'], r"m\.jsonl:1: config is not JSON"),
    (['{"path": "a.safetensors", "arch": "mlp", "config": "[2]"}'], r"m\.jsonl:1: config must be a JSON object"),
])
def test_a_bad_manifest_line_is_named(tmp_path: pathlib.Path, lines: list[str], culprit: str) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(ZooError, match=culprit):
        collect([str(manifest)], None, {})
