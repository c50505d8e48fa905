"""Flow ``report``: publish a run's results as Prefect artifacts (tables, markdown, links to plots).

For a WeightNet run: its metrics from the ``runs`` table. With ``suite`` set, that evaluation suite runs
too and its headline table, report and plots become artifacts; a partial or failed evaluation publishes
them, then fails the flow.
"""
from __future__ import annotations

import json
import pathlib

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS

from core.errors import ZooError
from flows.common import RETRY, artifact_key, lake_at, lake_stamp, progress_artifact
from flows.train import _metric_rows, resolve_snapshot

PLOT_SUFFIXES = (".png", ".svg", ".jpg", ".html")


@task(name="read-run", **RETRY)
def read_run(lake: str, run_id: str) -> dict:
    with lake_at(lake, read_only=True) as lk:
        rows = lk.fetch("SELECT kind, status, config, metrics, snapshot_id, code_version FROM lake.main.runs "
                        "WHERE run_id = ?", [run_id])
    if not rows:
        raise ZooError(f"no run {run_id!r} in the lake at {lake}")
    kind, status, config, metrics, snapshot, version = rows[0]
    return {"run_id": run_id, "kind": kind, "status": status, "config": json.loads(config or "{}"),
            "metrics": json.loads(metrics or "{}"), "snapshot_id": snapshot, "code_version": version}


@task(name="evaluate", cache_policy=INPUTS, persist_result=True, **RETRY)
def run_evaluation(lake: str, suite: str, at: str | int | None, out_dir: str, seeds: list[int], device: str,
                   stamp: str) -> dict:
    """Wraps evaluation.run.evaluate."""
    from evaluation.run import evaluate

    progress = progress_artifact(f"evaluation suite {suite}", key=artifact_key("eval-progress", suite))
    with lake_at(lake) as lk:
        res = evaluate(lk, suite=suite, at=at, out_dir=out_dir, seeds=tuple(seeds), progress=progress, device=device)
    headline = [dict(r) if not isinstance(r, dict) else r for r in (res.headline or [])]
    return {"run_id": res.run_id, "report_path": str(res.report_path), "headline": headline,
            "notes": list(res.notes), "status": res.status, "failures": list(res.failures),
            "text": res.format_headline()}


def publish_plots(folder: pathlib.Path, limit: int = 20) -> list[str]:
    """A link artifact per plot file under ``folder`` (the UI opens local files by their file:// URL)."""
    plots = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PLOT_SUFFIXES)[:limit]
    for p in plots:
        create_link_artifact(p.resolve().as_uri(), link_text=p.name, key=artifact_key("plot", p.stem),
                             description=f"plot {p.name}")
    return [str(p) for p in plots]


@flow(name="report", log_prints=True)
def report(run_id: str | None = None, lake: str = "lake", suite: str | None = "small", at: str | None = None,
           out_dir: str = "reports", seeds: list[int] | None = None, device: str = "cpu") -> dict:
    """Artifacts for ``run_id`` (a WeightNet run) and, with ``suite`` set, for the evaluation suite."""
    out: dict = {}
    if run_id:
        run = read_run(lake, run_id)
        rows = _metric_rows(run["metrics"])
        create_table_artifact(rows or [{"metric": "-", "value": "-"}], key=artifact_key("run-metrics"),
                              description=f"{run['kind']} run {run_id} ({run['status']})")
        out["run"] = run
    if suite:
        # pinned to a snapshot id, so the cached evaluation never outlives a moved tag
        snapshot = resolve_snapshot(lake, at)
        ev = run_evaluation(lake, suite, snapshot, out_dir, list(seeds or (0, 1, 2)), device, lake_stamp(lake))
        if ev["headline"]:
            create_table_artifact(ev["headline"], key=artifact_key("headline", suite),
                                  description=f"evaluation {suite} (run {ev['run_id']})")
        report_path = pathlib.Path(ev["report_path"])
        text = report_path.read_text() if report_path.is_file() and report_path.suffix == ".md" else ev["text"]
        create_markdown_artifact(text[:200_000], key=artifact_key("report", suite),
                                 description=f"evaluation report {report_path}")
        folder = report_path.parent if report_path.suffix else report_path
        ev["plots"] = publish_plots(folder) if folder.is_dir() else []
        print(f"evaluation run {ev['run_id']}: {len(ev['headline'])} headline rows, report {ev['report_path']}")
        out["evaluation"] = ev
        if ev.get("status", "completed") != "completed":  # published first, so the UI shows what failed
            raise ZooError(f"evaluation {ev['run_id']} {ev['status']}: " + "; ".join(ev.get("failures", [])[:5]))
    return out
