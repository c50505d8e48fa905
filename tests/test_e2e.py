"""End to end, as a user runs them: the ``pipeline`` flow on a tiny zoo against the test server, `make
serve` (``python -m deploy.serve``, what the make target runs) and `make demo` (``python -m flows.demo``)
at a tiny size. Each checks what the run leaves behind, not only that it exited 0."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from storage.lake import Lake

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOYMENTS = {"zoo-build", "nightly-relabel", "train-weightnet"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the test session's Prefect settings (a subprocess must use its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


# --- the pipeline flow ------------------------------------------------------------------------------
def test_pipeline_flow_leaves_tag_predictions_and_a_completed_report(prefect_server, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter

    from flows.pipeline import pipeline
    from evaluation import run as eval_run

    # WeightNet and GBT only, 1 seed, short training: the flow's wiring is under test, not the predictors
    suite = dataclasses.replace(eval_run.SUITES["small"], name="e2e", max_zoos=1, n_extra_targets=0, interpret=False,
                                predictors=("weightnet", "statnn-gbt"), min_models=8,
                                overrides=(("weightnet", (("epochs", 2), ("ensemble", 1))),
                                           ("statnn-gbt", (("gbt_iter", 20),))))
    monkeypatch.setitem(eval_run.SUITES, "e2e", suite)
    monkeypatch.setenv("ZOO_RUNS", str(tmp_path / "runs"))
    lake = str(tmp_path / "lake")
    Lake.open(lake, create=True).close()
    state = pipeline(family="digits-mlp", n=6, seed=0, checkpoints=[1, 2], lake=lake,
                     properties=["performance", "weight_stats"], tag="e2e", targets=["test_accuracy"],
                     config={"epochs": 2, "ensemble": 1}, suite="e2e", out_dir=str(tmp_path / "reports"), seeds=[0],
                     return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    flow_run_id = str(state.state_details.flow_run_id)

    with Lake.open(lake, read_only=True) as lk:
        tagged = lk.resolve("e2e")
        models = {m for (m,) in lk.fetch("SELECT model_id FROM lake.main.models")}
        # the tag names the labelled snapshot WeightNet trained on
        assert out["train"]["trained_on_snapshot"] == tagged
        with Lake.open(lake, at="e2e") as at_tag:
            assert at_tag.fetch("SELECT count(DISTINCT model_id) FROM lake.main.labels "
                                "WHERE property = 'test_accuracy'")[0][0] == len(models) == 12
        preds = lk.fetch("SELECT model_id, property, value FROM lake.main.predictions WHERE run_id = ?",
                         [out["train"]["run_id"]])
        runs = dict(lk.fetch("SELECT kind || ':' || run_id, status FROM lake.main.runs"))
    assert {m for m, _, _ in preds} == models and {p for _, p, _ in preds} == {"test_accuracy"}
    assert len({round(v, 6) for _, _, v in preds}) > 1  # a trained model, not one constant
    assert out["train"]["predictions"] == len(preds)

    ev = out["report"]["evaluation"]
    assert ev["status"] == "completed" and ev["failures"] == []
    assert runs[f"evaluate:{ev['run_id']}"] == "completed"
    assert runs[f"weightnet:{out['train']['run_id']}"] == "completed"
    report = pathlib.Path(ev["report_path"]).read_text()
    assert f"on snapshot {tagged}" in report and "## Status" not in report
    assert {r["predictor"] for r in ev["headline"]} == {"weightnet", "statnn-gbt"}

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": [flow_run_id]}))
        subflow_arts = client.read_artifacts(artifact_filter=ArtifactFilter(key={"any_": ["report-e2e"]}))
    summary = [a for a in arts if a.key == "pipeline"]
    assert len(summary) == 1 and "| tag | e2e |" in summary[0].data and "evaluated" in summary[0].data
    assert any(ev["run_id"] in (a.description or "") or ev["run_id"] in str(a.data) for a in subflow_arts)
    assert_report_flow_fails_on_a_partial_evaluation(lake, tmp_path, monkeypatch)


def assert_report_flow_fails_on_a_partial_evaluation(lake: str, tmp_path: pathlib.Path, monkeypatch) -> None:
    """A predictor that raises: the report flow still publishes the report (failures first), then fails."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter

    from flows.report import report
    from evaluation import experiments
    from evaluation import run as eval_run

    real = experiments.make_predictor

    def make(name, device="cpu", overrides=None):
        if name == "nfn":
            raise RuntimeError("injected failure of nfn")
        return real(name, device, overrides)

    monkeypatch.setattr(experiments, "make_predictor", make)
    monkeypatch.setitem(eval_run.SUITES, "e2e-broken", dataclasses.replace(
        eval_run.SUITES["e2e"], name="e2e-broken", predictors=("statnn-gbt", "nfn")))
    state = report(lake=lake, suite="e2e-broken", at="e2e", out_dir=str(tmp_path / "reports"), seeds=[0],
                   return_state=True)
    assert state.is_failed() and "partial" in state.message and "injected failure of nfn" in state.message
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key={"any_": ["report-e2e-broken"]}, flow_run_id={"any_": [str(state.state_details.flow_run_id)]}))
    assert len(arts) == 1 and arts[0].data.index("## Status: PARTIAL") < arts[0].data.index("## Headline")


# --- make serve -------------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _deployment_names(api_url: str) -> set[str]:
    req = urllib.request.Request(api_url + "/deployments/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return {d["name"] for d in json.loads(r.read())}


def test_make_serve_serves_the_ui_registers_deployments_and_stops_on_sigint(tmp_path):
    from core.net import free_port

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "deploy.serve", "--port", str(port), "--lake",
                                 str(tmp_path / "lake"), "--home", str(tmp_path / "home")],
                                cwd=ROOT, env=clean_env(), stdout=fh, stderr=subprocess.STDOUT)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 420
        while "Press Ctrl-C to stop." not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"serve did not come up:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(url + "/", timeout=10) as r:  # the UI (redirects to the V2 UI)
            page = r.read().decode(errors="replace")
        assert r.status == 200 and "<html" in page.lower() and "prefect" in page.lower()
        assert _deployment_names(url + "/api") == DEPLOYMENTS
        children = _descendants(proc.pid)
        assert len(children) >= 3  # the server and a worker per pool (cpu, gpu)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text(errors="replace")
    assert "stopping workers and server" in text
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [p for p in children if _alive(p)] == [], "serve left processes behind"
    with pytest.raises(OSError):  # nothing listens on the port any more
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=3)


def test_make_serve_interrupted_while_starting_leaves_no_server(tmp_path):
    """Ctrl-C during the server's start-up (it runs in its own session, so only serve can stop it). serve
    starts with SIGINT ignored, as a background job of a non-interactive shell (`make serve &`, CI) does:
    it must still stop on Ctrl-C."""
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "deploy.serve", "--port", "0", "--lake", str(tmp_path / "lake"),
                                 "--home", str(tmp_path / "home")], cwd=ROOT, env=clean_env(), stdout=fh,
                                stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120
        children: list[int] = []
        while not children:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            children = _descendants(proc.pid)
            time.sleep(0.2)
        assert "Press Ctrl-C" not in log.read_text(errors="replace")  # still starting
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [p for p in children if _alive(p)] == [], "the Prefect server outlived serve"


# --- make demo --------------------------------------------------------------------------------------
def test_demo_runs_the_pipeline_at_a_tiny_size(tmp_path):
    lake = tmp_path / "lake"
    cmd = [sys.executable, "-m", "flows.demo", "--lake", str(lake), "--family", "digits-mlp", "--n", "3",
           "--properties", "performance,weight_stats", "--targets", "test_accuracy", "--suite", "none",
           "--home", str(tmp_path / "home")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=clean_env(ZOO_RUNS=str(tmp_path / "runs")), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "WeightNet Zoo demo" in proc.stdout and "tag 'demo'" in proc.stdout
    with Lake.open(lake, read_only=True) as lk:
        n_models = lk.fetch("SELECT count(*) FROM lake.main.models")[0][0]
        demo = lk.resolve("demo")
        n_labelled = lk.fetch("SELECT count(DISTINCT model_id) FROM lake.main.labels")[0][0]
        n_preds = lk.fetch("SELECT count(*) FROM lake.main.predictions")[0][0]
        with Lake.open(lake, at="demo") as at_tag:  # the tag names the labelled snapshot
            tagged_labels = at_tag.fetch("SELECT count(DISTINCT model_id) FROM lake.main.labels")[0][0]
    assert n_models == 6 and n_labelled == 6 and n_preds == 6  # 3 members x 2 checkpoints, all labelled, predicted
    assert demo > 0 and tagged_labels == 6
    assert f"lake {lake}: 6 models" in proc.stdout
