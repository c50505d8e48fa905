"""Flow ``label_zoo``: measure properties of every model whose labels are missing or stale.

The plan (batches of model ids, each with exactly the properties it lacks) is computed once; each batch is one task, fanned out on the chosen
task runner (threads by default, or Dask: a LocalCluster or ``address=`` of a real cluster). Every
batch commits its own snapshot; use a SQLite or PostgreSQL catalog when batches run in several processes.
"""
from __future__ import annotations

import dataclasses

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS
from prefect.futures import as_completed

from flows.common import (RETRY, RunnerConfig, artifact_key, lake_at, lake_stamp, markdown_table, progress_artifact,
                          task_runner)
from storage.runs import Run, finish_run, start_run


Batch = tuple[list[str], list[str]]  # (model ids, the stale property names to compute for all of them)


@task(name="plan-labeling", **RETRY)
def plan(lake: str, properties: list[str] | None, where: str | None, batch_size: int) -> list[Batch]:
    from labeling.run import plan as plan_batches

    with lake_at(lake) as lk:
        return [(ids, [p.name for p in props]) for ids, props in plan_batches(lk, properties, where, batch_size)]


@task(name="start-label-run", **RETRY)
def start(lake: str, batches: list[Batch], where: str | None, device: str, batch_size: int) -> Run:
    from labeling.registry import resolve
    from labeling.run import label_run

    with lake_at(lake) as lk:
        run = label_run(lk, [(ids, resolve(names)) for ids, names in batches], where, device, batch_size)
        start_run(lk, run)
    return run


@task(name="finish-label-run", **RETRY)
def finish(lake: str, run: Run, error: str | None) -> int:
    """Writes the run row's final status; returns the lake's snapshot."""
    with lake_at(lake) as lk:
        run.snapshot_id = lk.current_snapshot()
        finish_run(lk, run, RuntimeError(error) if error else None)
        return run.snapshot_id


@task(name="label-batch", cache_policy=INPUTS, persist_result=True, **RETRY)
def label_batch(lake: str, model_ids: list[str], properties: list[str], device: str, stamp: str) -> dict:
    """Wraps labeling.run.label_models for one batch and exactly its stale properties (one snapshot).
    Deterministic given its inputs and the lake instance ``stamp``, so a re-run flow answers finished
    batches from the cache."""
    from labeling.run import label_models

    progress = progress_artifact(f"labeling a batch of {len(model_ids)} models")
    with lake_at(lake) as lk:
        return dataclasses.asdict(label_models(lk, model_ids, properties=properties, device=device, progress=progress))


@flow(name="label-batches")
def label_batches(lake: str, batches: list[Batch], device: str, stamp: str) -> list[dict]:
    """Fans the batches out on this flow's task runner (set by ``label_zoo`` with ``with_options``)."""
    futures = [label_batch.submit(lake, ids, names, device, stamp) for ids, names in batches]
    progress = progress_artifact(f"labeling {sum(len(ids) for ids, _ in batches)} models in {len(batches)} batches",
                                 key=artifact_key("label-progress"), every_s=0.0)
    results = []
    for i, fut in enumerate(as_completed(futures), 1):
        results.append(fut.result())
        progress(i, len(futures))
    return results


@flow(name="label_zoo", log_prints=True)
def label_zoo(properties: list[str] | None = None, where: str | None = None, lake: str = "lake", batch_size: int = 32,
              runner: str = "threads", dask_address: str | None = None, workers: int = 2, device: str = "cpu") -> dict:
    """Label models (all, or those matching the SQL filter ``where`` on ``models``) with ``properties``
    (None: every registered property), each batch with exactly its stale properties; a ``label`` row in
    ``runs`` records the run. Returns labels written, models labeled and the final snapshot."""
    batches = plan(lake, properties, where, batch_size)
    results: list[dict] = []
    if batches:
        stamp = lake_stamp(lake)
        run = start(lake, batches, where, device, batch_size)
        inner = label_batches.with_options(task_runner=task_runner(RunnerConfig(runner, dask_address, workers)))
        try:
            results = inner(lake, batches, device, stamp)
        except Exception as e:
            finish(lake, run, str(e) or type(e).__name__)
            raise
        run.metrics = {"n_labels": sum(r["n_labels"] for r in results), "n_models": sum(r["n_models"] for r in results)}
        snapshot = finish(lake, run, None)
    else:
        with lake_at(lake, read_only=True) as lk:
            snapshot = lk.current_snapshot()
    summary = {"n_labels": sum(r["n_labels"] for r in results), "n_models": sum(r["n_models"] for r in results),
               "n_batches": len(batches), "snapshot_id": snapshot}
    rows = [{"field": k, "value": v} for k, v in summary.items()]
    rows += [{"field": "properties", "value": ", ".join(properties) if properties else "all registered"},
             {"field": "filter", "value": where or "-"}, {"field": "runner", "value": runner}]
    create_markdown_artifact("# Labeling\n\n" + markdown_table(rows), key=artifact_key("labels"),
                             description=f"{summary['n_labels']} labels on {summary['n_models']} models")
    print(f"labeled {summary['n_models']} models ({summary['n_labels']} labels) in {len(batches)} batches; "
          f"snapshot {snapshot}")
    return summary
