"""Flow ``pipeline``: build -> label -> tag -> train WeightNet (+ predictions) -> report, in order."""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from core.errors import ZooError
from flows.build import build_zoo
from flows.common import RETRY, artifact_key, lake_at, markdown_table
from flows.label import label_zoo
from flows.report import report
from flows.train import train_weightnet


DATA_STATE = ("SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM labels), "
              "(SELECT max(measured_at) FROM labels)")


@task(name="tag-snapshot", **RETRY)
def tag_snapshot(lake: str, name: str) -> int:
    """Point ``name`` at the current data. When models and labels are unchanged since the tag was set
    (only run/prediction rows were added), the tag stays, so training and evaluation at the tag are
    answered from the cache on a re-run."""
    try:
        with lake_at(lake, at=name) as old:
            tagged, old_state = old.snapshot, old.fetch(DATA_STATE)[0]
    except ZooError:
        tagged, old_state = None, None
    with lake_at(lake) as lk:
        if tagged is not None and lk.fetch(DATA_STATE)[0] == old_state:
            return tagged
        return lk.tag(name)


@flow(name="pipeline", log_prints=True)
def pipeline(family: str = "digits-cnn", n: int = 8, seed: int = 0, checkpoints: list[int] | None = None,
             lake: str = "lake", properties: list[str] | None = None, where: str | None = None,
             batch_size: int = 32, runner: str = "threads", dask_address: str | None = None,
             tag: str | None = "pipeline", targets: list[str] | None = None, config: dict | None = None,
             suite: str | None = "small", out_dir: str = "reports", seeds: list[int] | None = None,
             device: str = "cpu") -> dict:
    """The whole system in one run. ``properties``/``where`` select what is labeled; ``tag`` names the
    labeled snapshot WeightNet trains on; ``suite`` (None: skip) runs the evaluation."""
    built = build_zoo(family=family, n=n, seed=seed, checkpoints=checkpoints, lake=lake, device=device)
    labeled = label_zoo(properties=properties, where=where, lake=lake, batch_size=batch_size, runner=runner,
                        dask_address=dask_address, device=device)
    at: str | None = None
    if tag:
        tag_snapshot(lake, tag)
        at = tag
    trained = train_weightnet(lake=lake, at=at, where=where, targets=targets, config=config, device=device)
    reported = report(run_id=trained["run_id"], lake=lake, suite=suite, at=at, out_dir=out_dir, seeds=seeds,
                      device=device)
    summary = [{"step": "build", "result": f"{len(built['model_ids'])} models ({len(built['new_ids'])} new), "
                                           f"snapshot {built['snapshot_id']}"},
               {"step": "label", "result": f"{labeled['n_labels']} labels on {labeled['n_models']} models, "
                                           f"snapshot {labeled['snapshot_id']}"},
               {"step": "tag", "result": tag or "-"},
               {"step": "train", "result": f"run {trained['run_id']}, {trained['predictions']} predictions"},
               {"step": "report", "result": "evaluated" if reported.get("evaluation") else "metrics only"}]
    create_markdown_artifact("# Pipeline\n\n" + markdown_table(summary), key=artifact_key("pipeline"),
                             description=f"pipeline on {lake}")
    return {"build": built, "label": labeled, "tag": tag, "train": trained, "report": reported}
