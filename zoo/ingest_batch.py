"""Batch file ingest: many weight files in one process, ``batch_size`` models per snapshot.

Sources (``collect``): file paths, folders (every weight file below, sorted), glob patterns, and
manifests (``.csv`` with a header, or ``.jsonl``) whose rows give ``path`` and optionally ``arch``,
``config`` (a JSON object, or its text in CSV) and ``dataset``; manifest paths are relative to the
manifest's folder. Row values override the command-line defaults.

``ingest_many`` reads and checks each file exactly as ``zoo.ingest.ingest_file`` does (same model ids, so
single and batch ingest are interchangeable and re-ingesting is a no-op). A bad file is reported by name
and the others still land; with ``strict`` every file is checked first and nothing is written when any
fails. Models are written in batches of ``batch_size``: one snapshot per batch.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import pathlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from core.errors import ZooError
from storage.lake import Lake
from storage.writes import write_models
from zoo.ingest import IngestLimits, prepare_file

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
MANIFEST_SUFFIXES = (".csv", ".jsonl")
_GLOB_CHARS = set("*?[")
# what reading/rebuilding a hostile or mismatched file raises (the arch builders raise TypeError/ValueError
# for bad config keys); anything else is a bug and propagates
_BAD_FILE = (ZooError, OSError, ValueError, TypeError, RuntimeError, KeyError)


@dataclass(frozen=True)
class BatchItem:
    """One file to ingest and how to rebuild it."""

    path: str
    arch: str
    config: Mapping = field(default_factory=dict)  # arch config (merged with the dataset's input shape/classes)
    dataset: str = "none"
    origin: str = ""  # where the item came from (manifest:line) for error messages


@dataclass
class BatchReport:
    stored: list[str] = field(default_factory=list)  # new model ids
    already: list[str] = field(default_factory=list)  # ids whose weights were stored before
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    snapshots: list[int] = field(default_factory=list)  # one per written batch


def _manifest_rows(path: pathlib.Path) -> Iterable[tuple[int, dict]]:
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ZooError(f"manifest {path}: the CSV header must name a 'path' column")
            for i, row in enumerate(reader, start=2):
                yield i, {k: v for k, v in row.items() if k and v not in (None, "")}
        return
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        yield i, _json_object(line, f"{path}:{i}", "the line")


def _json_object(value: object, where: str, what: str) -> dict:
    """``value`` as a JSON object (text is parsed, a dict passes as it is); errors name the manifest line."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ZooError(f"manifest {where}: {what} is not JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise ZooError(f"manifest {where}: {what} must be a JSON object")
    return value


def _from_manifest(path: pathlib.Path, arch: str | None, config: Mapping, dataset: str) -> list[BatchItem]:
    items = []
    for line, row in _manifest_rows(path):
        where = f"{path}:{line}"
        if "path" not in row:
            raise ZooError(f"manifest {where}: no 'path'")
        cfg = _json_object(row.get("config", {}), where, "config")
        row_arch = row.get("arch") or arch
        if not row_arch:
            raise ZooError(f"manifest {where}: no 'arch' in the row and no --arch given")
        file = pathlib.Path(str(row["path"])).expanduser()
        file = file if file.is_absolute() else path.parent / file
        items.append(BatchItem(str(file), str(row_arch), {**config, **cfg}, str(row.get("dataset") or dataset), where))
    return items


def collect(sources: Iterable[str], arch: str | None, config: Mapping | None = None,
            dataset: str = "none") -> list[BatchItem]:
    """Expand paths, folders, globs and manifests into items (duplicates kept once, first wins)."""
    config = dict(config or {})
    items: list[BatchItem] = []
    for src in sources:
        p = pathlib.Path(src).expanduser()
        if p.is_file() and p.suffix in MANIFEST_SUFFIXES:
            items += _from_manifest(p, arch, config, dataset)
            continue
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
            if not files:
                raise ZooError(f"{src}: folder holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
        elif not p.exists() and _GLOB_CHARS & set(src):
            files = sorted(pathlib.Path(f) for f in glob.glob(os.path.expanduser(src), recursive=True)
                           if pathlib.Path(f).is_file())
            if not files:
                raise ZooError(f"{src}: the pattern matches no file")
        else:
            files = [p]  # a missing file is reported per file by ingest_many, like any other bad file
        if not arch:
            raise ZooError(f"{src}: --arch is required (only manifest rows may name their own)")
        items += [BatchItem(str(f), arch, config, dataset) for f in files]
    seen: set[str] = set()
    unique = []
    for it in items:
        key = str(pathlib.Path(it.path).absolute())
        if key not in seen:
            seen.add(key)
            unique.append(it)
    return unique


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _prepare(item: BatchItem, limits: IngestLimits):
    return prepare_file(item.path, item.arch, item.config, item.dataset, limits)


def ingest_many(lake: Lake, items: list[BatchItem], *, batch_size: int = 32, strict: bool = False,
                limits: IngestLimits = IngestLimits(), progress: Callable[[int, int, str], None] | None = None,
                ) -> BatchReport:
    """Ingest ``items``; ``progress(done, total, path)`` after each file. See the module docstring."""
    if batch_size < 1:
        raise ZooError(f"batch size must be at least 1, got {batch_size}")
    report = BatchReport()
    if strict:  # check everything before the first write; states are dropped (files may be large)
        for it in items:
            try:
                _prepare(it, limits)
            except _BAD_FILE as e:
                report.failed.append((it.path, _reason(e)))
        if report.failed:
            names = "; ".join(f"{p}: {r}" for p, r in report.failed)
            raise ZooError(f"--strict: {len(report.failed)} of {len(items)} files refused, nothing written: {names}")
    pending: list = []

    def flush() -> None:
        if not pending:
            return
        new = set(write_models(lake, pending, f"ingest {len(pending)} files"))
        report.snapshots.append(lake.current_snapshot())
        for rec, _ in pending:
            if rec.model_id not in report.stored and rec.model_id not in report.already:
                (report.stored if rec.model_id in new else report.already).append(rec.model_id)
        pending.clear()

    for i, it in enumerate(items):
        try:
            pending.append(_prepare(it, limits))
        except _BAD_FILE as e:
            report.failed.append((it.path, _reason(e)))
        if len(pending) >= batch_size:
            flush()
        if progress is not None:
            progress(i + 1, len(items), it.path)
    flush()
    return report
