"""The Prefect UI in a real headless Chromium (Debian's chromium, driven by Playwright): find the
zoo-build deployment, press Run -> Quick run, and the run completes on a process worker and lands a
snapshot holding the models."""
from __future__ import annotations

import pathlib
import re
import urllib.parse
from contextlib import contextmanager

import pytest

from deploy.deployments import register
from deploy.server import start_worker, stop
from fixtures.prefect_runs import wait_flow_run
from storage.lake import Lake

CHROMIUM = pathlib.Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]

FAMILY = "digits-mlp"  # the cheapest digits family keeps the run short

pytestmark = pytest.mark.slow


@contextmanager
def chromium():
    """Headless Debian chromium under Playwright. Playwright's sync API runs an event loop in this thread
    while open, so Prefect's sync calls (which would turn async) happen before or after it."""
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: apt-get install -y chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


def assert_local_only(route, ui_host: str) -> None:
    """Offline: every request leaving 127.0.0.1 (the V2 UI's analytics config) is aborted."""
    host = urllib.parse.urlparse(route.request.url).hostname
    if host in (ui_host, "localhost") or route.request.url.startswith("data:"):
        route.continue_()
    else:
        route.abort()


def click_quick_run(page, ui: str) -> dict:
    """Deployments page -> zoo-build -> Run -> Quick run; returns the create_flow_run response body."""
    page.goto(f"{ui}/deployments", wait_until="domcontentloaded")
    page.get_by_role("link", name="zoo-build", exact=True).first.click(timeout=60_000)
    page.get_by_role("button", name="Run", exact=True).first.click(timeout=60_000)
    with page.expect_response(lambda r: re.search(r"/api/deployments/[^/]+/create_flow_run$", r.url)
                              and r.request.method == "POST", timeout=60_000) as resp:
        page.get_by_text("Quick run", exact=True).first.click(timeout=30_000)
    r = resp.value
    return {"status": r.status, "body": r.json() if r.status < 300 else r.text()}


def test_quick_run_from_the_ui_lands_a_snapshot(prefect_server, tmp_path) -> None:
    server, home = prefect_server
    lake_dir = tmp_path / "ui-lake"
    Lake.open(lake_dir, create=True).close()
    register(str(lake_dir), build_n=2, build_family=FAMILY, only=("zoo-build",))
    with Lake.open(lake_dir, read_only=True) as lk:
        before = lk.current_snapshot()

    host = urllib.parse.urlparse(server.url).hostname
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.route("**/*", lambda route: assert_local_only(route, host))
        page = context.new_page()
        created = click_quick_run(page, server.url)
        if created["status"] == 503:  # seen rarely on a SQLite-backed server; no run was created
            created = click_quick_run(page, server.url)
        assert created["status"] == 201, created
        flow_run_id = created["body"]["id"]
        page.goto(f"{server.url}/runs/flow-run/{flow_run_id}", wait_until="domcontentloaded")
        page.get_by_role("link", name="zoo-build").first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "flow-run.png"))
        context.close()

    worker = start_worker("cpu", home, server.api_url, run_once=True, fast=True, log=home / "worker-ui.log")
    try:
        state = wait_flow_run(flow_run_id, timeout=300)
    finally:
        stop(worker, grace=60)
    assert state.is_completed(), f"flow run ended {state.type}: {state.message}"
    with Lake.open(lake_dir, read_only=True) as lk:
        assert lk.current_snapshot() > before
        n, run_ids = lk.fetch("SELECT count(*), count(DISTINCT run_id) FROM models")[0]
    assert n >= 2 and run_ids == 2  # two members (each with its checkpoints) of the default build
