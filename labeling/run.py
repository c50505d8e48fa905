"""Incremental, versioned labeling.

``plan_labeling`` finds, for every model matching ``where``, the properties that apply to its dataset
and that it lacks at their current version (no row from that labeler, or an older labeler_version), and
groups those models by architecture group (same arch, arch config, dataset and data seed) and needed
properties, packed into batches of up to ``batch_size`` models (architecture
groups stay contiguous; ``compute_labels`` splits a batch into its groups again), so that families whose
members all differ in shape (wildcnn) still read and write the lake once per ``batch_size`` models.
``label_zoo`` labels batch after batch, one write (one snapshot) per batch, so an interrupted run
resumes where it stopped: finished batches are no longer stale, the unfinished one left nothing
behind, and MERGE on (model_id, property) never duplicates a label.

Determinism: every model gets its own seed (``model_seed``: a stable hash of its model id and ``seed``),
passed in ``ModelBatch.seeds``; properties that draw per-model random numbers (PGD's random starts) seed
them from it, so a model's labels do not depend on which batch it lands in. Each (property, architecture
group) also gets a torch.Generator seeded from the property name, the group's model ids and ``seed``, for
properties that draw once per batch (AutoAttack); labeling the same models again gives identical values.
"""
from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from core.errors import DatasetUnavailable, LakeError, ZooError
from core.hashing import stable_hash
from labeling.population import load_module
from labeling.registry import ModelBatch, PerExample, Property, resolve
from storage.lake import Lake
from storage.runs import Run, tracked_run
from storage.writes import Label, ModelRecord, Outcome, read_models, read_weights, write_labels
from zoo.datasets import DatasetInfo, Splits, load_dataset

Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class LabelResult:
    n_labels: int  # label rows written
    n_models: int  # models labeled
    snapshot_id: int  # the lake's snapshot after the last write


def data_seed(record: ModelRecord) -> int:
    """The seed of the dataset splits the model was trained on (its test split is the labels' test split)."""
    return int(record.train_config.get("data_seed", 0))


def model_seed(model_id: str, seed: int = 0) -> int:
    """A model's own labeling seed: independent of its batch, fixed by its id and the run's seed."""
    return int(stable_hash(["model-seed", model_id, int(seed)]), 16) % 2**63


def group_key(record: ModelRecord) -> tuple:
    return (record.arch, json.dumps(record.arch_config, sort_keys=True), record.dataset, data_seed(record))


def dataset_for(record: ModelRecord) -> Splits:
    return load_dataset(record.dataset, data_seed(record))


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``: CUDA when present, else the CPU. Asking for CUDA where there is none is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ZooError(f"device {device!r} requested but CUDA is not available here (use --device cpu)")
    return dev


def _current_versions(lake: Lake, names: list[str]) -> dict[tuple[str, str], int]:
    rows = lake.fetch("SELECT model_id, labeler, max(labeler_version) FROM lake.main.labels "
                      "WHERE labeler IN (SELECT unnest(?::VARCHAR[])) GROUP BY ALL", [names])
    return {(m, l): int(v) for m, l, v in rows}


def plan(lake: Lake, properties: Sequence[str] | str | None = None, where: str | None = None,
         batch_size: int = 32) -> list[tuple[list[str], list[Property]]]:
    """Batches of (model ids, stale properties to compute for all of them)."""
    if batch_size < 1:
        raise ZooError(f"batch_size must be >= 1, got {batch_size}")
    props = resolve(properties)
    records = read_models(lake, where)
    have = _current_versions(lake, [p.name for p in props])
    infos: dict[tuple[str, int], DatasetInfo | None] = {}
    groups: dict[tuple, list[str]] = defaultdict(list)
    for rec in records:
        dkey = (rec.dataset, data_seed(rec))
        if dkey not in infos:
            try:
                infos[dkey] = dataset_for(rec).info
            except DatasetUnavailable as e:  # label what can be labeled; say what cannot
                warnings.warn(f"skipping models on dataset {rec.dataset!r}: {e}", stacklevel=2)
                infos[dkey] = None
        if infos[dkey] is None:
            continue
        need = tuple(p.name for p in props
                     if p.applies(infos[dkey]) and have.get((rec.model_id, p.name), -1) < p.version)
        if need:
            groups[group_key(rec) + (need,)].append(rec.model_id)
    by_name = {p.name: p for p in props}
    # per set of needed properties, the groups' ids back to back (groups in key order), cut every batch_size
    by_need: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for key in sorted(groups):
        by_need[key[-1]].extend(groups[key])
    out = []
    for need in sorted(by_need):
        ids = by_need[need]
        for i in range(0, len(ids), batch_size):
            out.append((ids[i:i + batch_size], [by_name[n] for n in need]))
    return out


def plan_labeling(lake: Lake, properties: Sequence[str] | str | None = None, where: str | None = None,
                  batch_size: int = 32) -> list[list[str]]:
    """Batches of model ids whose labels are missing or stale (see ``plan``)."""
    return [ids for ids, _ in plan(lake, properties, where, batch_size)]


def compute_labels(records: Sequence[ModelRecord], states: dict[str, dict[str, torch.Tensor]],
                   props: Sequence[Property], device: torch.device, seed: int = 0,
                   progress: Progress = None, outcomes: list[Outcome] | None = None) -> list[Label]:
    """Labels of the given models (no lake access): grouped by architecture, each property run per group.
    The properties' per-example outcomes (``PerExample`` values) are appended to ``outcomes`` when given."""
    groups: dict[tuple, list[ModelRecord]] = defaultdict(list)
    for rec in records:
        groups[group_key(rec)].append(rec)
    steps = [(g, p) for g in groups.values() for p in props]
    labels: list[Label] = []
    done = 0
    for recs in groups.values():
        splits = dataset_for(recs[0])
        batch = ModelBatch(tuple(recs), tuple(load_module(r, states[r.model_id], device) for r in recs),
                           tuple(states[r.model_id] for r in recs), tuple(model_seed(r.model_id, seed) for r in recs))
        for prop in props:
            done += 1
            if not prop.applies(splits.info):
                continue
            params = prop.params_for(splits)
            gen = torch.Generator().manual_seed(int(stable_hash([prop.name, [r.model_id for r in recs], seed]), 16) % 2**63)
            values = prop.fn(batch, splits, params, device, gen)
            if len(values) != len(recs):
                raise ZooError(f"property {prop.name!r} returned {len(values)} results for {len(recs)} models")
            pj = prop.params_json(params)
            for rec, vals in zip(recs, values):
                for name, v in vals.items():
                    if isinstance(v, PerExample):
                        if outcomes is not None:
                            outcomes.append(Outcome(rec.model_id, name, v.values, prop.name, prop.version, pj))
                    elif math.isfinite(float(v)):  # a wrong label is worse than a missing one
                        labels.append(Label(rec.model_id, name, float(v), prop.name, prop.version, pj))
            if progress is not None:
                progress(done, len(steps))
    return labels


def label_models(lake: Lake, model_ids: Sequence[str], properties: Sequence[str] | str | Sequence[Property] | None = None,
                 device: str | torch.device = "cpu", progress: Progress = None, seed: int = 0) -> LabelResult:
    """Compute the (applicable) properties of these models and store them in ONE snapshot."""
    dev = resolve_device(device)
    props = list(properties) if properties and all(isinstance(p, Property) for p in properties) else resolve(properties)
    ids = list(dict.fromkeys(model_ids))
    if not ids:
        return LabelResult(0, 0, lake.current_snapshot())
    records = read_models(lake, "model_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
    missing = sorted(set(ids) - {r.model_id for r in records})
    if missing:
        raise LakeError(f"unknown model {missing[0]!r}")
    states = read_weights(lake, ids)
    outcomes: list[Outcome] = []
    labels = compute_labels(records, states, props, dev, seed, progress, outcomes)
    n = write_labels(lake, labels, f"label {len(ids)} models: {', '.join(p.name for p in props)}",
                     {"properties": [p.name for p in props], "models": len(ids)}, outcomes)
    return LabelResult(n, len(ids), lake.current_snapshot())


def label_run(lake: Lake, batches: Sequence[tuple[Sequence[str], Sequence[Property]]], where: str | None,
              device: str | torch.device, batch_size: int, seed: int = 0) -> Run:
    """The ``runs`` row of one labeling run over ``batches`` (a plan), named by a hash of its plan."""
    total = sum(len(ids) for ids, _ in batches)
    config = {"properties": sorted({p.name for _, ps in batches for p in ps}), "where": where, "device": str(device),
              "batch_size": batch_size, "seed": seed, "models": total,
              "versions": {p.name: p.version for _, ps in batches for p in ps}}
    run_id = "label-" + stable_hash({**config, "plan": [list(ids) for ids, _ in batches], "at": lake.current_snapshot()})
    return Run(run_id, "label", config, metrics={"n_labels": 0, "n_models": 0})


def label_zoo(lake: Lake, properties: Sequence[str] | str | None = None, where: str | None = None,
              device: str | torch.device = "cpu", batch_size: int = 32, progress: Progress = None,
              seed: int = 0) -> LabelResult:
    """Plan, then label batch by batch (one snapshot each); a run row records the whole labeling run."""
    device = resolve_device(device)
    batches = plan(lake, properties, where, batch_size)
    if not batches:
        return LabelResult(0, 0, lake.current_snapshot())
    total = sum(len(ids) for ids, _ in batches)
    planned = label_run(lake, batches, where, device, batch_size, seed)
    with tracked_run(lake, planned.run_id, planned.kind, planned.config) as run:
        run.metrics.update(planned.metrics)
        for ids, props in batches:
            res = label_models(lake, ids, props, device, seed=seed)
            run.metrics["n_labels"] += res.n_labels
            run.metrics["n_models"] += res.n_models
            if progress is not None:
                progress(run.metrics["n_models"], total)
        run.snapshot_id = lake.current_snapshot()
    return LabelResult(run.metrics["n_labels"], run.metrics["n_models"], run.snapshot_id)
