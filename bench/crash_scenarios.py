"""Kill/rerun scenarios (issue 8 §1, §7): a zoo build, a labeling run and a WeightNet training run in
real subprocesses, are SIGKILLed at seeded random points, rerun to completion, and the lake is compared
with an uninterrupted reference run.

    .venv/bin/python bench/crash_scenarios.py [--n 24] [--kills 8] [--seed 0] [--quick]

Prints cases tried, crashes survived, rows lost (must be 0), duplicates (must be 0) and exits 1 when a
row was lost or doubled. ``--quick`` (run by the tests): the build job only, killed once, on a 2-member
zoo; it shows the bench still runs (tests/test_crash_safety.py covers all three jobs at a small size).
``run_crash_scenarios`` is the library entry point (bench/faults.py and
tests/test_crash_safety.py use the same functions at other sizes).

The same file is also the job the scenarios kill: ``python bench/crash_scenarios.py job KIND LAKE JSON``
runs one build / label / train / predict on LAKE and prints ``PROGRESS done total`` lines (flushed) so a
killer can aim at points between and inside commits.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # first, even when already on the path: bench/storage.py must not shadow storage/

from storage.lake import Lake  # noqa: E402
from storage.schema import TABLES  # noqa: E402


@dataclass(frozen=True)
class CrashConfig:
    """Sizes of one kill/rerun scenario set (defaults: the bench scale; tests pass smaller ones)."""
    family: str = "digits-mlp"  # a population family: members train together, batches commit separately
    n: int = 24  # zoo members
    checkpoints: tuple[int, ...] = (1, 3)  # epochs stored per member (each its own model)
    population_size: int = 4  # members per population = models per build snapshot / len(checkpoints)
    properties: tuple[str, ...] = ("performance", "weight_stats")  # cheap, deterministic labelers
    label_batch: int = 4  # models per labeling snapshot
    weightnet_epochs: int = 3
    kills: int = 8  # SIGKILL attempts per job
    seed: int = 0  # kill points are drawn from random.Random(seed)
    build_seed: int = 0


@dataclass
class JobOutcome:
    """One job killed ``kills`` times, then rerun to completion."""
    kind: str
    attempts: int = 0  # kill attempts started
    killed: int = 0  # processes actually SIGKILLed (the others had finished first)
    completed: bool = False  # the final rerun exited 0
    stdout: str = ""  # of the final run


@dataclass
class LakeDiff:
    """What a lake has compared with the reference lake."""
    lost: dict[str, int] = field(default_factory=dict)  # table -> reference rows missing or different
    extra: dict[str, int] = field(default_factory=dict)  # table -> rows the reference does not have
    duplicates: dict[str, int] = field(default_factory=dict)  # table -> count(*) - count(DISTINCT key)
    unreadable: list[str] = field(default_factory=list)  # "snapshot N: error" for every failed snapshot
    snapshots: int = 0  # snapshots opened and queried

    @property
    def rows_lost(self) -> int:
        return sum(self.lost.values())

    @property
    def n_duplicates(self) -> int:
        return sum(self.duplicates.values())


# --- the job (runs in the subprocess) ------------------------------------------------------------------
def _job(kind: str, location: str, params: dict) -> None:
    import torch

    torch.set_num_threads(1)  # tiny models; the machine is shared

    def progress(done: int, total: int) -> None:
        print(f"PROGRESS {done} {total}", flush=True)

    with Lake.open(location, create=True) as lk:
        if kind == "build":
            from zoo.build import build_zoo

            r = build_zoo(lk, params["family"], params["n"], params["seed"], tuple(params["checkpoints"]),
                          progress=progress, population_size=params["population_size"])
            print(f"RUN {r.run_id}", flush=True)
        elif kind == "label":
            from labeling.run import label_zoo

            label_zoo(lk, list(params["properties"]), device="cpu", batch_size=params["batch_size"],
                      progress=progress)
        elif kind == "train":
            from weightnet.config import WeightNetConfig
            from weightnet.data import DatasetConfig
            from weightnet.train import train_weightnet

            cfg = WeightNetConfig(epochs=params["epochs"])
            r = train_weightnet(lk, DatasetConfig(targets=tuple(params["targets"]), seed=cfg.seed), cfg,
                                progress=progress, runs_dir=params["runs_dir"])
            print(f"RUN {r.run_id}", flush=True)
        elif kind == "predict":
            from weightnet.predict import predict_zoo

            n = predict_zoo(lk, params["run_id"], runs_dir=params["runs_dir"], progress=progress)
            print(f"PREDICTED {n}", flush=True)
        else:
            raise SystemExit(f"unknown job kind {kind!r}")
    print("DONE", flush=True)


def job_command(kind: str, location: str | os.PathLike, params: dict) -> list[str]:
    return [sys.executable, str(pathlib.Path(__file__).resolve()), "job", kind, str(location), json.dumps(params)]


# --- the killer (runs in the parent) ---------------------------------------------------------------------
def _reader(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def run_to_end(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one job uninterrupted; raises with its stderr tail when it fails."""
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=_env())
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    return p


def kill_at(cmd: list[str], lines: int, delay: float, timeout: float = 600) -> bool:
    """Start ``cmd``; after ``lines`` PROGRESS lines and ``delay`` more seconds, SIGKILL it.
    Returns True when it was killed, False when it finished first (exit 0; anything else raises)."""
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    q: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=_reader, args=(p.stdout, q), daemon=True)]
    err: list[str] = []
    threads.append(threading.Thread(target=lambda: err.extend(p.stderr), daemon=True))
    for t in threads:
        t.start()
    seen, deadline, eof = 0, time.monotonic() + timeout, False
    while seen < lines and not eof and time.monotonic() < deadline:
        try:
            line = q.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            eof = True
        elif line.startswith("PROGRESS"):
            seen += 1
    if not eof:
        end = time.monotonic() + delay
        while time.monotonic() < end and p.poll() is None:
            time.sleep(0.01)
    killed = p.poll() is None
    if killed:
        p.kill()  # SIGKILL: no finally blocks, no atexit, no flush
    p.wait()
    for t in threads:
        t.join(timeout=5)
    if not killed and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} failed before the kill (exit {p.returncode}): {''.join(err)[-2000:]}")
    return killed


def kill_and_rerun(kind: str, cmd: list[str], rng: random.Random, kills: int, max_lines: int,
                   max_delay: float) -> JobOutcome:
    """``kills`` attempts at seeded random points (each one resumes what the previous left), then a
    final uninterrupted rerun that must complete."""
    out = JobOutcome(kind)
    for i in range(kills):
        out.attempts += 1
        # the first kill lands right after the first progress line (work started, some of it committed);
        # the others at random lines plus a random delay, often inside a training step or a commit
        lines, delay = (1, 0.0) if i == 0 else (rng.randint(1, max_lines), rng.uniform(0.0, max_delay))
        out.killed += kill_at(cmd, lines, delay)
    final = run_to_end(cmd)
    out.completed, out.stdout = True, final.stdout
    return out


def _env() -> dict:
    return {**os.environ, "ZOO_LOCK_TIMEOUT": os.environ.get("ZOO_LOCK_TIMEOUT", "120"), "PYTHONUNBUFFERED": "1"}


def progress_lines(stdout: str) -> int:
    return sum(1 for line in stdout.splitlines() if line.startswith("PROGRESS"))


def run_id_of(stdout: str) -> str:
    return next(line.split()[1] for line in stdout.splitlines() if line.startswith("RUN "))


# --- comparing lakes ---------------------------------------------------------------------------------------
# Columns compared per table: everything but wall-clock times (created_at, measured_at, ...) and
# code_version (it says ".dirty" once the working tree is edited between two runs). Runs are
# compared separately (a killed run leaves its own row); predictions carry the (run-specific) run id.
COMPARED = {
    "models": "model_id, family, arch, arch_config, dataset, train_config, seed, run_id, epoch, step, source, "
              "n_params, spec",
    "tensors": "model_id, name, ordinal, kind, shape, dtype, data",
    "labels": "model_id, property, value, labeler, labeler_version, params",
    "predictions": "model_id, property, value, lower, upper",
}


def _norm(row: tuple) -> tuple:
    """Rows as hashable, NaN-safe tuples (NaN != NaN would make every NaN label look lost)."""
    return tuple(v.hex() if isinstance(v, float) else tuple(v) if isinstance(v, list) else v for v in row)


def rows(location: str | os.PathLike, table: str) -> set[tuple]:
    with Lake.open(location, read_only=True) as lk:
        return {_norm(r) for r in lk.fetch(f"SELECT {COMPARED[table]} FROM lake.main.{table}")}


def duplicates(lk: Lake) -> dict[str, int]:
    """count(*) - count(DISTINCT key) for every table, at the lake's snapshot."""
    return {name: lk.fetch(f"SELECT count(*) - count(DISTINCT ({', '.join(t.keys)})) "
                           f"FROM lake.main.{name}")[0][0] or 0
            for name, t in TABLES.items()}


def check_snapshots(location: str | os.PathLike) -> tuple[int, list[str], dict[str, int]]:
    """Open the lake at every snapshot and query every table (count + key duplicates). Returns
    (snapshots checked, errors, the largest duplicate count seen per table)."""
    with Lake.open(location, read_only=True) as lk:
        ids = [s["snapshot_id"] for s in lk.snapshots()]
        schema_from = min((s["snapshot_id"] for s in lk.snapshots() if s["snapshot_id"] > 0), default=0)
    errors, worst = [], {name: 0 for name in TABLES}
    for sid in ids:
        if sid < schema_from:
            continue  # snapshot 0: the empty catalog, before ensure_schema's first commit
        try:
            with Lake.open(location, read_only=True, at=sid) as lk:
                for name in TABLES:
                    lk.fetch(f"SELECT count(*) FROM lake.main.{name}")
                for name, d in duplicates(lk).items():
                    worst[name] = max(worst[name], d)
        except Exception as e:  # noqa: BLE001 - every failure is a finding, reported with its snapshot
            errors.append(f"snapshot {sid}: {type(e).__name__}: {str(e).splitlines()[0]}")
    return len(ids), errors, worst


def compare_lakes(reference: str | os.PathLike, got: str | os.PathLike,
                  tables: tuple[str, ...] = ("models", "tensors", "labels"), every_snapshot: bool = True) -> LakeDiff:
    diff = LakeDiff()
    for t in tables:
        ref, new = rows(reference, t), rows(got, t)
        diff.lost[t], diff.extra[t] = len(ref - new), len(new - ref)
    with Lake.open(got, read_only=True) as lk:
        diff.duplicates = duplicates(lk)
    if every_snapshot:
        diff.snapshots, diff.unreadable, worst = check_snapshots(got)
        diff.duplicates = {t: max(diff.duplicates[t], worst[t]) for t in TABLES}
    return diff


# --- the scenarios -----------------------------------------------------------------------------------------
@dataclass
class Scenario:
    """One job kind's result: the kill/rerun outcome and the lake diff against the reference."""
    job: JobOutcome
    diff: LakeDiff
    seconds: float
    runs: list[tuple[str, str, str]] = field(default_factory=list)  # (run_id, kind, status) in the crashed lake
    note: str = ""


def build_params(c: CrashConfig) -> dict:
    return {"family": c.family, "n": c.n, "seed": c.build_seed, "checkpoints": list(c.checkpoints),
            "population_size": c.population_size}


def label_params(c: CrashConfig) -> dict:
    return {"properties": list(c.properties), "batch_size": c.label_batch}


def train_params(c: CrashConfig, runs_dir: pathlib.Path) -> dict:
    return {"epochs": c.weightnet_epochs, "targets": ["test_accuracy"], "runs_dir": str(runs_dir)}


def scenario(kind: str, reference: pathlib.Path, crashed: pathlib.Path, params: dict, c: CrashConfig,
             rng: random.Random, tables: tuple[str, ...], every_snapshot: bool = True) -> Scenario:
    """Run ``kind`` uninterrupted on ``reference`` and with kills on ``crashed``; compare."""
    t0 = time.perf_counter()
    ref = run_to_end(job_command(kind, reference, params))
    ref_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    job = kill_and_rerun(kind, job_command(kind, crashed, params), rng, c.kills,
                         max(1, progress_lines(ref.stdout)), max_delay=min(2.0, ref_seconds / 4))
    seconds = time.perf_counter() - t1
    if kind == "train":  # predictions written by each run's own checkpoint: the visible result of training
        for lake, out in ((reference, ref.stdout), (crashed, job.stdout)):
            run_to_end(job_command("predict", lake, {"run_id": run_id_of(out), "runs_dir": params["runs_dir"]}))
    diff = compare_lakes(reference, crashed, tables, every_snapshot)
    with Lake.open(crashed, read_only=True) as lk:
        runs = [tuple(r) for r in lk.fetch("SELECT run_id, kind, status FROM lake.main.runs ORDER BY started_at")]
    return Scenario(job, diff, seconds, runs, f"reference {ref_seconds:.1f} s, kill/rerun {seconds:.1f} s")


def run_crash_scenarios(work: str | os.PathLike | None = None, config: CrashConfig = CrashConfig(),
                        kinds: tuple[str, ...] = ("build", "label", "train"),
                        progress: Callable[[str, Scenario], None] | None = None) -> dict[str, Scenario]:
    """Build, label and train on a reference lake and on a lake whose jobs are SIGKILLed and rerun;
    each job runs on the lakes its predecessors left (``kinds`` is a prefix of build, label, train). ``progress(kind, scenario)`` after each job."""
    work = pathlib.Path(work or tempfile.mkdtemp(prefix="zoo-crash-"))
    ref, crashed = work / "reference", work / "crashed"
    rng = random.Random(config.seed)
    out: dict[str, Scenario] = {}
    steps = {"build": (build_params(config), ("models", "tensors")),
             "label": (label_params(config), ("models", "tensors", "labels")),
             "train": (train_params(config, work / "runs"), ("models", "tensors", "labels", "predictions"))}
    if kinds != tuple(steps)[:len(kinds)]:
        raise ValueError(f"kinds must be a prefix of {tuple(steps)} (each job needs the ones before it)")
    for kind in kinds:
        params, tables = steps[kind]
        out[kind] = scenario(kind, ref, crashed, params, config, rng, tables)
        if progress is not None:
            progress(kind, out[kind])
    return out


def print_table(results: dict[str, Scenario]) -> tuple[int, int]:
    print(f"\n{'scenario':<22} {'cases':>6} {'crashes survived':>17} {'rows lost':>10} {'duplicates':>11} "
          f"{'snapshots':>10} {'unreadable':>11}")
    for kind, s in results.items():
        lost = s.diff.rows_lost + sum(s.diff.extra.values())
        print(f"{kind + '-kill-rerun':<22} {s.job.attempts:>6} {s.job.killed if s.job.completed else 0:>17} "
              f"{lost:>10} {s.diff.n_duplicates:>11} {s.diff.snapshots:>10} {len(s.diff.unreadable):>11}   {s.note}")
        for e in s.diff.unreadable[:3]:
            print(f"    {e}")
    lost = sum(s.diff.rows_lost + sum(s.diff.extra.values()) + len(s.diff.unreadable) for s in results.values())
    dup = sum(s.diff.n_duplicates for s in results.values())
    return lost, dup


def main(argv: list[str]) -> None:
    if argv and argv[0] == "job":
        _job(argv[1], argv[2], json.loads(argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=CrashConfig.n, help="zoo members")
    ap.add_argument("--kills", type=int, default=CrashConfig.kills, help="SIGKILL attempts per job")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    ap.add_argument("--family", default=CrashConfig.family)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one kill per job: checks that the bench runs")
    args = ap.parse_args(argv)
    cfg = CrashConfig(family=args.family, n=args.n, kills=args.kills, seed=args.seed)
    kinds: tuple[str, ...] = ("build", "label", "train")
    if args.quick:
        cfg = CrashConfig(family=args.family, n=2, checkpoints=(1,), population_size=2, label_batch=1, kills=1,
                          seed=args.seed)
        kinds = ("build",)
    t0 = time.perf_counter()
    results = run_crash_scenarios(config=cfg, kinds=kinds, progress=lambda k, s: print(f"[{k}] {s.job.killed} kills, "
                                                                            f"{s.note}", flush=True))
    lost, dup = print_table(results)
    print(f"total: {lost} rows lost/changed, {dup} duplicates (targets: 0, 0) in {time.perf_counter() - t0:.1f} s "
          f"(measured under load on a shared machine)")
    sys.exit(1 if lost or dup else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
