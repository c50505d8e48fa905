"""Worker processes for a suite build (``zoo build --suite NAME --workers N``).

A suite family is trained and labeled by N processes at once, each with its own torch threads, writing
to the lake itself, so the lake needs a catalog that admits several writers (``sqlite:PATH`` or
PostgreSQL; a DuckDB-file catalog admits one process). Most suite members are tiny: the plain loop and
small populations are bound by per-step overhead in one Python thread, so processes, not torch threads,
are what fill the cores.

- build: the family's training units (``zoo.build.plan_build``: populations or plain-loop batches) are
  dealt round-robin to the workers, each running ``build_zoo(units=..., shard=(i, N))``. Every member
  trains in the same unit as in a one-process build, so the stored models are the same.
- label: the labeling batches (``labeling.run.plan``) are dealt the same way; each batch is labeled
  with the suite's parameter overrides and committed in its own snapshot, as in one process.

Progress comes back through one queue: (worker, units of work done by that worker).
"""
from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Callable

from core.errors import ZooError
from storage.catalog import LakeConfig

_QUEUE = None  # the worker's end of the progress queue (set by _init)


def require_shared_catalog(config: LakeConfig, workers: int) -> None:
    if workers > 1 and config.catalog == "duckdb":
        raise ZooError(f"--workers {workers} needs a lake whose catalog admits several writers: "
                       f"{config.display} is a DuckDB-file catalog (one process at a time); use a SQLite "
                       f"catalog (--lake sqlite:PATH) or PostgreSQL, or --workers 1")


def _init(q, threads: int) -> None:
    import torch

    global _QUEUE
    _QUEUE = q
    torch.set_num_threads(threads)


def _report(worker: int, done: int) -> None:
    if _QUEUE is not None:
        _QUEUE.put((worker, done))


def _build_shard(config: LakeConfig, family: str, n: int, seed: int, device: str, units: list[list[int]],
                 shard: tuple[int, int]) -> list[str]:
    from storage.lake import Lake
    from zoo.build import build_zoo

    with Lake.open(config) as lk:
        res = build_zoo(lk, family, n, seed=seed, device=device, units=units, shard=shard,
                        progress=lambda done, _total: _report(shard[0], done))
    return res.new_ids


def _label_batches(config: LakeConfig, batches: list[tuple[list[str], list[str]]],
                   overrides: dict[str, dict[str, object]], device: str, seed: int, worker: int) -> int:
    from labeling.registry import resolve
    from labeling.run import label_models
    from labeling.suite import with_overrides
    from storage.lake import Lake

    done = 0
    with Lake.open(config) as lk:
        for ids, names in batches:
            label_models(lk, ids, with_overrides(resolve(names), overrides), device, seed=seed)
            done += len(ids)
            _report(worker, done)
    return done


def _correctness_shard(config: LakeConfig, ids: list[str], x, y, worker: int):
    """(ids, packed bits of the (len(ids), N) correctness matrix) for models ``ids`` of one family."""
    import numpy as np

    from labeling.reliability import correctness_of_stored
    from storage.lake import Lake

    with Lake.open(config) as lk:
        hits = correctness_of_stored(lk, ids, x, y, progress=lambda done: _report(worker, done))
    return ids, np.packbits(hits, axis=1)


def _run(workers: int, threads: int, jobs: list[tuple[Callable, tuple]],
         progress: Callable[[int], None] | None) -> list:
    """Run ``jobs`` (one per worker) in spawned processes; ``progress(total done)`` as reports arrive."""
    ctx = mp.get_context("spawn")  # never fork a process holding torch threads and a catalog connection
    q = ctx.Queue()
    per_worker = [0] * len(jobs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init, initargs=(q, threads)) as ex:
        futures = [ex.submit(fn, *args) for fn, args in jobs]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            for f in done:
                f.result()  # a worker's error stops the suite, naming its cause
            drained = False
            while True:
                try:
                    w, d = q.get_nowait()
                except queue_mod.Empty:
                    break
                per_worker[w], drained = max(per_worker[w], d), True
            if drained and progress is not None:
                progress(sum(per_worker))
        return [f.result() for f in futures]


def build_in_workers(config: LakeConfig, family: str, n: int, seed: int, device: str, units: list[list[int]],
                     workers: int, threads: int, progress: Callable[[int], None] | None = None) -> list[str]:
    """Train ``units`` of ``family`` in ``workers`` processes; returns the ids of the new models."""
    dealt = [units[i::workers] for i in range(min(workers, len(units)))]
    jobs = [(_build_shard, (config, family, n, seed, device, d, (i, len(dealt)))) for i, d in enumerate(dealt)]
    return [i for ids in _run(workers, threads, jobs, progress) for i in ids]


def label_in_workers(config: LakeConfig, batches: list[tuple[list[str], list[str]]],
                     overrides: dict[str, dict[str, object]], device: str, seed: int, workers: int, threads: int,
                     progress: Callable[[int], None] | None = None) -> int:
    """Label ``batches`` of (model ids, property names) in ``workers`` processes; returns models labeled."""
    dealt = [batches[i::workers] for i in range(min(workers, len(batches)))]
    jobs = [(_label_batches, (config, d, overrides, device, seed, i)) for i, d in enumerate(dealt)]
    return sum(_run(workers, threads, jobs, progress))


def correctness_in_workers(config: LakeConfig, ids: list[str], x, y, workers: int, threads: int,
                           progress: Callable[[int], None] | None = None):
    """``labeling.reliability.correctness`` of models ``ids`` (M, N) bool, computed in ``workers``
    processes that each read their share of the weights from the lake (contiguous shares, in order)."""
    import numpy as np

    size = -(-len(ids) // workers)
    shares = [ids[i:i + size] for i in range(0, len(ids), size)]
    jobs = [(_correctness_shard, (config, share, x, y, i)) for i, share in enumerate(shares)]
    parts = _run(workers, threads, jobs, progress)
    return np.concatenate([np.unpackbits(bits, axis=1, count=len(y)).astype(bool) for _, bits in parts])
