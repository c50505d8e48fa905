"""deploy/k8s-gpu-job-template.json against prefect-kubernetes' own rules, offline (no cluster, no API):
the server's base-job-template check, the worker's variable schema for every variable both declare, and
the worker's job configuration rendering the template with its job-manifest validation and flow-run
preparation. Needs the `k8s` extra (prefect-kubernetes)."""
from __future__ import annotations

import asyncio
import copy
import uuid
from unittest.mock import AsyncMock

import pytest

from deploy.deployments import k8s_gpu_template

worker_mod = pytest.importorskip("prefect_kubernetes.worker", reason="pip install -e '.[k8s]'")
from prefect.client.schemas.objects import FlowRun  # noqa: E402
from prefect.server.schemas.actions import validate_base_job_template  # noqa: E402
from prefect.utilities.schema_tools.validation import validate  # noqa: E402

Worker, JobConfig = worker_mod.KubernetesWorker, worker_mod.KubernetesWorkerJobConfiguration


def render(template: dict, values: dict) -> "JobConfig":
    """The worker's own rendering (template + job variables -> validated configuration). The client would
    resolve block and Prefect-variable references; the template holds none, so a mock that must stay unused."""
    client = AsyncMock()
    cfg = asyncio.run(JobConfig.from_template_and_values(copy.deepcopy(template), values, client=client))
    assert not client.mock_calls
    return cfg


def test_server_accepts_the_template() -> None:
    validate_base_job_template(k8s_gpu_template())  # what `prefect work-pool create --base-job-template` runs


def test_template_fits_the_worker_configuration() -> None:
    tpl, own = k8s_gpu_template(), Worker.get_default_base_job_template()
    ours = set(tpl["job_configuration"])
    assert ours <= set(own["job_configuration"]), ours - set(own["job_configuration"])
    required = set(JobConfig.model_json_schema().get("required", []))
    assert required <= ours
    # every variable the worker also declares takes the worker's type: our defaults validate in its schema
    shared = {k: v["default"] for k, v in tpl["variables"]["properties"].items()
              if k in own["variables"]["properties"] and "default" in v}
    assert {"namespace", "image", "stream_output", "pod_watch_timeout_seconds", "finished_job_ttl"} <= set(shared)
    own_schema = {**own["variables"], "required": []}
    assert validate(shared, own_schema, raise_on_error=False) == []
    assert validate({"stream_output": "yes"}, own_schema, raise_on_error=False)  # the check can fail


def test_worker_renders_a_gpu_job() -> None:
    cfg = render(k8s_gpu_template(), {"env": {"ZOO_LAKE": "postgres:dbname=zoo"}, "gpus": 2})
    cfg.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="brave-zoo", flow_id=uuid.uuid4()))
    pod = cfg.job_manifest["spec"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == 2 and res["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["ZOO_LAKE"] == "postgres:dbname=zoo" and "PREFECT__FLOW_RUN_ID" in env
    assert cfg.namespace == "weightnet-zoo" and cfg.job_manifest["metadata"]["namespace"] == "weightnet-zoo"
    assert pod["containers"][0]["image"] == "weightnet-zoo:latest"


def test_worker_refuses_a_broken_manifest() -> None:
    """The rendering above is a real check: a manifest the worker cannot run is refused."""
    tpl = k8s_gpu_template()
    del tpl["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"]
    with pytest.raises(Exception, match="missing required attributes"):
        render(tpl, {})
    tpl = k8s_gpu_template()
    tpl["job_configuration"]["job_manifest"]["kind"] = "Deployment"
    with pytest.raises(Exception, match="incompatible values"):
        render(tpl, {})
