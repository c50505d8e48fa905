"""Build a zoo family into the lake: sample members, train them (populations where possible), store
every checkpoint as its own model, one snapshot per batch.

Idempotent and resumable: every checkpoint's ``model_id`` is a stable hash of what defines it (arch,
arch_config, dataset, train config, seed, epoch), members whose checkpoints are all stored are skipped,
and ``write_models`` skips ids already present, so re-running is a no-op and an interrupted build
resumes without duplicates. The ``runs`` row (kind=build) is keyed by (family, n, seed, checkpoints).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from core.hashing import canonical_json, stable_hash
from storage.lake import Lake
from storage.writes import ModelRecord, write_models, write_run
from zoo.archs import ARCHS, build
from zoo.datasets import load_dataset
from zoo.families import FAMILIES, Family, MemberPlan
from zoo.population import POPULATIONS, Member, Population, train_population
from zoo.sampling import BadConfig
from zoo.train import Checkpoint, last_epoch, train_plain

POPULATION_SIZE = 64  # members per population: large enough to amortize per-step overhead on CPU
PLAIN_BATCH = 8  # plain-loop members per snapshot


@dataclass(frozen=True)
class BuildResult:
    run_id: str
    model_ids: list[str]  # every checkpoint of the n members, stored before or now
    new_ids: list[str]  # the ones this call wrote
    snapshot_id: int


def training_run_id(arch: str, arch_config: dict, dataset: str, plan: MemberPlan) -> str:
    """The member's training run: shared by all its checkpoints (the ``run_id`` column of ``models``)."""
    return stable_hash({"arch": arch, "arch_config": arch_config, "dataset": dataset,
                        "train_config": plan.train_config.identity(), "seed": plan.seed})


def checkpoint_id(arch: str, arch_config: dict, dataset: str, plan: MemberPlan, epoch: int) -> str:
    return stable_hash({"arch": arch, "arch_config": arch_config, "dataset": dataset,
                        "train_config": plan.train_config.identity(), "seed": plan.seed, "epoch": int(epoch)})


def plan_family(family: Family, n: int, seed: int, checkpoints: tuple[int, ...] | None = None) -> list[MemberPlan]:
    info = load_dataset(family.dataset, family.dataset_seed).info
    return [family.member(i, seed, info, checkpoints) for i in range(n)]


def build_zoo(lake: Lake, family: str, n: int, seed: int = 0, checkpoints: tuple[int, ...] | None = None,
              device: str = "cpu", progress: Callable[[int, int], None] | None = None,
              population_size: int = POPULATION_SIZE) -> BuildResult:
    """Train and store members 0..n-1 of ``family`` (skipping stored ones). ``progress(done, total)``
    counts member-epochs of the members still to train."""
    fam = FAMILIES.get(family)
    if n < 0:
        raise BadConfig(f"--n must be >= 0 (got {n})")
    ARCHS.get(fam.arch)  # an architecture not registered yet: UnknownEntry naming it, before any work
    splits = load_dataset(fam.dataset, fam.dataset_seed)
    plans = plan_family(fam, n, seed, checkpoints)
    ids = {p.index: {e: checkpoint_id(fam.arch, p.arch_config, fam.dataset, p, e) for e in p.train_config.checkpoints}
           for p in plans}
    all_ids = [i for p in plans for i in ids[p.index].values()]
    stored = _stored(lake, all_ids)
    pending = [p for p in plans if not set(ids[p.index].values()) <= stored]
    run_id = stable_hash({"build": family, "n": n, "seed": seed, "checkpoints": list(checkpoints or [])})
    if not pending:
        return BuildResult(run_id, all_ids, [], lake.current_snapshot())

    config = {"family": family, "n": n, "seed": seed, "checkpoints": list(checkpoints or fam.checkpoints),
              "device": device, "dataset": fam.dataset, "arch": fam.arch}
    write_run(lake, run_id, "build", config, "running")
    started, new_ids, diverged = time.time(), [], 0
    total = sum(last_epoch(p.train_config) for p in pending)
    done = 0
    try:
        for chunk, trained in _train_chunks(fam, pending, splits, device, population_size,
                                            lambda d: progress(done + d, total) if progress else None):
            batch = []
            for plan, cps in zip(chunk, trained):
                if not all(_finite(c.state) for c in cps):
                    diverged += 1  # NaN/Inf weights are never stored; the member is reported and skipped
                    continue
                batch.extend(_record(fam, plan, c, ids[plan.index][c.epoch]) for c in cps)
            msg = f"build {run_id}: {family} members {chunk[0].index}..{chunk[-1].index} (seed {seed})"
            new_ids += write_models(lake, batch, msg, {"run_id": run_id, "family": family})
            done += sum(last_epoch(p.train_config) for p in chunk)
            if progress is not None:
                progress(done, total)
    except BaseException as e:
        write_run(lake, run_id, "build", config, "failed", {"error": str(e)[:500], "new_models": len(new_ids)})
        raise
    seconds = time.time() - started
    snap = lake.current_snapshot()
    metrics = {"members": n, "trained": len(pending), "diverged": diverged, "new_models": len(new_ids),
               "seconds": round(seconds, 3), "seconds_per_member": round(seconds / len(pending), 4)}
    write_run(lake, run_id, "build", config, "completed", metrics, snapshot_id=snap)
    return BuildResult(run_id, all_ids, new_ids, lake.current_snapshot())


def _stored(lake: Lake, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    rows = lake.fetch("SELECT model_id FROM lake.main.models WHERE model_id IN (SELECT unnest(?::VARCHAR[]))",
                      [list(ids)])
    return {r[0] for r in rows}


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def _record(fam: Family, plan: MemberPlan, cp: Checkpoint, model_id: str) -> tuple[ModelRecord, dict]:
    spec = build(fam.arch, plan.arch_config).spec
    tc = plan.train_config.identity()
    rec = ModelRecord(model_id=model_id, family=fam.name, arch=fam.arch, arch_config=plan.arch_config,
                      dataset=fam.dataset, spec=spec, train_config=tc, seed=plan.seed,
                      run_id=training_run_id(fam.arch, plan.arch_config, fam.dataset, plan), epoch=cp.epoch,
                      step=cp.step, source="trained")
    return rec, cp.state


def _train_chunks(fam: Family, pending: list[MemberPlan], splits, device: str, population_size: int,
                  progress: Callable[[int], None]):
    """Yield (plans, their checkpoints) chunk by chunk: populations of one shape, or plain-loop batches."""
    if fam.arch in POPULATIONS:
        # one population per (architecture config, epochs, batch size, data fraction); members differ in
        # everything else. Mixed sizes would train correctly (masked steps) but every member would pay for
        # the longest epoch and the largest batch.
        key = lambda p: (canonical_json(p.arch_config), last_epoch(p.train_config), p.train_config.batch_size,
                         p.train_config.train_fraction)
        groups = itertools.groupby(sorted(pending, key=key), key=key)
        for _, members in groups:
            members = sorted(members, key=lambda p: p.index)
            for i in range(0, len(members), population_size):
                chunk = members[i:i + population_size]
                pop = Population(fam.arch, chunk[0].arch_config, [Member(p.train_config, p.seed) for p in chunk], device)
                yield chunk, train_population(pop, splits, device, lambda e, _t: progress(e * len(chunk)))
        return
    for i in range(0, len(pending), PLAIN_BATCH):
        chunk = pending[i:i + PLAIN_BATCH]
        trained = []
        for j, p in enumerate(chunk):
            spec = build(fam.arch, p.arch_config).spec
            base = sum(last_epoch(q.train_config) for q in chunk[:j])
            trained.append(train_plain(fam.arch, p.arch_config, spec, splits, p.train_config, p.seed, device,
                                       lambda e, _t, base=base: progress(base + e)))
        yield chunk, trained
