"""Start and stop a local Prefect server and process workers as subprocesses (used by `make serve`
and by the tests). Everything binds to 127.0.0.1 and works offline; state lives under ``home``."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from core.errors import ZooError
from core.net import free_port

PREFECT = [sys.executable, "-m", "prefect"]


class ServerError(ZooError):
    """The Prefect server or a worker did not start."""


def prefect_env(home: str | os.PathLike, api_url: str | None = None, fast: bool = False) -> dict[str, str]:
    """Environment for the server, workers and flow runs: one Prefect home, analytics off, the API URL.
    ``fast`` polls every second (tests, demos) instead of Prefect's defaults."""
    env = dict(os.environ)
    home = str(pathlib.Path(home).absolute())
    env.update({"PREFECT_HOME": home, "PREFECT_LOCAL_STORAGE_PATH": str(pathlib.Path(home) / "storage"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
                "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
                # the scheduler must really create runs for cron deployments (see PLATFORM.md: SQLAlchemy pin)
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5" if fast else "60"})
    if fast:
        env.update({"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"})
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        env.pop("PREFECT_API_URL", None)
    return env


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT (the UI); the API is url + "/api"
    proc: subprocess.Popen
    log: pathlib.Path

    @property
    def api_url(self) -> str:
        return self.url + "/api"


def wait_healthy(api_url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"the Prefect server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(api_url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ServerError(f"the Prefect server at {api_url} did not become healthy within {timeout:.0f} s")


def start_server(home: str | os.PathLike, port: int | None = None, timeout: float = 120.0,
                 fast: bool = False) -> Server:
    """``prefect server start`` on 127.0.0.1 with its own home (SQLite database, UI served from the wheel)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    home = pathlib.Path(home)
    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    env = prefect_env(home, None, fast=fast)
    env["PREFECT_UI_API_URL"] = url + "/api"
    with open(log, "ab") as fh:
        proc = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url + "/api", timeout, proc)
    except ServerError as e:
        stop(proc)
        tail = log.read_text(errors="replace")[-2000:]
        raise ServerError(f"{e}; log tail:\n{tail}") from None
    except BaseException:  # Ctrl-C while it starts: the server has its own session, so stop it here
        stop(proc)
        raise
    return Server(url, proc, log)


def start_worker(pool: str, home: str | os.PathLike, api_url: str, run_once: bool = False, fast: bool = False,
                 log: pathlib.Path | None = None) -> subprocess.Popen:
    """A process worker for ``pool`` (``--run-once``: take the due runs, finish them, exit)."""
    cmd = [*PREFECT, "worker", "start", "--pool", pool, "--type", "process"]
    if run_once:
        cmd.append("--run-once")
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        # own session: a terminal Ctrl-C reaches only `make serve`, which then stops each worker once, cleanly
        return subprocess.Popen(cmd, env=prefect_env(home, api_url, fast=fast), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        if log:
            out.close()


def stop(proc: subprocess.Popen, grace: float = 15.0) -> int | None:
    """SIGINT (workers ignore SIGTERM), then SIGKILL when it has not exited within ``grace`` seconds."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)
