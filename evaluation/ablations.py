"""The seed's ablations as WeightNetConfig variations (keys may name nested fields: ``tokenizer.name``).

A variant whose keys the config lacks is reported as "not available" with the missing field, never run
under a misleading name.
"""
from __future__ import annotations

from dataclasses import dataclass

from evaluation.predictors import resolve_overrides
from weightnet.config import WeightNetConfig


@dataclass(frozen=True)
class Variant:
    group: str  # permutation | tokenization | inputs | depth | heads | d_model | embeddings
    label: str  # shown in the report
    overrides: tuple[tuple[str, object], ...]

    @property
    def as_dict(self) -> dict:
        return dict(self.overrides)


def _v(group: str, label: str, **kw: object) -> Variant:
    return Variant(group, label, tuple((k.replace("__", "."), v) for k, v in kw.items()))


ABLATIONS: tuple[Variant, ...] = (
    *(_v("permutation", p, tokenizer__permutation=p)
      for p in ("invariant", "weight_sort", "activation_sort", "align", "none")),
    *(_v("tokenization", t, tokenizer__name=t) for t in ("neuron", "layer", "global")),
    *(_v("depth", f"depth={d}", depth=d) for d in (1, 2, 4)),
    *(_v("heads", f"heads={h}", heads=h) for h in (1, 2, 4)),
    *(_v("d_model", f"d_model={d}", d_model=d) for d in (32, 64, 128)),
    _v("inputs", "probes on", probes=WeightNetConfig().probes),
    _v("inputs", "probes=16", probes=16),
    _v("inputs", "probes off", probes=0),
    _v("inputs", "weight tokens off", weight_tokens=False),
    _v("inputs", "summary off", summary=False),
    _v("inputs", "free probes (no generator)", probe_latent=0),
    _v("inputs", "probe readout off", probe_readout=False),
    # the fit never reads a model from its probes alone, and unseen architectures are read in full (the
    # default before 5928da3); on a random split only the training changes
    _v("inputs", "view dropout off", view_dropout=0.0, unseen_view="full"),
    _v("embeddings", "segment+layer-type on", segment_embedding=True, layer_type_embedding=True),
    _v("embeddings", "segment+layer-type off", segment_embedding=False, layer_type_embedding=False),
)

SMALL_GROUPS = ("permutation", "tokenization", "inputs")


def plan(groups: tuple[str, ...] | None = None) -> tuple[list[Variant], list[str]]:
    """(variants that can run with this WeightNetConfig, notes on the ones that cannot)."""
    runnable, notes = [], []
    for v in ABLATIONS:
        if groups is not None and v.group not in groups:
            continue
        _, missing = resolve_overrides(v.as_dict)
        if missing:
            notes.append(f"ablation {v.group}/{v.label} not available: WeightNetConfig has no field {', '.join(missing)}")
        else:
            runnable.append(v)
    return runnable, notes
