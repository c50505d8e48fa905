"""`make serve`: a local Prefect server with its UI (127.0.0.1, offline), a process worker per pool
(``cpu``, ``gpu``), and the project's deployments registered. Ctrl-C stops everything cleanly.

    python -m deploy.serve [--port 4200] [--lake ./lake] [--home .prefect]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import time

from core import settings
from deploy.deployments import POOLS, ROOT, register
from deploy.server import prefect_env, start_server, start_worker, stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=settings.prefect_port())
    ap.add_argument("--lake", default=settings.lake_location(), help="lake location the deployments use")
    ap.add_argument("--home", default=str(settings.prefect_home(ROOT / ".prefect")),
                    help="Prefect home: server database, results, logs")
    args = ap.parse_args(argv)
    home = pathlib.Path(args.home).absolute()
    lake = args.lake if ":" in args.lake.split("/")[0] else str(pathlib.Path(args.lake).absolute())

    # SIGTERM stops everything the way Ctrl-C does, from the first moment (the children have their own sessions)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # a process started in the background by a non-interactive shell (`cmd &`, nohup, CI runners) inherits
    # SIGINT as ignored, and Python then leaves it ignored: "Press Ctrl-C to stop" must hold there too
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"starting the Prefect server (home {home}) ...", flush=True)
    try:
        server = start_server(home, args.port)
    except KeyboardInterrupt:
        print("\nstopped while the server was starting", flush=True)
        return 0
    workers = []
    try:
        # this process talks to the new server: settings come from the environment before prefect loads
        os.environ.update({k: v for k, v in prefect_env(home, server.api_url).items()
                           if k.startswith("PREFECT_")})
        ids = register(lake)
        for pool in POOLS:
            workers.append(start_worker(pool, home, server.api_url, log=home / f"worker-{pool}.log"))
        print(f"\nPrefect UI: {server.url}\n"
              f"  deployments: {', '.join(ids)} (lake {lake})\n"
              f"  workers: {', '.join(POOLS)} (logs in {home})\n"
              f"  PREFECT_API_URL={server.api_url}\n"
              "Press Ctrl-C to stop.", flush=True)
        while server.proc.poll() is None:
            time.sleep(1)
        print(f"the server exited with code {server.proc.returncode}; see {server.log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping workers and server ...", flush=True)
        return 0
    finally:
        for w in workers:
            stop(w)
        stop(server.proc)


if __name__ == "__main__":
    sys.exit(main())
