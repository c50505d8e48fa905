"""Flow ``build_zoo``: train (or download) a family of models into the lake as one new snapshot."""
from __future__ import annotations

import dataclasses

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS

from flows.common import RETRY, artifact_key, lake_at, lake_stamp, markdown_table, progress_artifact


@task(name="build-models", cache_policy=INPUTS, persist_result=True, **RETRY)
def build_models(lake: str, family: str, n: int, seed: int, checkpoints: tuple[int, ...] | None, device: str,
                 stamp: str) -> dict:
    """Wraps zoo.build.build_zoo. ``stamp`` names the lake instance, so the INPUTS cache (same family,
    n, seed on the same lake) never answers for a lake that was deleted and recreated."""
    from zoo.build import build_zoo  # torch-heavy: imported where the work runs

    progress = progress_artifact(f"training {n} {family} models", key=artifact_key("build-progress", family))
    with lake_at(lake) as lk:
        result = build_zoo(lk, family, n, seed=seed, checkpoints=checkpoints, device=device, progress=progress)
    return dataclasses.asdict(result)


@flow(name="build_zoo", log_prints=True)
def build_zoo(family: str = "digits-cnn", n: int = 4, seed: int = 0, checkpoints: list[int] | None = None,
              lake: str = "lake", device: str = "cpu") -> dict:
    """Build ``n`` models of ``family`` into the lake at ``lake``; returns run id, model ids, snapshot id."""
    ckpts = tuple(checkpoints) if checkpoints else None
    result = build_models(lake, family, n, seed, ckpts, device, lake_stamp(lake))
    rows = [{"field": "family", "value": family}, {"field": "models requested", "value": n},
            {"field": "models (incl. checkpoints)", "value": len(result["model_ids"])},
            {"field": "newly written", "value": len(result["new_ids"])},
            {"field": "snapshot", "value": result["snapshot_id"]}, {"field": "run id", "value": result["run_id"]},
            {"field": "lake", "value": lake}]
    create_markdown_artifact(f"# Zoo build: {family}\n\n" + markdown_table(rows), key=artifact_key("zoo-build", family),
                             description=f"{len(result['new_ids'])} new models, snapshot {result['snapshot_id']}")
    print(f"built {len(result['model_ids'])} {family} models ({len(result['new_ids'])} new), snapshot {result['snapshot_id']}")
    return result
