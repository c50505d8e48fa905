"""Build a zoo family into the lake: sample members, train them (populations where possible), store
every checkpoint as its own model, one snapshot per batch.

Idempotent and resumable: every checkpoint's ``model_id`` is a stable hash of what defines it (arch,
arch_config, dataset, train config, seed, epoch), members whose checkpoints are all stored are skipped,
and ``write_models`` skips ids already present, so re-running is a no-op and an interrupted build
resumes without duplicates. The ``runs`` row (kind=build) is keyed by (family, n, seed, checkpoints).

Population families train as few, large populations: one per architecture config (members with other
batch sizes, data fractions, optimizers... train together), as many members each as a memory budget
allows (``population_size="auto"``). ``plan_build`` lists these units; a sharded build (flows/build.py)
hands whole units to tasks that each write their own snapshots: the same populations, the same bits.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

from core.hashing import canonical_json, stable_hash
from storage.lake import Lake
from storage.runs import tracked_run
from storage.writes import ModelRecord, write_models
from zoo.archs import ARCHS, build
from zoo.datasets import load_dataset
from zoo.families import FAMILIES, Family, MemberPlan
from zoo.population import POPULATIONS, Member, Population, train_population
from zoo.sampling import BadConfig
from zoo.train import Checkpoint, last_epoch, train_plain

POPULATION_SIZE = "auto"  # members per population: as many as MEMORY_BUDGET_MB allows
MEMORY_BUDGET_MB = 1024  # working memory of one population step (weights, optimizer state, activations)
PLAIN_BATCH = 8  # plain-loop members per snapshot
PopulationSize = Union[int, str]  # a number of members, or "auto"


@dataclass(frozen=True)
class BuildResult:
    run_id: str
    model_ids: list[str]  # every checkpoint of the members asked for, stored before or now
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


def plan_build(lake: Lake, family: str, n: int, seed: int = 0, checkpoints: tuple[int, ...] | None = None,
               population_size: PopulationSize = POPULATION_SIZE,
               memory_budget_mb: float = MEMORY_BUDGET_MB) -> list[list[int]]:
    """The training units of a build: member indices of the members not stored yet, one list per
    population (population families: one per architecture config, cut to ``population_size``) or per
    plain-loop batch. Shards of a build train whole units, so a sharded build trains every member in
    the very population a one-process build uses (same bits)."""
    fam = FAMILIES.get(family)
    if n < 0:
        raise BadConfig(f"--n must be >= 0 (got {n})")
    ARCHS.get(fam.arch)  # an architecture not registered yet: UnknownEntry naming it, before any work
    plans = plan_family(fam, n, seed, checkpoints)
    stored = _stored(lake, [checkpoint_id(fam.arch, p.arch_config, fam.dataset, p, e)
                            for p in plans for e in p.train_config.checkpoints])
    pending = [p for p in plans if not {checkpoint_id(fam.arch, p.arch_config, fam.dataset, p, e)
                                        for e in p.train_config.checkpoints} <= stored]
    if not population_family(fam):
        return [[p.index for p in pending[i:i + PLAIN_BATCH]] for i in range(0, len(pending), PLAIN_BATCH)]
    # one population per architecture config: members with other batch sizes, data fractions, epochs,
    # optimizers... train together (zoo.population masks the shorter ones). Heterogeneous archs
    # (zoo.population_wild) give their own group key (depth, strides) and an order that keeps each
    # population's padded widths tight.
    forward = POPULATIONS.get(fam.arch)
    group_of = getattr(forward, "group_key", canonical_json)
    key = lambda p: group_of(p.arch_config)
    order = getattr(forward, "order_key", None)
    units = []
    for _, group in itertools.groupby(sorted(pending, key=key), key=key):
        members = sorted(group, key=lambda p: (order(p.arch_config), p.index) if order else p.index)
        size = _population_size(fam, members, population_size, memory_budget_mb)
        units += [[p.index for p in members[i:i + size]] for i in range(0, len(members), size)]
    return units


def population_family(fam: Family) -> bool:
    """Whether ``zoo build`` trains the family as populations: its arch has a population forward that
    does not ask for the plain loop (zoo.population_wild's does: slower than the plain loop on CPU)."""
    return fam.arch in POPULATIONS and not getattr(POPULATIONS.get(fam.arch), "plain_by_default", False)


def population_memory(arch: str, arch_config: dict, batch_size: int) -> int:
    """Bytes one member adds to a population step (float32): weights, gradient, optimizer state and
    temporaries (8 copies of its P parameters), and 12 floats per activation unit per example
    (activations kept for backward, dropout masks, their gradients, per-member conv matrices)."""
    built = build(arch, arch_config)
    units = [0]
    hooks = [m.register_forward_hook(lambda _m, _i, out: units.append(out.numel()))
             for m in built.module.modules() if not list(m.children())]
    with torch.no_grad():
        built.module(torch.zeros(1, *arch_config["input_shape"]))
    for h in hooks:
        h.remove()
    return 4 * (8 * built.spec.n_params + 12 * batch_size * (sum(units) + math.prod(arch_config["input_shape"])))


def _population_size(fam: Family, members: list[MemberPlan], size: PopulationSize, budget_mb: float) -> int:
    if size != "auto":
        if not str(size).isdigit() or int(size) < 1:
            raise BadConfig(f"--population-size must be a positive number or 'auto' (got {size!r})")
        return int(size)
    padded = getattr(POPULATIONS.get(fam.arch), "padded_config", lambda cfgs: cfgs[0])  # wild: the widest
    per_member = population_memory(fam.arch, padded([p.arch_config for p in members]),
                                   max(p.train_config.batch_size for p in members))
    return max(1, int(budget_mb * 2 ** 20 // per_member))


def build_zoo(lake: Lake, family: str, n: int, seed: int = 0, checkpoints: tuple[int, ...] | None = None,
              device: str = "cpu", progress: Callable[[int, int], None] | None = None,
              population_size: PopulationSize = POPULATION_SIZE, memory_budget_mb: float = MEMORY_BUDGET_MB,
              units: list[list[int]] | None = None, shard: tuple[int, int] | None = None) -> BuildResult:
    """Train and store members 0..n-1 of ``family`` (skipping stored ones). ``progress(done, total)``
    counts member-epochs of the members still to train.

    ``units`` (from ``plan_build``) and ``shard=(i, count)`` make this call one shard of a build: it
    trains exactly those populations, reports only their members, and keeps its own ``runs`` row."""
    fam = FAMILIES.get(family)
    if units is None:
        units = plan_build(lake, family, n, seed, checkpoints, population_size, memory_budget_mb)
    splits = load_dataset(fam.dataset, fam.dataset_seed)
    plans = plan_family(fam, n, seed, checkpoints)
    ids = {p.index: {e: checkpoint_id(fam.arch, p.arch_config, fam.dataset, p, e) for e in p.train_config.checkpoints}
           for p in plans}
    mine = plans if shard is None else [plans[i] for u in units for i in sorted(u)]
    all_ids = [i for p in mine for i in ids[p.index].values()]
    key = {"build": family, "n": n, "seed": seed, "checkpoints": list(checkpoints or [])}
    run_id = stable_hash(key if shard is None else {**key, "shard": list(shard)})
    if not units:
        return BuildResult(run_id, all_ids, [], lake.current_snapshot())

    config = {"family": family, "n": n, "seed": seed, "checkpoints": list(checkpoints or fam.checkpoints),
              "device": device, "dataset": fam.dataset, "arch": fam.arch,
              "populations": [len(u) for u in units], **({"shard": list(shard)} if shard else {})}
    started, new_ids, diverged = time.time(), [], 0
    pending = [plans[i] for u in units for i in u]
    total = sum(last_epoch(p.train_config) for p in pending)
    done = 0
    with tracked_run(lake, run_id, "build", config) as run:
        run.metrics["new_models"] = 0
        for chunk, trained in _train_units(fam, [[plans[i] for i in u] for u in units], splits, device,
                                           lambda d: progress(done + d, total) if progress else None):
            batch = []
            for plan, cps in zip(chunk, trained):
                if not all(_finite(c.state) for c in cps):
                    diverged += 1  # NaN/Inf weights are never stored; the member is reported and skipped
                    continue
                batch.extend(_record(fam, plan, c, ids[plan.index][c.epoch]) for c in cps)
            msg = f"build {run_id}: {family} members {chunk[0].index}..{chunk[-1].index} (seed {seed})"
            new_ids += write_models(lake, batch, msg, {"run_id": run_id, "family": family})
            run.metrics["new_models"] = len(new_ids)
            done += sum(last_epoch(p.train_config) for p in chunk)
            if progress is not None:
                progress(done, total)
        seconds = time.time() - started
        run.snapshot_id = lake.current_snapshot()
        run.metrics = {"members": len(mine), "trained": len(pending), "diverged": diverged, "new_models": len(new_ids),
                       "seconds": round(seconds, 3), "seconds_per_member": round(seconds / len(pending), 4)}
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


def _train_units(fam: Family, units: list[list[MemberPlan]], splits, device: str, progress: Callable[[int], None]):
    """Yield (plans, their checkpoints) unit by unit: one population, or one plain-loop batch."""
    for chunk in units:
        if population_family(fam):
            members = [Member(p.train_config, p.seed) for p in chunk]
            make = getattr(POPULATIONS.get(fam.arch), "make_population", None)  # members with own configs
            pop = (make(fam.arch, [p.arch_config for p in chunk], members, device) if make
                   else Population(fam.arch, chunk[0].arch_config, members, device))
            # progress in member-epochs: every member counts up to its own last epoch
            lasts = [last_epoch(p.train_config) for p in chunk]
            yield chunk, train_population(pop, splits, device, lambda e, _t: progress(sum(min(e, x) for x in lasts)))
            continue
        trained = []
        for j, p in enumerate(chunk):
            spec = build(fam.arch, p.arch_config).spec
            base = sum(last_epoch(q.train_config) for q in chunk[:j])
            trained.append(train_plain(fam.arch, p.arch_config, spec, splits, p.train_config, p.seed, device,
                                       lambda e, _t, base=base: progress(base + e)))
        yield chunk, trained
