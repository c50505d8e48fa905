"""Evaluation splits on top of ``weightnet.data.split_samples`` (random by run, family, arch, width):
held-out hyperparameter ranges, and the width-generalization sets (widened and wider-trained)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from core.errors import ZooError
from evaluation.widen import widen
from weightnet.data import Split, ZooSample, _width, split_samples


def input_space(s: ZooSample) -> tuple:
    """The input a model reads and the classes it predicts (its dataset, as far as its weights can tell)."""
    return tuple(s.arch_config.get("input_shape") or ()), s.arch_config.get("n_classes")


def family_split(samples: Sequence[ZooSample], family: str, seed: int) -> Split:
    """Test on ``family``; train and validate on the other families of the same input space only (a
    family of another dataset teaches nothing about this one's accuracies)."""
    spaces = {input_space(s) for s in samples if s.family == family}
    same = [s for s in samples if input_space(s) in spaces]
    if spaces and all(s.family == family for s in same):
        raise ZooError(f"held-out family {family}: no other family reads its input space {sorted(spaces)}")
    return split_samples(same, f"family:{family}", seed)


def hparam_split(samples: Sequence[ZooSample], train_configs: Mapping[str, dict], key: str, seed: int,
                 quantile: float = 0.7) -> Split:
    """Train/val on models whose ``train_config[key]`` is at most its ``quantile`` value; test on the rest
    (an extrapolation to an unseen hyperparameter range)."""
    vals = {s.model_id: train_configs.get(s.model_id, {}).get(key) for s in samples}
    known = sorted(float(v) for v in vals.values() if isinstance(v, (int, float)))
    if len(known) < 4:
        raise ZooError(f"hyperparameter split: fewer than 4 models record train_config[{key!r}]")
    cut = known[min(len(known) - 1, int(quantile * len(known)))]
    inside = [s for s in samples if isinstance(vals[s.model_id], (int, float)) and float(vals[s.model_id]) <= cut]
    outside = [s for s in samples if isinstance(vals[s.model_id], (int, float)) and float(vals[s.model_id]) > cut]
    if not outside or len(inside) < 4:
        raise ZooError(f"hyperparameter split on {key!r} at {cut:g} leaves an empty side")
    train, val, _ = split_samples(inside, "random", seed, 0.15, 0.0)
    return train, val, outside


@dataclass(frozen=True)
class WidthSets:
    """Train on widths <= ``max_width``; test on held-out runs of those widths, on their 2x and 4x
    function-preserving widenings, and on independently trained wider models."""

    max_width: int
    train: list[ZooSample]
    val: list[ZooSample]
    test: list[ZooSample]
    widened: dict[int, list[ZooSample]]  # factor -> widened copies of ``test``
    wider_trained: list[ZooSample]


def width_sets(samples: Sequence[ZooSample], seed: int, factors: tuple[int, ...] = (2, 4)) -> WidthSets:
    widths = sorted({_width(s) for s in samples})
    if not widths or widths[0] == 0:
        raise ZooError("width split: the models record no width in arch_config")
    w = widths[0]
    narrow = [s for s in samples if _width(s) <= w]
    if len(narrow) < 6:
        raise ZooError(f"width split: only {len(narrow)} models of width <= {w}")
    train, val, test = split_samples(narrow, "random", seed, 0.15, 0.25)
    return WidthSets(w, train, val, test, {f: [widen(s, f) for s in test] for f in factors},
                     [s for s in samples if _width(s) > w])
