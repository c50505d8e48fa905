"""Deployments on a real Prefect server: zoo-build triggered through the API and run by a real process
worker lands a snapshot with the models; the nightly cron schedule really creates scheduled runs."""
from __future__ import annotations

import datetime as dt
import time

import pytest

from deploy.deployments import POOLS, k8s_gpu_template, register, specs
from deploy.server import start_worker, stop
from fixtures.prefect_runs import wait_flow_run
from storage.lake import Lake

FAMILY = "digits-mlp"  # the cheapest digits family keeps the runs short


def test_specs_declare_the_three_deployments() -> None:
    by_name = {s.name: s for s in specs("some-lake")}
    assert set(by_name) == {"zoo-build", "nightly-relabel", "train-weightnet"}
    assert by_name["nightly-relabel"].cron == "0 3 * * *" and by_name["nightly-relabel"].concurrency_limit == 1
    assert by_name["zoo-build"].cron is None and by_name["train-weightnet"].cron is None
    assert by_name["train-weightnet"].pool == "gpu" and by_name["zoo-build"].pool == "cpu"
    assert by_name["zoo-build"].parameters["family"] == "digits-cnn"
    assert {"population_size", "shards", "runner"} <= set(by_name["zoo-build"].parameters)  # scale-out knobs
    assert all(s.parameters["lake"] == "some-lake" for s in by_name.values())


def test_k8s_gpu_template_requests_gpus() -> None:
    tpl = k8s_gpu_template()
    container = tpl["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert tpl["variables"]["properties"]["gpus"]["default"] >= 1


def assert_run_completes(flow_run_id, timeout: float = 300.0) -> None:
    state = wait_flow_run(flow_run_id, timeout)
    assert state.is_completed(), f"flow run ended {state.type}: {state.message}"


@pytest.fixture(scope="module")
def registered(prefect_server, tmp_path_factory):
    lake_dir = tmp_path_factory.mktemp("deploy") / "lake"
    Lake.open(lake_dir, create=True).close()
    ids = register(str(lake_dir), build_n=2, build_family=FAMILY)
    return lake_dir, ids


@pytest.mark.slow
def test_zoo_build_deployment_runs_on_a_process_worker(prefect_server, registered) -> None:
    from prefect.deployments import run_deployment

    server, home = prefect_server
    lake_dir, _ = registered
    with Lake.open(lake_dir, read_only=True) as lk:
        before = lk.current_snapshot()
        assert lk.fetch("SELECT count(*) FROM models")[0][0] == 0
    run = run_deployment("build_zoo/zoo-build", timeout=0)
    worker = start_worker("cpu", home, server.api_url, run_once=True, fast=True, log=home / "worker-test.log")
    try:
        assert_run_completes(run.id)
    finally:
        stop(worker, grace=60)
    with Lake.open(lake_dir, read_only=True) as lk:
        after = lk.current_snapshot()
        n_models, n_seeds = lk.fetch("SELECT count(DISTINCT model_id), count(DISTINCT seed) FROM models")[0]
        families = {r[0] for r in lk.fetch("SELECT DISTINCT family FROM models")}
        # the models are visible in the new snapshot and absent from the old one
        with Lake.open(lake_dir, at=before) as old:
            assert old.fetch("SELECT count(*) FROM models")[0][0] == 0
    assert after > before
    assert n_models >= 2 and n_seeds == 2
    assert families == {FAMILY}


@pytest.mark.slow
def test_nightly_relabel_schedule_creates_runs(prefect_server, registered) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter

    _, ids = registered
    dep_id = ids["nightly-relabel"]
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(dep_id)
        assert dep.work_pool_name in POOLS
        limit = dep.global_concurrency_limit.limit
        assert limit == 1
        assert [(s.schedule.cron, s.schedule.timezone) for s in dep.schedules] == [("0 3 * * *", "UTC")]
        runs = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not runs:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id={"any_": [dep_id]}),
                flow_run_filter=FlowRunFilter(state={"type": {"any_": ["SCHEDULED"]}}))
            time.sleep(2)
    assert runs, "the scheduler created no runs for the nightly cron schedule"
    starts = sorted(r.expected_start_time.astimezone(dt.timezone.utc) for r in runs)
    assert all((t.hour, t.minute, t.second) == (3, 0, 0) for t in starts)
    assert all(b - a == dt.timedelta(days=1) for a, b in zip(starts, starts[1:]))
    assert starts[0] > dt.datetime.now(dt.timezone.utc)
