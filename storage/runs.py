"""The run-row lifecycle: one owner for ``running`` -> ``completed`` | ``failed``.

Every stage that records a run (build, label, weightnet, evaluate) goes through ``tracked_run`` when
it holds the lake for the whole run, or through ``start_run`` / ``finish_run`` when the run spans
several tasks that each open the lake themselves (Prefect flows).

    with tracked_run(lake, run_id, "label", config) as run:
        ...                       # the work
        run.metrics["n_labels"] = n
        run.snapshot_id = lake.current_snapshot()

A failure (any exception, KeyboardInterrupt included) writes ``failed`` with the metrics gathered so
far and the error's first 500 characters, then re-raises.
"""
from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from storage.lake import Lake
from storage.writes import write_run

ERROR_CHARS = 500  # enough to name the culprit; the full traceback belongs in the log


@dataclass
class Run:
    """What a run row will say when it finishes; the body of ``tracked_run`` fills it in."""
    run_id: str
    kind: str  # build | label | weightnet | evaluate
    config: dict
    snapshot_id: int | None = None  # the snapshot the run read (or, when done, the one it left)
    started_at: dt.datetime | None = None
    metrics: dict = field(default_factory=dict)
    status: str = "completed"  # what a body that returns normally ends as (evaluate: partial | failed)


def start_run(lake: Lake, run: Run) -> None:
    write_run(lake, run.run_id, run.kind, run.config, "running", snapshot_id=run.snapshot_id,
              started_at=run.started_at)


def finish_run(lake: Lake, run: Run, error: BaseException | None = None) -> None:
    """Write the final row: ``failed`` with the error when ``error`` is given, else ``run.status``."""
    now = dt.datetime.now(dt.timezone.utc)
    if error is None:
        write_run(lake, run.run_id, run.kind, run.config, run.status, run.metrics, run.snapshot_id,
                  run.started_at, now)
        return
    metrics = {**run.metrics, "error": str(error)[:ERROR_CHARS] or type(error).__name__}
    write_run(lake, run.run_id, run.kind, run.config, "failed", metrics, run.snapshot_id, run.started_at, now)


@contextmanager
def tracked_run(lake: Lake, run_id: str, kind: str, config: dict, snapshot_id: int | None = None,
                started_at: dt.datetime | None = None) -> Iterator[Run]:
    run = Run(run_id, kind, dict(config), snapshot_id, started_at)
    start_run(lake, run)
    try:
        yield run
    except BaseException as e:
        finish_run(lake, run, e)
        raise
    finish_run(lake, run)
