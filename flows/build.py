"""Flow ``build_zoo``: train (or download) a family of models into the lake.

One task builds the whole family (``shards=1``), or the build is planned once (``zoo.build.plan_build``:
populations of members still to train) and its populations are dealt round-robin into ``shards`` tasks
that run on the chosen task runner (threads, or Dask: a LocalCluster or ``dask_address`` of a real
cluster). Each shard writes its own snapshots; the models are the same, bit for bit, as a one-task build
because every member trains in the same population. Use a SQLite or PostgreSQL catalog when shards run
in several processes.
"""
from __future__ import annotations

import dataclasses

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS
from prefect.futures import as_completed

from flows.common import (RETRY, RunnerConfig, artifact_key, lake_at, lake_stamp, markdown_table, progress_artifact,
                          task_runner)


@task(name="build-models", cache_policy=INPUTS, persist_result=True, **RETRY)
def build_models(lake: str, family: str, n: int, seed: int, checkpoints: tuple[int, ...] | None, device: str,
                 stamp: str, population_size: int | str = "auto", memory_mb: float = 1024) -> dict:
    """Wraps zoo.build.build_zoo. ``stamp`` names the lake instance, so the INPUTS cache (same family,
    n, seed on the same lake) never answers for a lake that was deleted and recreated."""
    from zoo.build import build_zoo  # torch-heavy: imported where the work runs

    progress = progress_artifact(f"training {n} {family} models", key=artifact_key("build-progress", family))
    with lake_at(lake) as lk:
        result = build_zoo(lk, family, n, seed=seed, checkpoints=checkpoints, device=device, progress=progress,
                           population_size=population_size, memory_budget_mb=memory_mb)
    return dataclasses.asdict(result)


@task(name="plan-build", **RETRY)
def plan_build(lake: str, family: str, n: int, seed: int, checkpoints: tuple[int, ...] | None,
               population_size: int | str, memory_mb: float) -> list[list[int]]:
    from zoo.build import plan_build as plan

    with lake_at(lake) as lk:
        return plan(lk, family, n, seed, checkpoints, population_size, memory_mb)


@task(name="build-shard", cache_policy=INPUTS, persist_result=True, **RETRY)
def build_shard(lake: str, family: str, n: int, seed: int, checkpoints: tuple[int, ...] | None, device: str,
                units: list[list[int]], shard: tuple[int, int], stamp: str) -> dict:
    """Trains and stores the populations ``units`` (member indices) as shard ``shard`` = (i, count)."""
    from zoo.build import build_zoo

    progress = progress_artifact(f"training shard {shard[0] + 1}/{shard[1]} of {family}")
    with lake_at(lake) as lk:
        result = build_zoo(lk, family, n, seed=seed, checkpoints=checkpoints, device=device, progress=progress,
                           units=units, shard=shard)
    return dataclasses.asdict(result)


@task(name="build-summary", **RETRY)
def build_summary(lake: str, family: str, n: int, seed: int, checkpoints: tuple[int, ...] | None) -> dict:
    """Every requested member's ids (stored before or now) and the lake's snapshot; writes nothing."""
    from zoo.build import build_zoo

    with lake_at(lake) as lk:
        return dataclasses.asdict(build_zoo(lk, family, n, seed=seed, checkpoints=checkpoints, units=[]))


@flow(name="build-shards")
def build_shards(lake: str, family: str, n: int, seed: int, checkpoints: tuple[int, ...] | None, device: str,
                 shards: list[list[list[int]]], stamp: str) -> list[dict]:
    """Fans the shards out on this flow's task runner (set by ``build_zoo`` with ``with_options``)."""
    futures = [build_shard.submit(lake, family, n, seed, checkpoints, device, units, (i, len(shards)), stamp)
               for i, units in enumerate(shards)]
    progress = progress_artifact(f"building {family} in {len(shards)} shards",
                                 key=artifact_key("build-progress", family), every_s=0.0)
    results = []
    for i, fut in enumerate(as_completed(futures), 1):
        results.append(fut.result())
        progress(i, len(futures))
    return results


@flow(name="build_zoo", log_prints=True)
def build_zoo(family: str = "digits-cnn", n: int = 4, seed: int = 0, checkpoints: list[int] | None = None,
              lake: str = "lake", device: str = "cpu", population_size: int | str = "auto", memory_mb: float = 1024,
              shards: int = 1, runner: str = "threads", dask_address: str | None = None, workers: int = 2) -> dict:
    """Build ``n`` models of ``family`` into the lake at ``lake``; returns run id, model ids, snapshot id.
    Populations hold ``population_size`` members ("auto": as many as ``memory_mb`` allows per step);
    ``shards`` > 1 splits the build into that many tasks on ``runner`` (threads | dask)."""
    ckpts = tuple(checkpoints) if checkpoints else None
    stamp = lake_stamp(lake)
    if shards <= 1:
        result = build_models(lake, family, n, seed, ckpts, device, stamp, population_size, memory_mb)
    else:
        units = plan_build(lake, family, n, seed, ckpts, population_size, memory_mb)
        dealt = [units[i::shards] for i in range(min(shards, len(units)))]
        parts = []
        if dealt:
            inner = build_shards.with_options(task_runner=task_runner(RunnerConfig(runner, dask_address, workers)))
            parts = inner(lake, family, n, seed, ckpts, device, dealt, stamp)
        everything = build_summary(lake, family, n, seed, ckpts)
        new = sorted({i for p in parts for i in p["new_ids"]})
        result = {**everything, "new_ids": new, "shards": [p["run_id"] for p in parts]}
    rows = [{"field": "family", "value": family}, {"field": "models requested", "value": n},
            {"field": "models (incl. checkpoints)", "value": len(result["model_ids"])},
            {"field": "newly written", "value": len(result["new_ids"])},
            {"field": "snapshot", "value": result["snapshot_id"]}, {"field": "run id", "value": result["run_id"]},
            {"field": "shards", "value": max(1, shards)}, {"field": "lake", "value": lake}]
    create_markdown_artifact(f"# Zoo build: {family}\n\n" + markdown_table(rows), key=artifact_key("zoo-build", family),
                             description=f"{len(result['new_ids'])} new models, snapshot {result['snapshot_id']}")
    print(f"built {len(result['model_ids'])} {family} models ({len(result['new_ids'])} new), snapshot {result['snapshot_id']}")
    return result

