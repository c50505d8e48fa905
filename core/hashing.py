"""Stable ids: a short sha256 of canonical JSON; and the code version stamped on artefacts."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace; dataclasses become dicts, tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default)


def _default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot hash object of type {type(o).__name__}")


def stable_hash(obj: Any, n: int = 16) -> str:
    """First ``n`` hex digits of sha256(canonical_json(obj)); equal configs give equal ids."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit (and '+dirty') when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("weightnet-zoo")
    except PackageNotFoundError:
        ver = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return f"{ver}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return ver
