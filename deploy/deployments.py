"""The deployments and work pools, declared once in code (registered by `make serve` and the tests).

| deployment | flow | pool | schedule |
|---|---|---|---|
| zoo-build | flows/build.py:build_zoo | cpu | manual, default parameters |
| nightly-relabel | flows/label.py:label_zoo | cpu | cron 0 3 * * * (UTC), concurrency limit 1 |
| train-weightnet | flows/train.py:train_weightnet | gpu | manual |

Locally both pools are ``process`` pools; on a cluster create ``gpu`` as a Kubernetes pool with
``deploy/k8s-gpu-job-template.json`` (GPU resource requests) and keep the same deployments.
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S_GPU_TEMPLATE = ROOT / "deploy" / "k8s-gpu-job-template.json"
POOLS = ("cpu", "gpu")


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str  # path (relative to the repo root) : flow function
    pool: str
    parameters: dict = field(default_factory=dict)  # defaults shown (and editable) in the UI's Run dialog
    cron: str | None = None  # UTC
    concurrency_limit: int | None = None
    description: str = ""


def specs(lake: str, build_n: int = 4, build_family: str = "digits-cnn") -> list[DeploymentSpec]:
    """The project's deployments, all pointing at the lake at ``lake`` (a location string)."""
    return [
        DeploymentSpec("zoo-build", "flows/build.py:build_zoo", "cpu",
                       {"family": build_family, "n": build_n, "seed": 0, "lake": lake, "population_size": "auto",
                        "shards": 1, "runner": "threads"},
                       description="Train a family of models into the zoo (one new snapshot)."),
        DeploymentSpec("nightly-relabel", "flows/label.py:label_zoo", "cpu", {"lake": lake},
                       cron="0 3 * * *", concurrency_limit=1,
                       description="Label every model whose labels are missing or stale (03:00 UTC)."),
        DeploymentSpec("train-weightnet", "flows/train.py:train_weightnet", "gpu",
                       {"lake": lake, "device": "auto"},
                       description="Train WeightNet on a snapshot or tag and write its predictions."),
    ]


def ensure_pools(pools: tuple[str, ...] = POOLS) -> list[str]:
    """Create the local ``process`` work pools that do not exist yet; returns the ones created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    created = []
    with get_client(sync_client=True) as client:
        for name in pools:
            try:
                client.create_work_pool(WorkPoolCreate(
                    name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template(),
                    description=f"local {name} pool (process worker)"))
                created.append(name)
            except ObjectAlreadyExists:
                pass
    return created


def register(lake: str, root: pathlib.Path = ROOT, build_n: int = 4, build_family: str = "digits-cnn",
             only: tuple[str, ...] | None = None) -> dict[str, str]:
    """Create the pools and (re)register the deployments from the source tree at ``root``; returns
    deployment name -> id. Re-registering updates in place (idempotent)."""
    from prefect import Flow
    from prefect.schedules import Cron

    ensure_pools()
    ids = {}
    for spec in specs(lake, build_n, build_family):
        if only and spec.name not in only:
            continue
        fl = Flow.from_source(source=str(root), entrypoint=spec.entrypoint)
        schedules = [Cron(spec.cron, timezone="UTC")] if spec.cron else None
        ids[spec.name] = str(fl.deploy(
            spec.name, work_pool_name=spec.pool, build=False, push=False, parameters=spec.parameters,
            schedules=schedules, concurrency_limit=spec.concurrency_limit, description=spec.description,
            print_next_steps=False, ignore_warnings=True))
    return ids


def k8s_gpu_template() -> dict[str, Any]:
    """The documented Kubernetes base job template for the ``gpu`` pool on a cluster."""
    return json.loads(K8S_GPU_TEMPLATE.read_text())
