"""core.settings: every ZOO_* variable is read when asked for, with its documented default."""
from __future__ import annotations

import pathlib

import pytest

from core import settings


def test_defaults(monkeypatch) -> None:
    for var in ("ZOO_LAKE", "ZOO_DATA_PATH", "ZOO_LOCK_TIMEOUT", "ZOO_CACHE", "ZOO_DATA", "ZOO_OFFLINE", "HF_HUB_OFFLINE",
                "ZOO_RUNS", "ZOO_PREFECT_PORT", "ZOO_DATA_PATH_MOVED"):
        monkeypatch.delenv(var, raising=False)
    assert settings.lake_location() == "lake" and settings.lake_location("x") == "x"
    assert settings.data_path() is None and not settings.data_path_moved()
    assert settings.lock_timeout() == 120.0
    assert settings.cache_root() == pathlib.Path.home() / ".cache" / "weightnet-zoo"
    assert settings.data_root() == settings.cache_root() / "data"
    assert not settings.offline() and settings.runs_root() == pathlib.Path("runs") and settings.prefect_port() == 4200


def test_overrides_are_seen_at_once(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ZOO_LAKE", "sqlite:/x")
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("ZOO_LOCK_TIMEOUT", "3.5")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ZOO_S3_REGION", "eu-west-1")
    assert settings.lake_location() == "sqlite:/x" and settings.lake_location("y") == "y"
    assert settings.cache_root() == tmp_path and settings.data_root() == tmp_path / "data"
    assert settings.lock_timeout() == 3.5 and settings.offline() and settings.s3("REGION") == "eu-west-1"
    monkeypatch.setenv("ZOO_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not settings.offline()
    with pytest.raises(KeyError, match="PASSWORD"):
        settings.s3("PASSWORD")
