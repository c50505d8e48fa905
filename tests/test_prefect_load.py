"""Prefect under load (issue 19 §4), on the session's real Prefect server with a real process worker:
20 zoo-build runs triggered at once through the API against one lake with a multi-writer (SQLite)
catalog all complete and store every model exactly once; two nightly-relabel runs triggered together
never run at the same time (the deployment's concurrency limit of 1 holds) and the second still completes.
Tiny builds (one digits-mlp model per run) keep it bounded."""
from __future__ import annotations

import subprocess

import pytest

from deploy.deployments import register
from deploy.server import PREFECT, prefect_env, stop
from fixtures.prefect_runs import wait_flow_run
from storage.lake import Lake

FAMILY = "digits-mlp"


def start_limited_worker(home, api_url: str, limit: int, log) -> subprocess.Popen:
    """A process worker on the cpu pool running at most ``limit`` flow runs at a time (bounded memory on
    a small machine; the runs are still all triggered at once and queue at the worker)."""
    with open(log, "ab") as out:
        return subprocess.Popen([*PREFECT, "worker", "start", "--pool", "cpu", "--type", "process", "--limit", str(limit)],
                                env=prefect_env(home, api_url, fast=True), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.fixture(scope="module")
def load_lake(prefect_server, tmp_path_factory):
    location = "sqlite:" + str(tmp_path_factory.mktemp("prefect-load") / "lake")
    Lake.open(location, create=True).close()
    register(location, build_n=1, build_family=FAMILY, only=("zoo-build", "nightly-relabel"))
    return location


@pytest.mark.slow
def test_twenty_builds_triggered_at_once_all_complete_and_store_each_model_once(prefect_server, load_lake):
    from prefect.deployments import run_deployment

    server, home = prefect_server
    seeds = [i % 10 for i in range(20)]  # every seed twice: the same models raced by two runs land once
    runs = [run_deployment("build_zoo/zoo-build", timeout=0,
                           parameters={"lake": load_lake, "family": FAMILY, "n": 1, "seed": s}) for s in seeds]
    worker = start_limited_worker(home, server.api_url, 4, home / "worker-load.log")
    try:
        states = [wait_flow_run(r.id, timeout=1500) for r in runs]
    finally:
        stop(worker, grace=60)
    bad = [(r.name, s.type, s.message) for r, s in zip(runs, states) if not s.is_completed()]
    assert not bad, bad
    with Lake.open(load_lake, read_only=True) as lk:
        rows, distinct, seeds_seen = lk.fetch("SELECT count(*), count(DISTINCT model_id), count(DISTINCT seed) "
                                              "FROM models")[0]
        tensors = lk.fetch("SELECT count(*), count(DISTINCT (model_id, name)) FROM tensors")[0]
        per_model = {r[0] for r in lk.fetch("SELECT count(*) FROM tensors GROUP BY model_id")}
        families = {r[0] for r in lk.fetch("SELECT DISTINCT family FROM models")}
    assert rows == distinct and seeds_seen == 10 and distinct >= 10, (rows, distinct, seeds_seen)
    assert tensors[0] == tensors[1] and len(per_model) == 1  # no doubled tensor, every model complete
    assert families == {FAMILY}


@pytest.mark.slow
def test_two_nightly_relabels_triggered_together_never_overlap(prefect_server, load_lake):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    server, home = prefect_server
    with Lake.open(load_lake) as lk:
        if not lk.fetch("SELECT count(*) FROM models")[0][0]:  # run alone: give it something to label
            from bench.loadgen.stress import make_batch
            from storage.writes import write_models

            write_models(lk, make_batch(0, 0, 3), "models to relabel")
    params = {"lake": load_lake, "properties": ["weight_stats"]}
    runs = [run_deployment("label_zoo/nightly-relabel", timeout=0, parameters=params) for _ in range(2)]
    worker = start_limited_worker(home, server.api_url, 4, home / "worker-relabel.log")
    try:
        states = [wait_flow_run(r.id, timeout=900) for r in runs]
    finally:
        stop(worker, grace=60)
    assert all(s.is_completed() for s in states), [(s.type, s.message) for s in states]
    with get_client(sync_client=True) as client:
        done = sorted((client.read_flow_run(r.id) for r in runs), key=lambda fr: fr.start_time)
    first, second = done
    assert first.end_time is not None and second.start_time is not None
    assert second.start_time >= first.end_time, (  # the limit of 1 held: the second waited for the first
        f"relabel runs overlapped: {first.start_time}..{first.end_time} and {second.start_time}..{second.end_time}")
    with Lake.open(load_lake, read_only=True) as lk:
        assert lk.fetch("SELECT count(*) FROM labels")[0][0] > 0  # the relabel really wrote labels
