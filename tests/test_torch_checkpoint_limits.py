"""Torch checkpoints: size limits are checked from the zip archive before anything is unpickled, legacy
(pre-zip) files are refused, and loading goes through torch's weights-only restricted unpickler."""
from __future__ import annotations

import pathlib
import zipfile

import pytest
import torch

from core.errors import BadWeights
from storage.files import FileLimits, check_torch_checkpoint
from zoo.ingest import read_weights_file


@pytest.fixture
def no_unpickling(monkeypatch):
    """torch.load must not be reached: the checks before it refuse the file."""
    def refuse(*a, **k):
        raise AssertionError("torch.load was called before the size checks refused the file")
    monkeypatch.setattr(torch, "load", refuse)


def saved(tmp_path: pathlib.Path, state: dict, name: str = "m.pt", **kw) -> pathlib.Path:
    path = tmp_path / name
    torch.save(state, path, **kw)
    return path


STATE = {"a.weight": torch.zeros(64, 64), "a.bias": torch.zeros(64), "b.weight": torch.zeros(10, 64)}


@pytest.mark.parametrize("limits,match", [
    (FileLimits(max_tensor_bytes=64 * 64 * 4 - 1), "per-tensor limit"),
    (FileLimits(max_tensors=2), "3 storages exceed"),
    (FileLimits(max_total_bytes=64 * 64 * 4 + 64 * 4), "over the limit"),
    (FileLimits(max_file_bytes=1000), "file limit"),
    (FileLimits(max_header_bytes=10), "header limit"),
])
def test_limits_refuse_before_unpickling(tmp_path, no_unpickling, limits, match) -> None:
    path = saved(tmp_path, STATE)
    with pytest.raises(BadWeights, match=match) as e:
        read_weights_file(path, limits)
    assert str(path) in str(e.value)


def test_legacy_checkpoint_is_refused_before_unpickling(tmp_path, no_unpickling) -> None:
    path = saved(tmp_path, STATE, _use_new_zipfile_serialization=False)
    with pytest.raises(BadWeights, match="legacy"):
        read_weights_file(path)


def test_compressed_bomb_is_refused_by_declared_size(tmp_path, no_unpickling) -> None:
    """A deflated record declaring far more bytes than the file holds is judged by its declared size."""
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/data/0", b"\0" * (8 << 20))
    assert path.stat().st_size < 100_000
    with pytest.raises(BadWeights, match="over the per-tensor limit"):
        check_torch_checkpoint(path, FileLimits(max_tensor_bytes=1 << 20))


def test_good_checkpoint_goes_through_the_weights_only_unpickler(tmp_path, monkeypatch) -> None:
    path = saved(tmp_path, STATE)
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real(*a, **k))
    got = read_weights_file(path, FileLimits(max_tensors=3, max_total_bytes=sum(t.numel() * 4 for t in STATE.values())))
    assert calls and all(k.get("weights_only") is True for k in calls)
    assert all(torch.equal(got[k], v) for k, v in STATE.items())
