"""Stored models as samples: a model's record, spec, weights and labels, read from the lake in one go.

``ZooSample`` is what every predictor (WeightNet and the baselines, weightnet.data) trains and predicts
on, and what label reliability (labeling.reliability) re-measures; it lives in storage because reading
it is the lake's business and every stage above may use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from core.spec import WeightSpec
from storage.lake import Lake
from storage.writes import read_models, read_weights


@dataclass(frozen=True)
class ZooSample:
    model_id: str
    run_id: str
    family: str
    arch: str
    arch_config: dict
    spec: WeightSpec
    state: dict[str, torch.Tensor]
    labels: dict[str, float] = field(default_factory=dict)



def load_samples(lake: Lake, where: str | None = None, targets: Sequence[str] = (), require_all: bool = True,
                 batch: int = 256, weights: bool = True) -> list[ZooSample]:
    """Models matching ``where`` with their weights and the requested labels.

    With ``require_all`` models lacking any target are skipped (not an error: labeling may lag). With
    ``weights=False`` every ``state`` is empty: for callers that need records and labels only.
    """
    records = read_models(lake, where)
    labels: dict[str, dict[str, float]] = {}
    if targets:
        rows = lake.fetch(
            "SELECT model_id, property, value FROM lake.main.labels WHERE property IN (SELECT unnest(?::VARCHAR[]))",
            [list(targets)])
        for mid, prop, value in rows:
            labels.setdefault(mid, {})[prop] = float(value)
    if require_all and targets:
        records = [r for r in records if all(t in labels.get(r.model_id, {}) for t in targets)]
    out: list[ZooSample] = []
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        states = read_weights(lake, [r.model_id for r in chunk]) if weights else {}
        for r in chunk:
            out.append(ZooSample(r.model_id, r.run_id or r.model_id, r.family, r.arch, r.arch_config, r.spec,
                                 states.get(r.model_id, {}), labels.get(r.model_id, {})))
    return out
