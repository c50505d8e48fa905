"""The one reader of the project's ``ZOO_*`` environment variables. Each is read when asked for (not at
import), so a test or a flow run that sets one sees it at once.

| variable | meaning | default |
|---|---|---|
| ZOO_LAKE | lake location (folder, sqlite:FOLDER, postgres:DSN) | ./lake |
| ZOO_DATA_PATH | where Parquet data files go (folder or s3://...) | <lake>/data |
| ZOO_DATA_PATH_MOVED | 1: an explicit ZOO_DATA_PATH may differ from the catalog's recorded path | unset |
| ZOO_S3_KEY_ID, ZOO_S3_SECRET, ZOO_S3_SESSION_TOKEN, ZOO_S3_REGION, ZOO_S3_ENDPOINT, ZOO_S3_URL_STYLE, ZOO_S3_USE_SSL | object-store credentials and endpoint | unset |
| ZOO_LOCK_TIMEOUT | seconds to wait out a locked or busy catalog | 120 |
| ZOO_CACHE | cache root (stored splits, tokens, corruptions) | ~/.cache/weightnet-zoo |
| ZOO_DATA | downloadable datasets, in their sources' layouts | $ZOO_CACHE/data |
| ZOO_OFFLINE | 1: never download (HF_HUB_OFFLINE=1 counts too) | unset |
| ZOO_RUNS | WeightNet checkpoints | ./runs |
| ZOO_PREFECT_PORT, ZOO_PREFECT_HOME | `make serve`'s Prefect server | 4200, ./.prefect |
"""
from __future__ import annotations

import os
import pathlib

DEFAULT_LAKE = "lake"
S3_VARIABLES = ("KEY_ID", "SECRET", "SESSION_TOKEN", "REGION", "ENDPOINT", "URL_STYLE", "USE_SSL")


def _get(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def lake_location(explicit: str | os.PathLike | None = None) -> str:
    return str(explicit or _get("ZOO_LAKE") or DEFAULT_LAKE)


def data_path() -> str | None:
    return _get("ZOO_DATA_PATH")


def data_path_moved() -> bool:
    return _get("ZOO_DATA_PATH_MOVED") == "1"


def s3(name: str) -> str | None:
    """One object-store setting: ``name`` is one of S3_VARIABLES (ZOO_S3_<name>)."""
    if name not in S3_VARIABLES:
        raise KeyError(f"unknown object-store setting {name!r}; known: {', '.join(S3_VARIABLES)}")
    return _get(f"ZOO_S3_{name}")


def lock_timeout() -> float:
    return float(_get("ZOO_LOCK_TIMEOUT") or 120)


def cache_root() -> pathlib.Path:
    return pathlib.Path(_get("ZOO_CACHE") or pathlib.Path.home() / ".cache" / "weightnet-zoo")


def data_root() -> pathlib.Path:
    return pathlib.Path(_get("ZOO_DATA") or cache_root() / "data")


def offline() -> bool:
    return any((_get(v) or "0") != "0" for v in ("ZOO_OFFLINE", "HF_HUB_OFFLINE"))


def runs_root() -> pathlib.Path:
    return pathlib.Path(_get("ZOO_RUNS") or "runs")


def prefect_port() -> int:
    return int(_get("ZOO_PREFECT_PORT") or 4200)


def prefect_home(default: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(_get("ZOO_PREFECT_HOME") or default)
