"""Fault, concurrency and load scenarios at scale (issue 8 §2, §7; issue 19). Prints, per scenario: cases
tried, crashes survived, failures (any exception in a reader or writer thread or process: must be 0),
rows lost (must be 0), duplicates (must be 0), and for the load scenarios reads/s, writes/s and p50/p95
read latency; every failure is printed. Exits 1 if anything failed, was lost or was doubled.

Scenarios live in the ``SCENARIOS`` registry: each takes a work folder and a ``Size`` and returns an
``Outcome``:

    @SCENARIOS.register("build-kill-rerun")
    def build_kill_rerun(work: pathlib.Path, size: Size) -> Outcome: ...

    .venv/bin/python bench/faults.py [--quick] [--only NAME ...] [--scale 1.0] [--seconds 30] [--postgres DSN]

PostgreSQL scenarios start a throwaway local server (storage/pgserver.py) unless ``--postgres DSN`` is
given; without server binaries they are reported as skipped.
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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.registry import Registry  # noqa: E402
from storage.lake import Lake  # noqa: E402
from bench.loadgen.load import LoadConfig, LoadResult, run_load  # noqa: E402
from storage.pgserver import NoPostgres, local_postgres  # noqa: E402
from bench.loadgen.stress import audit, check_consistent  # noqa: E402


@dataclass(frozen=True)
class Size:
    """How big a run is: ``--quick`` shrinks everything to seconds."""
    scale: float = 1.0  # multiplies the batches per writer
    seconds: float = 30.0  # load scenarios: how long writers write
    quick: bool = False
    postgres: str | None = None  # an existing PostgreSQL server's DSN (else a local one is started)

    @property
    def writers(self) -> int:
        """Writer processes of the *-4-writers scenarios (2 in --quick: process start-up dominates)."""
        return 2 if self.quick else 4


@dataclass(frozen=True)
class Outcome:
    cases: int  # scenario runs / writer processes / kill points tried
    crashes_survived: int  # processes killed (or failed) whose rerun completed
    rows_lost: int  # must be 0
    duplicates: int  # must be 0
    note: str = ""
    failures: tuple[str, ...] = ()  # one line per failed thread / process / read: must be empty
    load: LoadResult | None = None  # load scenarios: throughput and latency
    skipped: str = ""  # why the scenario could not run here (not a failure)


SCENARIOS: Registry = Registry("fault scenario")


def concurrent_writers(location: str, writers: int, batches: int, size: int, env: dict | None = None) -> Outcome:
    """``writers`` processes, each ``batches`` x ``size`` models (+ a label each), while a reader checks
    every snapshot it sees."""
    with Lake.open(location, create=True):
        pass
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "bench.loadgen.stress", "writer", location, str(w), str(batches),
                               str(size)],
                              cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
             for w in range(writers)]
    reads, bad, failures, stop = [0], [], [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                with Lake.open(location, read_only=True) as lk:
                    check_consistent(lk, size)
                reads[0] += 1
            except AssertionError as e:
                bad.append(str(e))
            except BaseException as e:  # noqa: BLE001 - a crashed reader is a failure, never a silent thread death
                failures.append(f"reader: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            time.sleep(0.2)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    for w, p in enumerate(procs):
        _, err = p.communicate()
        if p.returncode != 0:
            failures.append(f"writer {w} exited {p.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    stop.set()
    th.join()
    elapsed = time.perf_counter() - t0
    a = audit(location, writers, batches, size)
    rows = writers * batches * size
    note = (f"{rows} models + {rows * 4} tensors + {rows} labels in {elapsed:.1f} s "
            f"({rows / elapsed:.0f} models/s); {reads[0]} consistent reads, {len(bad)} inconsistent")
    failures += [f"inconsistent read: {b}" for b in bad]
    if not (a.tensors_ok and a.labels_ok):
        failures.append("audit: a stored model lacks tensors or its label")
    return Outcome(writers, 0, a.lost, a.duplicates, note, tuple(failures))


def load_outcome(location: str, size: Size) -> Outcome:
    """4 writers + 8 readers (4 looping `zoo sql` processes, 4 threads here) for ``size.seconds``."""
    cfg = LoadConfig(writers=2, readers=2, sql_readers=1, seconds=size.seconds, batch_size=5) if size.quick else \
        LoadConfig(seconds=size.seconds)
    r = run_load(location, cfg)
    note = (f"{cfg.writers} writers + {cfg.readers} readers ({cfg.sql_readers} zoo sql) for {r.seconds:.0f} s: "
            f"{r.reads} consistent reads ({r.sql_reads} via zoo sql), {r.commits} commits, {r.unexpected} unexpected")
    return Outcome(cfg.writers + cfg.readers, 0, r.lost, r.doubled, note, tuple(r.failures), r)


@contextmanager
def postgres_location(work: pathlib.Path, size: Size, name: str) -> Iterator[str]:
    """A PostgreSQL catalog location (data under ``work``): on ``--postgres`` or a local throwaway server."""
    data = str(work / f"{name}-data")
    before = os.environ.get("ZOO_DATA_PATH")
    os.environ["ZOO_DATA_PATH"] = data  # writer and reader processes inherit it
    try:
        if size.postgres:
            yield "postgres:" + size.postgres
        else:
            with local_postgres() as new_database:
                yield "postgres:" + new_database()
    finally:
        if before is None:
            os.environ.pop("ZOO_DATA_PATH", None)
        else:
            os.environ["ZOO_DATA_PATH"] = before


@SCENARIOS.register("sqlite-4-writers")
def sqlite_writers(work: pathlib.Path, size: Size) -> Outcome:
    """4 writer processes on a SQLite catalog, 1,000 models each (scale 1)."""
    batches, per = (1, 5) if size.quick else (max(1, int(10 * size.scale)), 100)
    return concurrent_writers("sqlite:" + str(work / "sqlite-lake"), size.writers, batches, per)


@SCENARIOS.register("duckdb-file-4-writers")
def duckdb_writers(work: pathlib.Path, size: Size) -> Outcome:
    """4 writer processes taking turns on the DuckDB-file catalog (Lake.open waits for the lock)."""
    batches, per = (1, 5) if size.quick else (max(1, int(5 * size.scale)), 100)
    return concurrent_writers(str(work / "duckdb-lake"), size.writers, batches, per, {"ZOO_LOCK_TIMEOUT": "600"})


@SCENARIOS.register("postgres-4-writers")
def postgres_writers(work: pathlib.Path, size: Size) -> Outcome:
    """4 writer processes on a PostgreSQL catalog, 1,000 models each (scale 1)."""
    batches, per = (1, 5) if size.quick else (max(1, int(10 * size.scale)), 100)
    with postgres_location(work, size, "pg-writers") as loc:
        return concurrent_writers(loc, size.writers, batches, per)


@SCENARIOS.register("sqlite-load")
def sqlite_load(work: pathlib.Path, size: Size) -> Outcome:
    """Readers beside writers on a SQLite catalog (bench/loadgen/load.py)."""
    return load_outcome("sqlite:" + str(work / "sqlite-load"), size)


@SCENARIOS.register("postgres-load")
def postgres_load(work: pathlib.Path, size: Size) -> Outcome:
    """Readers beside writers on a PostgreSQL catalog (bench/loadgen/load.py)."""
    with postgres_location(work, size, "pg-load") as loc:
        return load_outcome(loc, size)


@SCENARIOS.register("build-label-train-kill-rerun")
def kill_rerun(work: pathlib.Path, size: Size) -> Outcome:
    """bench/crash_scenarios.py: SIGKILL a build, a labeling run and a WeightNet training, rerun, compare."""
    from bench.crash_scenarios import CrashConfig, run_crash_scenarios

    if size.quick:
        return Outcome(0, 0, 0, 0, skipped="not in --quick (bench/crash_scenarios.py --quick runs it)")
    scale = size.scale
    res = run_crash_scenarios(work / "crash", CrashConfig(n=max(4, int(24 * scale)), kills=max(2, int(8 * scale))))
    lost = sum(s.diff.rows_lost + sum(s.diff.extra.values()) + len(s.diff.unreadable) for s in res.values())
    return Outcome(sum(s.job.attempts for s in res.values()), sum(s.job.killed for s in res.values() if s.job.completed),
                   lost, sum(s.diff.n_duplicates for s in res.values()),
                   "; ".join(f"{k}: {s.job.killed} kills, {s.diff.snapshots} snapshots read" for k, s in res.items()))


def run_scenario(name: str, work: pathlib.Path, size: Size) -> Outcome:
    """One scenario; an exception escaping it is a failure of the scenario, printed, never a crash of the bench."""
    try:
        return SCENARIOS.get(name)(work, size)
    except NoPostgres as e:
        return Outcome(0, 0, 0, 0, skipped=str(e))
    except Exception as e:  # noqa: BLE001 - reported in the table and in the exit code
        return Outcome(0, 0, 0, 0, failures=(f"scenario raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",))


def report(results: list[tuple[str, Outcome]]) -> int:
    """Print the tables; returns the exit code (1 if anything failed, was lost or was doubled)."""
    print(f"\n{'scenario':<28} {'cases':>6} {'crashes survived':>17} {'failures':>9} {'rows lost':>10} {'duplicates':>11}")
    for name, o in results:
        if o.skipped:
            print(f"{name:<28} {'skipped':>6}   {o.skipped}")
            continue
        print(f"{name:<28} {o.cases:>6} {o.crashes_survived:>17} {len(o.failures):>9} {o.rows_lost:>10} "
              f"{o.duplicates:>11}   {o.note}")
    loads = [(n, o.load) for n, o in results if o.load is not None]
    if loads:
        print(f"\n{'load scenario':<28} {'reads/s':>8} {'writes/s':>9} {'p50 read s':>11} {'p95 read s':>11}")
        for name, r in loads:
            print(f"{name:<28} {r.reads_per_s:>8.2f} {r.writes_per_s:>9.2f} {r.percentile(50):>11.3f} "
                  f"{r.percentile(95):>11.3f}")
    n_fail = sum(len(o.failures) for _, o in results)
    lost = sum(o.rows_lost for _, o in results)
    dup = sum(o.duplicates for _, o in results)
    print(f"{'total':<28} {sum(o.cases for _, o in results):>6} {sum(o.crashes_survived for _, o in results):>17} "
          f"{n_fail:>9} {lost:>10} {dup:>11}   (targets: 0 failures, 0 lost, 0 duplicates)")
    for name, o in results:
        for f in o.failures[:20]:
            print(f"FAILURE {name}: {f}")
        if len(o.failures) > 20:
            print(f"FAILURE {name}: ... and {len(o.failures) - 20} more")
    return 1 if n_fail or lost or dup else 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help=f"scenarios to run (known: {', '.join(SCENARIOS.names())})")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 writers, a few seconds of load, no kill/rerun")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the batches per writer")
    ap.add_argument("--seconds", type=float, default=None, help="load scenarios: seconds of writing (default 30; 3 quick)")
    ap.add_argument("--postgres", default=None, help="DSN of an existing PostgreSQL server for the postgres scenarios")
    args = ap.parse_args(argv)
    size = Size(args.scale, args.seconds or (3.0 if args.quick else 30.0), args.quick, args.postgres)
    work = pathlib.Path(tempfile.mkdtemp(prefix="zoo-faults-"))
    print(f"fault bench: {os.cpu_count()} CPUs (shared: throughput is measured under load), work folder {work}")
    results: list[tuple[str, Outcome]] = []
    for name in args.only or SCENARIOS.names():
        print(f"[{name}] running ...", flush=True)
        results.append((name, run_scenario(name, work, size)))
    sys.exit(report(results))


if __name__ == "__main__":
    main()
