"""The run-row lifecycle (storage.runs): running while the body works, then completed or failed."""
from __future__ import annotations

import json

import pytest

from storage.runs import tracked_run


def _row(lake, run_id: str) -> tuple:
    status, metrics, snap, started, finished = lake.fetch(
        "SELECT status, metrics, snapshot_id, started_at, finished_at FROM lake.main.runs WHERE run_id = ?", [run_id])[0]
    return status, json.loads(metrics), snap, started, finished


def test_a_run_is_running_while_its_body_works_then_completed(lake) -> None:
    with tracked_run(lake, "r1", "label", {"k": 1}) as run:
        status, _, _, started, finished = _row(lake, "r1")
        assert status == "running" and started is not None and finished is None
        run.metrics["n"] = 3
        run.snapshot_id = lake.current_snapshot()
    status, metrics, snap, started_again, finished = _row(lake, "r1")
    assert (status, metrics, snap) == ("completed", {"n": 3}, run.snapshot_id)
    assert started_again == started and finished >= started


def test_a_failing_body_records_failed_with_partial_metrics_and_reraises(lake) -> None:
    with pytest.raises(KeyError, match="culprit"):
        with tracked_run(lake, "r2", "build", {}) as run:
            run.metrics["done"] = 2
            raise KeyError("culprit")
    status, metrics, _, _, finished = _row(lake, "r2")
    assert status == "failed" and metrics["done"] == 2 and "culprit" in metrics["error"] and finished is not None


def test_a_body_may_end_with_another_status(lake) -> None:
    with tracked_run(lake, "r3", "evaluate", {}) as run:
        run.status = "partial"
    assert _row(lake, "r3")[0] == "partial"
