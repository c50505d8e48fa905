"""The flows with real components: a real Prefect server (session fixture), real lakes, real
training and labeling; Dask LocalCluster vs threads give the same labels."""
from __future__ import annotations

import pytest

from core.errors import ZooError
from flows.common import BadRunner, RunnerConfig, artifact_key, is_retryable, markdown_table, task_runner
from storage.lake import Lake

CHEAP = ["performance", "efficiency", "weight_stats"]  # labelers without attacks: seconds per batch


def test_task_runner_kinds() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(task_runner(RunnerConfig()), ThreadPoolTaskRunner)
    local = task_runner(RunnerConfig("dask"))
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 2
    assert local.cluster_kwargs["threads_per_worker"] == 1 and local.cluster_kwargs["dashboard_address"] is None
    remote = task_runner(RunnerConfig("dask", address="tcp://10.0.0.1:8786"))
    assert remote.address == "tcp://10.0.0.1:8786"
    with pytest.raises(BadRunner, match="ray"):
        task_runner(RunnerConfig("ray"))


def test_retry_only_transient_errors() -> None:
    assert is_retryable(ZooError("write failed: database is locked"))
    assert is_retryable(ConnectionError("reset"))
    assert not is_retryable(ZooError("unknown family 'nope'"))
    assert not is_retryable(None)


def test_artifact_keys_and_tables() -> None:
    assert artifact_key("Zoo Build", "digits_cnn") == "zoo-build-digits-cnn"
    assert artifact_key("x" * 300) == "x" * 100
    table = markdown_table([{"a": 1.23456, "b": "x|y"}])
    assert "1.235" in table and "x\\|y" in table and table.count("\n") == 3


def test_threads_share_a_duckdb_file_lake(lake_dir) -> None:
    """A DuckDB-file catalog attaches once per process: lake_at makes threads take turns, every write lands."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.common import lake_at

    Lake.open(lake_dir, create=True).close()

    def tag(i: int) -> int:
        with lake_at(str(lake_dir)) as lk:
            return lk.tag(f"t{i}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(tag, range(8)))
    with Lake.open(lake_dir, read_only=True) as lk:
        assert sorted(r[0] for r in lk.fetch("SELECT name FROM tags")) == sorted(f"t{i}" for i in range(8))


def _labels(location: str) -> dict[tuple[str, str], float]:
    with Lake.open(location, read_only=True) as lk:
        return {(m, p): v for m, p, v in lk.fetch("SELECT model_id, property, value FROM labels")}


def _copy_models(src: str, dst: str) -> int:
    from storage.writes import read_models, read_weights, write_models

    with Lake.open(src, read_only=True) as a:
        records = read_models(a)
        weights = read_weights(a, [r.model_id for r in records])
    with Lake.open(dst, create=True) as b:
        write_models(b, [(r, weights[r.model_id]) for r in records], "copy of the zoo")
    return len(records)


@pytest.fixture(scope="module")
def small_zoo_build(prefect_server, tmp_path_factory) -> tuple[str, str]:
    """Two digits-mlp members (with their checkpoints) built by the build_zoo flow: (lake, flow run id)."""
    from flows.build import build_zoo

    loc = str(tmp_path_factory.mktemp("flows") / "zoo")
    Lake.open(loc, create=True).close()
    state = build_zoo(family="digits-mlp", n=2, seed=0, lake=loc, return_state=True)
    assert state.is_completed() and len(state.result()["model_ids"]) >= 2
    return loc, str(state.state_details.flow_run_id)


@pytest.fixture(scope="module")
def small_zoo(small_zoo_build) -> str:
    return small_zoo_build[0]


@pytest.mark.slow
def test_build_flow_is_cached_and_leaves_the_lake_alone(small_zoo) -> None:
    from flows.build import build_zoo

    with Lake.open(small_zoo, read_only=True) as lk:
        snaps = len(lk.snapshots())
        n = lk.fetch("SELECT count(*) FROM models")[0][0]
    again = build_zoo(family="digits-mlp", n=2, seed=0, lake=small_zoo)
    with Lake.open(small_zoo, read_only=True) as lk:
        assert len(lk.snapshots()) == snaps  # answered from the INPUTS cache: no new snapshot
        assert lk.fetch("SELECT count(*) FROM models")[0][0] == n
        stored = sorted(m for (m,) in lk.fetch("SELECT model_id FROM models"))
    assert sorted(again["model_ids"]) == stored


@pytest.mark.slow
def test_dask_and_threads_give_the_same_labels(small_zoo, tmp_path) -> None:
    from flows.label import label_zoo

    threads_lake, dask_lake = str(tmp_path / "threads"), "sqlite:" + str(tmp_path / "dask")
    assert _copy_models(small_zoo, threads_lake) == _copy_models(small_zoo, dask_lake)
    t = label_zoo(properties=CHEAP, lake=threads_lake, batch_size=1, runner="threads")
    d = label_zoo(properties=CHEAP, lake=dask_lake, batch_size=1, runner="dask")
    assert t["n_batches"] == d["n_batches"] >= 2  # batch_size=1: one batch per model, fanned out
    assert t["n_labels"] == d["n_labels"] > 0
    a, b = _labels(threads_lake), _labels(dask_lake)
    assert a.keys() == b.keys() and len(a) == t["n_labels"]
    assert all(abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(a[k])) for k in a)
    # nothing is left to label: a second run plans no batches and writes nothing
    assert label_zoo(properties=CHEAP, lake=dask_lake, runner="threads")["n_labels"] == 0


@pytest.mark.slow
def test_build_flow_publishes_summary_and_progress_artifacts(small_zoo_build) -> None:
    """Only this module's build run counts: other tests on the shared server publish the same keys."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter

    small_zoo, flow_run_id = small_zoo_build

    def mine(key: str) -> ArtifactFilter:
        return ArtifactFilter(key={"any_": [key]}, flow_run_id={"any_": [flow_run_id]})

    with get_client(sync_client=True) as client:
        summary = client.read_artifacts(artifact_filter=mine("zoo-build-digits-mlp"))
        progress = client.read_artifacts(artifact_filter=mine("build-progress-digits-mlp"))
    assert all(str(a.flow_run_id) == flow_run_id for a in summary + progress)
    with Lake.open(small_zoo, read_only=True) as lk:
        n = lk.fetch("SELECT count(*) FROM models")[0][0]
    assert len(summary) == 1 and f"| models (incl. checkpoints) | {n} |" in summary[0].data
    assert progress and max(float(a.data) for a in progress) == 100.0


def test_pipeline_tag_moves_only_when_models_or_labels_change(lake_dir) -> None:
    from flows.pipeline import tag_snapshot
    from storage.writes import Label, write_labels, write_run

    Lake.open(lake_dir, create=True).close()
    loc = str(lake_dir)
    first = tag_snapshot.fn(loc, "demo")
    with Lake.open(loc) as lk:
        write_run(lk, "wn-x", "weightnet", {}, "completed")  # bookkeeping only: the data is unchanged
    assert tag_snapshot.fn(loc, "demo") == first
    with Lake.open(loc) as lk:
        write_labels(lk, [Label("m1", "test_accuracy", 0.5, "performance", 1)], "a new label")
    moved = tag_snapshot.fn(loc, "demo")
    with Lake.open(loc, read_only=True) as lk:
        assert moved > first and lk.resolve("demo") == moved
    assert tag_snapshot.fn(loc, "other") >= moved  # a new tag points at the current snapshot


@pytest.mark.slow
def test_label_flow_computes_only_stale_properties_and_records_its_run(small_zoo, tmp_path) -> None:
    import json

    from flows.label import label_zoo

    location = str(tmp_path / "stale")
    n_models = _copy_models(small_zoo, location)
    first = label_zoo(properties=["efficiency"], lake=location)
    total_after_first = len(_labels(location))
    assert first["n_models"] == n_models and first["n_labels"] == total_after_first > 0
    second = label_zoo(properties=CHEAP, lake=location)
    # efficiency is current: the second run writes only the performance and weight_stats labels
    assert second["n_labels"] == len(_labels(location)) - total_after_first > 0
    with Lake.open(location, read_only=True) as lk:
        runs = lk.fetch("SELECT config, status, metrics, snapshot_id FROM runs WHERE kind = 'label' ORDER BY started_at")
        snapshot = lk.current_snapshot()
    assert [r[1] for r in runs] == ["completed", "completed"]
    assert [json.loads(r[0])["properties"] for r in runs] == [["efficiency"], ["performance", "weight_stats"]]
    assert [json.loads(r[2])["n_labels"] for r in runs] == [first["n_labels"], second["n_labels"]]
    assert runs[1][3] == second["snapshot_id"] <= snapshot
