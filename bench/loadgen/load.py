"""Readers beside writers for a bounded time (issue 19 §3), shared by bench/faults.py and the tests.

``run_load`` starts ``writers`` writer processes (bench.loadgen.stress: batches of tiny models + a label
each, for ``seconds`` after each has started) and ``readers`` readers, reading until the last writer
exits: ``sql_readers`` of them loop over real `zoo sql` processes, the rest are threads of this process
opening the lake read-only. Every read is ONE statement (bench.loadgen.stress.consistency_sql), so it
sees one snapshot, which must be consistent and never older than the reader's previous one. Every thread's and process's outcome is counted: an exception,
a non-zero exit or an inconsistent snapshot is a failure, kept with its message.
"""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from storage.lake import Lake
from bench.loadgen.stress import assert_consistent_counts, audit_counts, consistency_sql, consistent_snapshot

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LoadConfig:
    writers: int = 4  # writer processes
    readers: int = 8  # readers in all
    sql_readers: int = 4  # of the readers: loops of `zoo sql` processes (the others are threads here)
    seconds: float = 30.0  # how long writers keep starting batches and readers keep reading
    batch_size: int = 20  # models per batch (one snapshot, plus one more for its labels)


@dataclass
class LoadResult:
    seconds: float = 0.0
    reads: int = 0  # consistent reads (in-process + zoo sql)
    sql_reads: int = 0  # of which through `zoo sql` processes
    commits: int = 0  # snapshots the writers committed (2 per batch)
    latencies: list[float] = field(default_factory=list)  # seconds per successful read
    failures: list[str] = field(default_factory=list)  # one line per failed read / thread / process
    lost: int = 0  # models a writer reported written that are missing
    doubled: int = 0  # duplicate rows (models, tensors, labels)
    unexpected: int = 0  # models no writer reported (a commit that landed after a writer failed)

    @property
    def reads_per_s(self) -> float:
        return self.reads / self.seconds if self.seconds else 0.0

    @property
    def writes_per_s(self) -> float:
        return self.commits / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]

    @property
    def ok(self) -> bool:
        return not (self.failures or self.lost or self.doubled or self.unexpected)


def _in_process_reader(location: str, size: int, stop: threading.Event,
                       record: Callable[[str, float | None], None]) -> None:
    last = -1
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            with Lake.open(location, read_only=True) as lk:
                row = consistent_snapshot(lk, size)
            assert row["snap"] >= last, f"snapshot went back from {last} to {row['snap']}"
            last = row["snap"]
            record("", time.perf_counter() - t0)
        except BaseException as e:  # noqa: BLE001 - every outcome is counted, none may vanish with the thread
            record(f"reader thread: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", None)
        time.sleep(0.02)


def _sql_reader(location: str, size: int, stop: threading.Event, env: dict,
                record: Callable[[str, float | None], None]) -> None:
    last = -1
    cmd = [sys.executable, "-m", "cli", "sql", consistency_sql(size), "--format", "json"]
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=ROOT, env={**env, "ZOO_LAKE": location}, capture_output=True, text=True,
                               timeout=300)
            if p.returncode != 0:
                tail = (p.stderr.strip() or p.stdout.strip() or "no output").splitlines()[-1]
                raise RuntimeError(f"zoo sql exited {p.returncode}: {tail}")
            row = json.loads(p.stdout)[0]
            assert_consistent_counts(row)
            assert row["snap"] >= last, f"snapshot went back from {last} to {row['snap']}"
            last = row["snap"]
            record("sql", time.perf_counter() - t0)
        except BaseException as e:  # noqa: BLE001
            record(f"zoo sql reader: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", None)


def run_load(location: str, config: LoadConfig = LoadConfig()) -> LoadResult:
    """Writers and readers together for ``config.seconds``; then an audit of every row. Child processes
    get this process's environment (set ``ZOO_DATA_PATH`` there for a PostgreSQL catalog)."""
    env = dict(os.environ)
    Lake.open(location, create=True).close()  # the lake exists before writers and readers race for it
    res, lock = LoadResult(), threading.Lock()

    def record(kind_or_failure: str, latency: float | None) -> None:
        with lock:
            if latency is None:
                res.failures.append(kind_or_failure)
                return
            res.reads += 1
            res.sql_reads += kind_or_failure == "sql"
            res.latencies.append(latency)

    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "bench.loadgen.stress", "writer", location, str(w), str(10**6),
                               str(config.batch_size), str(config.seconds)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(config.writers)]
    stop = threading.Event()  # readers run until every writer has exited: they overlap all the writes
    n_sql = min(config.sql_readers, config.readers)
    threads = [threading.Thread(target=_sql_reader, args=(location, config.batch_size, stop, env, record), daemon=True)
               for _ in range(n_sql)]
    threads += [threading.Thread(target=_in_process_reader, args=(location, config.batch_size, stop, record),
                                 daemon=True) for _ in range(config.readers - n_sql)]
    for th in threads:
        th.start()
    batches = []
    for w, p in enumerate(procs):
        out, err = p.communicate()
        done = [int(line.split("=", 1)[1]) for line in out.splitlines() if line.startswith("batches=")]
        if p.returncode != 0 or not done:
            tail = (err.strip() or "no output").splitlines()[-1]
            res.failures.append(f"writer {w} exited {p.returncode}: {tail}")
        batches.append(done[0] if done else 0)
    stop.set()
    for th in threads:
        th.join()
    res.seconds = time.monotonic() - t0
    res.commits = 2 * sum(batches)
    a = audit_counts(location, batches, config.batch_size)
    res.lost, res.doubled, res.unexpected = a.lost, a.duplicates, a.unexpected
    if not (a.tensors_ok and a.labels_ok):
        res.failures.append("audit: a stored model lacks tensors or its label")
    return res
