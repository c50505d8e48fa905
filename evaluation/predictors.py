"""Every predictor evaluation compares, in one registry (``PREDICTORS``): WeightNet, registered here,
and the baselines (``evaluation.baselines``). ``make_predictor(name, device, overrides)`` builds any.

WeightNet comes from ``weightnet.model.WeightNetPredictor`` with a ``weightnet.config.WeightNetConfig``;
config overrides are applied with ``dataclasses.replace``; a key the config lacks is an error
(``resolve_overrides`` lets the ablations drop such variants beforehand, so reports never claim an
ablation that did not run).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import evaluation.baselines  # noqa: F401  (registers the baselines)
from core.errors import ZooError
from evaluation.registry import PREDICTORS, PredictorEntry, predictor
from weightnet.predictor import Predictor

__all__ = ["PREDICTORS", "PredictorEntry", "WEIGHTNET", "computed_properties", "config_fields", "fit_identity",
           "make_predictor", "resolve_overrides", "weightnet_config"]

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


def weightnet_config(overrides: Mapping[str, object]):
    """WeightNet's default config with ``overrides``; a key the config lacks is a ZooError naming it."""
    from weightnet.config import WeightNetConfig

    applicable, missing = resolve_overrides(overrides)
    if missing:
        raise ZooError(f"WeightNetConfig has no field {', '.join(missing)} (known: {', '.join(sorted(config_fields()))})")
    return apply_overrides(WeightNetConfig(), applicable)


@predictor(WEIGHTNET)
def weightnet(device: str = "cpu", **overrides) -> Predictor:
    from weightnet.model import WeightNetPredictor

    return WeightNetPredictor(config=weightnet_config(overrides), device=device)


def fit_identity(name: str, overrides: Mapping[str, object] | None) -> str | None:
    """What decides predictor ``name``'s fit besides its data, targets and seed: equal identities fit the
    same model. WeightNet's is its resolved config, so an override equal to the default ("probes on")
    is the default; None where the overrides name a field WeightNet's config lacks (that fit raises)."""
    if name == WEIGHTNET:
        try:
            return f"{name}:{weightnet_config(overrides or {})!r}"
        except ZooError:
            return None
    return f"{name}:{sorted((overrides or {}).items())!r}"


def computed_properties() -> tuple[str, ...]:
    """Properties some registered predictor computes from the architecture alone (n_params, flops)."""
    return tuple(dict.fromkeys(t for _, entry in PREDICTORS.items() for t in entry.computes))


def make_predictor(name: str, device: str = "cpu", overrides: Mapping[str, object] | None = None) -> Predictor:
    """An unfitted predictor ``name`` (any registered one) with config ``overrides``."""
    return PREDICTORS.get(name).make(device=device, **dict(overrides or {}))
