"""Fault and concurrency scenarios at scale (issue 8 §2, §7). Prints, per scenario: cases tried,
crashes survived, rows lost (must be 0), duplicates (must be 0); exits 1 if any row was lost or doubled.

Scenarios live in the ``SCENARIOS`` registry: each takes a work folder and returns a ``Outcome``.
The kill/rerun scenarios for build, labeling and WeightNet training register here the same way:

    @SCENARIOS.register("build-kill-rerun")
    def build_kill_rerun(work: pathlib.Path, scale: float) -> Outcome: ...

    .venv/bin/python bench/faults.py [--only NAME ...] [--scale 1.0] [--postgres DSN --data DIR]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.registry import Registry  # noqa: E402
from storage.lake import Lake  # noqa: E402
from storage.stress import audit, check_consistent  # noqa: E402


@dataclass(frozen=True)
class Outcome:
    cases: int  # scenario runs / writer processes / kill points tried
    crashes_survived: int  # processes killed (or failed) whose rerun completed
    rows_lost: int  # must be 0
    duplicates: int  # must be 0
    note: str = ""


SCENARIOS: Registry = Registry("fault scenario")


def concurrent_writers(location: str, writers: int, batches: int, size: int, env: dict | None = None) -> Outcome:
    """``writers`` processes, each ``batches`` x ``size`` models (+ a label each), while a reader checks
    every snapshot it sees."""
    with Lake.open(location, create=True):
        pass
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "storage.stress", "writer", location, str(w), str(batches), str(size)],
                              cwd=ROOT, env={**os.environ, **(env or {})}, stderr=subprocess.PIPE, text=True)
             for w in range(writers)]
    reads, bad, stop = [0], [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                with Lake.open(location, read_only=True) as lk:
                    check_consistent(lk, size)
                reads[0] += 1
            except AssertionError as e:
                bad.append(str(e))
            time.sleep(0.2)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    failed = 0
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            failed += 1
            print(f"  writer failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}")
    stop.set()
    th.join()
    elapsed = time.perf_counter() - t0
    a = audit(location, writers, batches, size)
    rows = writers * batches * size
    note = (f"{rows} models + {rows * 4} tensors + {rows} labels in {elapsed:.1f} s "
            f"({rows / elapsed:.0f} models/s); {reads[0]} consistent reads, {len(bad)} inconsistent; "
            f"{failed} writers failed")
    if bad:
        note += f"; first inconsistency: {bad[0]}"
    return Outcome(writers, 0, a.lost + (0 if a.tensors_ok and a.labels_ok else 1) + len(bad), a.duplicates, note)


@SCENARIOS.register("sqlite-4-writers")
def sqlite_writers(work: pathlib.Path, scale: float) -> Outcome:
    """4 writer processes on a SQLite catalog, 1,000 models each (scale 1)."""
    batches = max(1, int(10 * scale))
    return concurrent_writers("sqlite:" + str(work / "sqlite-lake"), 4, batches, 100)


@SCENARIOS.register("duckdb-file-4-writers")
def duckdb_writers(work: pathlib.Path, scale: float) -> Outcome:
    """4 writer processes taking turns on the DuckDB-file catalog (Lake.open waits for the lock)."""
    batches = max(1, int(5 * scale))
    return concurrent_writers(str(work / "duckdb-lake"), 4, batches, 100, {"ZOO_LOCK_TIMEOUT": "600"})


@SCENARIOS.register("build-label-train-kill-rerun")
def kill_rerun(work: pathlib.Path, scale: float) -> Outcome:
    """bench/crash_scenarios.py: SIGKILL a build, a labeling run and a WeightNet training, rerun, compare."""
    from bench.crash_scenarios import CrashConfig, run_crash_scenarios

    res = run_crash_scenarios(work / "crash", CrashConfig(n=max(4, int(24 * scale)), kills=max(2, int(8 * scale))))
    lost = sum(s.diff.rows_lost + sum(s.diff.extra.values()) + len(s.diff.unreadable) for s in res.values())
    return Outcome(sum(s.job.attempts for s in res.values()), sum(s.job.killed for s in res.values() if s.job.completed),
                   lost, sum(s.diff.n_duplicates for s in res.values()),
                   "; ".join(f"{k}: {s.job.killed} kills, {s.diff.snapshots} snapshots read" for k, s in res.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help=f"scenarios to run (known: {', '.join(SCENARIOS.names())})")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the batches per writer")
    ap.add_argument("--postgres", default=None, help="also run 4 writers on this PostgreSQL DSN (libpq string)")
    ap.add_argument("--data", default=None, help="data folder for --postgres (ZOO_DATA_PATH)")
    args = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="zoo-faults-"))
    names = args.only or SCENARIOS.names()
    results: list[tuple[str, Outcome]] = []
    for name in names:
        print(f"[{name}] running ...", flush=True)
        results.append((name, SCENARIOS.get(name)(work, args.scale)))
    if args.postgres:
        data = args.data or str(work / "pg-data")
        os.environ["ZOO_DATA_PATH"] = data
        results.append(("postgres-4-writers", concurrent_writers("postgres:" + args.postgres, 4,
                                                                  max(1, int(10 * args.scale)), 100,
                                                                  {"ZOO_DATA_PATH": data})))
    print(f"\n{'scenario':<24} {'cases':>6} {'crashes survived':>17} {'rows lost':>10} {'duplicates':>11}")
    for name, o in results:
        print(f"{name:<24} {o.cases:>6} {o.crashes_survived:>17} {o.rows_lost:>10} {o.duplicates:>11}   {o.note}")
    total_lost = sum(o.rows_lost for _, o in results)
    total_dup = sum(o.duplicates for _, o in results)
    print(f"{'total':<24} {sum(o.cases for _, o in results):>6} {sum(o.crashes_survived for _, o in results):>17} "
          f"{total_lost:>10} {total_dup:>11}   (targets: 0 lost, 0 duplicates)")
    sys.exit(1 if total_lost or total_dup else 0)


if __name__ == "__main__":
    main()
