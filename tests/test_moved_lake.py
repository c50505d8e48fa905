"""A lake folder copied, moved or restored elsewhere opens where it now is and answers the same queries at
every snapshot (DuckLake records the creation-time data path; the lake attaches with OVERRIDE_DATA_PATH).
The original folder is deleted before reading the moved one, so nothing can be read from the old place."""
from __future__ import annotations

import hashlib
import pathlib
import shutil

import pytest
import torch
from typer.testing import CliRunner

from core.errors import LakeError
from storage.lake import Lake
from storage.writes import Label, read_models, read_weights, write_labels, write_models
from cli.main import app


def build_history(location: str, make_models) -> None:
    """Four snapshots after the schema: models, a tag, more models, labels, and a relabel."""
    with Lake.open(location, create=True) as lk:
        write_models(lk, make_models(3, seed=1), "three models")
        lk.tag("v1")
        write_models(lk, make_models(2, seed=2), "two more")
        write_labels(lk, [Label("m1-00000", "test_accuracy", 0.5, "acc", 1)], "a label")
        write_labels(lk, [Label("m1-00000", "test_accuracy", 0.75, "acc", 2)], "relabel")


def answers(location: str) -> dict[int, tuple]:
    """For every snapshot: model ids, a digest of every weight byte, the labels table, the tags."""
    with Lake.open(location, read_only=True) as lk:
        history = lk.snapshots()
    first = next(s["snapshot_id"] for s in history if s["message"] == "three models")
    snaps = [s["snapshot_id"] for s in history if s["snapshot_id"] >= first]  # before it: schema only
    out = {}
    for sid in snaps:
        with Lake.open(location, at=sid) as old:
            ids = sorted(r.model_id for r in read_models(old))
            h = hashlib.sha256()
            for mid, state in sorted(read_weights(old, ids).items()):
                for name, t in sorted(state.items()):
                    h.update(f"{mid}/{name}/{t.dtype}/{tuple(t.shape)}".encode())
                    h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            labels = tuple(old.fetch("SELECT model_id, property, value FROM labels ORDER BY ALL"))
            out[sid] = (tuple(ids), h.hexdigest(), labels)
    return out


@pytest.mark.parametrize("catalog", ["", "sqlite:"])
@pytest.mark.parametrize("how", ["copy", "move"])
def test_moved_lake_answers_the_same_at_every_snapshot(tmp_path: pathlib.Path, make_models, monkeypatch,
                                                       catalog: str, how: str) -> None:
    monkeypatch.delenv("ZOO_DATA_PATH", raising=False)
    src, dst = tmp_path / "a" / "lake", tmp_path / "elsewhere" / "restored"
    build_history(f"{catalog}{src}", make_models)
    before = answers(f"{catalog}{src}")
    assert len(before) == 5 and len(set(before.values())) == 4  # the history really differs (a tag changes no data)
    dst.parent.mkdir(parents=True)
    if how == "copy":
        shutil.copytree(src, dst)
    else:
        shutil.move(str(src), str(dst))
    shutil.rmtree(tmp_path / "a")  # reads of the moved lake cannot fall back on the old folder
    after = answers(f"{catalog}{dst}")
    assert after == before
    with Lake.open(f"{catalog}{dst}", read_only=True) as lk:
        assert lk.moved_from == f"{src}/data/" and lk.data_path == f"{dst}/data/"
        assert [s["tags"] for s in lk.snapshots() if s["tags"]] == [["v1"]]
    with Lake.open(f"{catalog}{dst}") as lk:  # writing lands in the new folder
        write_models(lk, make_models(1, seed=9), "after the move")
        assert len(read_models(lk)) == 6
    assert not (tmp_path / "a").exists()
    assert any((dst / "data").rglob("*.parquet"))


def test_explicit_data_path_mismatch_is_refused_unless_declared_moved(tmp_path: pathlib.Path, make_models,
                                                                      monkeypatch) -> None:
    lake, data = tmp_path / "lake", tmp_path / "data1"
    monkeypatch.setenv("ZOO_DATA_PATH", str(data))
    build_history(str(lake), make_models)
    want = answers(str(lake))
    shutil.move(str(data), str(tmp_path / "data2"))
    monkeypatch.setenv("ZOO_DATA_PATH", str(tmp_path / "data2"))
    with pytest.raises(LakeError, match="ZOO_DATA_PATH_MOVED=1") as e:
        Lake.open(str(lake), read_only=True)
    assert str(data) in str(e.value)
    monkeypatch.setenv("ZOO_DATA_PATH_MOVED", "1")
    assert answers(str(lake)) == want


def test_zoo_says_which_data_path_it_uses(tmp_path: pathlib.Path, make_models, monkeypatch) -> None:
    monkeypatch.delenv("ZOO_DATA_PATH", raising=False)
    runner = CliRunner()
    build_history(str(tmp_path / "a"), make_models)
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    out = runner.invoke(app, ["init", str(tmp_path / "b")])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert f"data path {tmp_path / 'b'}/data/" in text and f"records {tmp_path / 'a'}/data/" in text
    out = runner.invoke(app, ["snapshots", "--lake", str(tmp_path / "b")], terminal_width=400)
    assert out.exit_code == 0 and f"data path {tmp_path / 'b'}/data/" in " ".join(out.output.split())
