"""Flow ``train_weightnet``: train WeightNet on a lake snapshot (id or tag), then write its predictions."""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS

from flows.common import (RETRY, artifact_key, lake_at, lake_stamp, markdown_table, progress_artifact,
                          resolve_device)


@task(name="resolve-snapshot", **RETRY)
def resolve_snapshot(lake: str, at: str | int | None) -> int:
    """A tag or snapshot id (None: the latest) as a snapshot id, so the training input is pinned."""
    with lake_at(lake, read_only=True) as lk:
        return lk.pin(at)


@task(name="train", cache_policy=INPUTS, persist_result=True, **RETRY)
def train(lake: str, snapshot: int, where: str | None, targets: list[str], config: dict | None, device: str,
          runs_dir: str | None, stamp: str) -> dict:
    """Wraps weightnet.train.train_weightnet. Same snapshot + filter + targets + config on the same lake
    instance trains the same model, so the result is cached."""
    from weightnet.config import WeightNetConfig
    from weightnet.data import DatasetConfig
    from weightnet.train import train_weightnet

    cfg = WeightNetConfig.from_dict(config) if config else None
    dataset = DatasetConfig(at=snapshot, where=where, targets=tuple(targets))
    progress = progress_artifact("training WeightNet", key=artifact_key("weightnet-progress"))
    with lake_at(lake) as lk:
        result = train_weightnet(lk, dataset, cfg, device=device, progress=progress, runs_dir=runs_dir)
    return {"run_id": result.run_id, "metrics": result.metrics, "snapshot_id": result.snapshot_id,
            "checkpoint": str(result.checkpoint)}


@task(name="predict", **RETRY)
def predict(lake: str, run_id: str, where: str | None, device: str, runs_dir: str | None) -> int:
    from weightnet.predict import predict_zoo

    with lake_at(lake) as lk:
        return predict_zoo(lk, run_id, where=where, device=device, runs_dir=runs_dir)


def _metric_rows(metrics: dict, prefix: str = "") -> list[dict]:
    """Flattens nested metrics ({split: {property: {metric: v}}}) into table rows."""
    rows: list[dict] = []
    for k, v in metrics.items():
        if isinstance(v, dict):
            rows += _metric_rows(v, f"{prefix}{k}/")
        else:
            rows.append({"metric": f"{prefix}{k}", "value": v})
    return rows


@flow(name="train_weightnet", log_prints=True)
def train_weightnet(lake: str = "lake", at: str | None = None, where: str | None = None,
                    targets: list[str] | None = None, config: dict | None = None, predict_where: str | None = None,
                    device: str = "auto", runs_dir: str | None = None) -> dict:
    """Train on snapshot/tag ``at`` (default latest) restricted to ``where``; predict ``targets`` for
    the models matching ``predict_where`` (default all). Returns run id, metrics, predictions written."""
    targets = list(targets or ["test_accuracy"])
    device = resolve_device(device)
    snapshot = resolve_snapshot(lake, at)
    result = train(lake, snapshot, where, targets, config, device, runs_dir, lake_stamp(lake))
    n_pred = predict(lake, result["run_id"], predict_where, device, runs_dir)
    result = {**result, "trained_on_snapshot": snapshot, "predictions": n_pred}
    rows = _metric_rows(result["metrics"])
    if rows:
        create_table_artifact(rows, key=artifact_key("weightnet-metrics"), description=f"WeightNet run {result['run_id']}")
    create_markdown_artifact(
        f"# WeightNet run `{result['run_id']}`\n\n" + markdown_table(
            [{"field": "trained on snapshot", "value": snapshot}, {"field": "targets", "value": ", ".join(targets)},
             {"field": "predictions written", "value": n_pred}, {"field": "checkpoint", "value": result["checkpoint"]}]),
        key=artifact_key("weightnet-run"), description=f"{n_pred} predictions")
    print(f"WeightNet run {result['run_id']} trained on snapshot {snapshot}; {n_pred} predictions written")
    return result
