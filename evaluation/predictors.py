"""One constructor for every predictor evaluation compares: ``weightnet`` or any baseline name.

WeightNet comes from ``weightnet.model.WeightNetPredictor`` with a ``weightnet.config.WeightNetConfig``;
config overrides are applied with ``dataclasses.replace`` and only for fields the config really has
(``resolve_overrides`` says which were dropped, so reports never claim an ablation that did not run).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from evaluation.baselines import BASELINES

WEIGHTNET = "weightnet"


def config_fields() -> set[str]:
    """Field names of WeightNetConfig; nested dataclass fields as ``outer.inner`` (e.g. tokenizer.name)."""
    from weightnet.config import WeightNetConfig

    names = set()
    default = WeightNetConfig()
    for f in dataclasses.fields(WeightNetConfig):
        names.add(f.name)
        inner = getattr(default, f.name)
        if dataclasses.is_dataclass(inner):
            names |= {f"{f.name}.{g.name}" for g in dataclasses.fields(inner)}
    return names


def resolve_overrides(overrides: Mapping[str, object]) -> tuple[dict, list[str]]:
    """(applicable overrides, names of fields WeightNetConfig does not have)."""
    fields = config_fields()
    return {k: v for k, v in overrides.items() if k in fields}, sorted(k for k in overrides if k not in fields)


def apply_overrides(config, overrides: Mapping[str, object]):
    """``dataclasses.replace`` that understands ``outer.inner`` keys for nested config dataclasses."""
    top = {k: v for k, v in overrides.items() if "." not in k}
    nested: dict[str, dict] = {}
    for k, v in overrides.items():
        if "." in k:
            outer, inner = k.split(".", 1)
            nested.setdefault(outer, {})[inner] = v
    for outer, kv in nested.items():
        top[outer] = dataclasses.replace(getattr(config, outer), **kv)
    return dataclasses.replace(config, **top)


def make_predictor(name: str, device: str = "cpu", overrides: Mapping[str, object] | None = None):
    overrides = dict(overrides or {})
    if name != WEIGHTNET:
        return BASELINES.get(name)(device=device, **overrides)
    from weightnet.config import WeightNetConfig
    from weightnet.model import WeightNetPredictor

    applicable, _ = resolve_overrides(overrides)
    cfg = apply_overrides(WeightNetConfig(), applicable)
    pred = WeightNetPredictor(config=cfg, device=device)
    if not getattr(pred, "name", None):
        pred.name = WEIGHTNET
    return pred
