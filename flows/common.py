"""Shared plumbing for the flows: task runners, lake access from tasks, retries, progress artifacts.

Flows pass lake *location strings* and snapshot ids between tasks, never tensors or open connections:
every task opens the lake itself and closes it before returning, so tasks can run in other processes
(Dask workers, Kubernetes jobs) and a DuckDB-file catalog is never held while another task writes.
"""
from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from core.errors import ZooError
from storage.lake import Lake, LakeConfig, is_transient

RUNNERS = ("threads", "dask")


@dataclass(frozen=True)
class RunnerConfig:
    """How a flow fans out its tasks."""
    kind: str = "threads"  # threads | dask
    address: str | None = None  # dask only: scheduler address of an existing cluster; None = LocalCluster
    workers: int = 2  # threads: pool size; dask LocalCluster: processes (one thread each)


class BadRunner(ZooError):
    """An unknown task-runner setting."""


def task_runner(config: RunnerConfig) -> Any:
    """A Prefect task runner for ``config``: threads, a Dask LocalCluster, or an existing Dask cluster."""
    if config.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=config.workers)
    if config.kind == "dask":
        from prefect_dask import DaskTaskRunner

        if config.address:
            return DaskTaskRunner(address=config.address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.workers, "threads_per_worker": 1,
                                              "dashboard_address": None, "processes": True})
    raise BadRunner(f"unknown task runner {config.kind!r}; choose one of {', '.join(RUNNERS)}")


def is_retryable(exc: BaseException | None) -> bool:
    """Transient failures worth a retry: catalog locks/conflicts, dropped connections, timeouts."""
    if exc is None:
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return is_transient(exc)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only transient errors, never bad input."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state's own exception, re-raised by result()
        return is_retryable(exc)
    return False


# Retry settings shared by every task that touches the lake.
RETRY = {"retries": 3, "retry_delay_seconds": [1, 4, 10], "retry_condition_fn": retry_transient}


_FILE_LOCKS: dict[str, threading.RLock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(location: str) -> threading.RLock | None:
    """A DuckDB-file catalog can be attached once per process: threads of one process take turns."""
    cfg = LakeConfig.parse(location)
    if cfg.catalog != "duckdb":
        return None
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(cfg.target, threading.RLock())


@contextmanager
def lake_at(location: str, *, read_only: bool = False, create: bool = False, at: str | int | None = None,
            wait_s: float = 900.0) -> Iterator[Lake]:
    """Open the lake for the duration of the block. Waiting out another process's lock or a busy catalog
    (up to ``wait_s``) is ``Lake.open``'s job; with a DuckDB-file catalog, which one process attaches
    once, the threads of this process also take turns."""
    lock = _file_lock(location)
    with lock or nullcontext(), Lake.open(location, read_only=read_only, create=create, at=at,
                                          lock_timeout=wait_s) as lake:
        yield lake


def lake_stamp(location: str) -> str:
    """Identifies one lake *instance* (location + creation time), so cached results never outlive a
    deleted-and-recreated lake at the same path."""
    with lake_at(location, create=True) as lake:
        first = lake.fetch("SELECT min(snapshot_time) FROM lake.snapshots()")[0][0]
    return f"{lake.config.display}@{first}"


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def progress_artifact(description: str, key: str | None = None, every_s: float = 1.0) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback for library functions that updates a Prefect progress
    artifact (shown live in the UI), at most once per ``every_s`` seconds plus the final 100%."""
    artifact_id = create_progress_artifact(progress=0.0, key=key, description=description)
    last = [0.0]
    logged = [-1]  # last decile written to the run log (visible on the terminal and in the UI)

    def progress(done: int, total: int) -> None:
        decile = 10 * done // max(total, 1)
        if decile > logged[0]:
            logged[0] = decile
            get_run_logger().info("%s: %d/%d", description, done, total)
        now = time.monotonic()
        if done < total and now - last[0] < every_s:
            return
        last[0] = now
        update_progress_artifact(artifact_id, progress=100.0 * done / max(total, 1))

    return progress


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_none_"
    cols = columns or list(rows[0])
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |\n" for r in rows)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def resolve_device(device: str) -> str:
    """``auto``: the GPU when the worker has one (the ``gpu`` pool), else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
