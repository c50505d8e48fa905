"""WeightNet datasets: (snapshot or tag, SQL filter, target properties, split rule) -> samples.

A ``ZooSample`` (storage.samples) is one stored model: its spec, its weights and its labels. Every predictor (WeightNet
and the baselines) trains and predicts on lists of samples, so they compare on identical splits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from core.errors import ZooError
from core.hashing import stable_hash
from core.registry import Registry
from storage.samples import ZooSample


@dataclass(frozen=True)
class DatasetConfig:
    at: str | int | None = None  # snapshot id or tag; None = latest (resolved and recorded)
    where: str | None = None  # SQL predicate over the models table
    targets: tuple[str, ...] = ("test_accuracy",)  # properties every sample must have
    split: str = "random"  # random (by training run) | family:<name> | arch:<name> | width:<max>
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    @property
    def id(self) -> str:
        return stable_hash(self)


def _width(s: ZooSample) -> int:
    cfg = s.arch_config
    for key in ("width", "channels", "hidden_size", "embed_dim"):
        if key in cfg:
            v = cfg[key]
            return int(max(v) if isinstance(v, (list, tuple)) else v)
    return 0


Split = tuple[list[ZooSample], list[ZooSample], list[ZooSample]]
# rule kind -> fn(samples, value, seed, val_fraction, test_fraction); a rule string is KIND or KIND:VALUE
SPLIT_RULES: Registry[Callable[[Sequence[ZooSample], str, int, float, float], Split]] = Registry("split rule")


def split_samples(samples: Sequence[ZooSample], rule: str = "random", seed: int = 0, val_fraction: float = 0.15,
                  test_fraction: float = 0.15) -> Split:
    """(train, val, test) by a SPLIT_RULES entry: ``random`` splits by training run, so checkpoints of one
    run never straddle splits; ``family:X`` / ``arch:X`` hold X out as the test set; ``width:W`` tests on
    widths > W."""
    kind, _, value = rule.partition(":")
    if kind not in SPLIT_RULES or (kind == "random") != (value == ""):
        raise ZooError(f"unknown split rule {rule!r} (random | family:NAME | arch:NAME | width:MAX)")
    return SPLIT_RULES.get(kind)(samples, value, seed, val_fraction, test_fraction)


@SPLIT_RULES.register("random")
def _random(samples: Sequence[ZooSample], value: str, seed: int, val_fraction: float, test_fraction: float) -> Split:
    runs = sorted({s.run_id for s in samples})
    g = torch.Generator().manual_seed(seed)
    order = [runs[i] for i in torch.randperm(len(runs), generator=g).tolist()]
    n_test = int(round(len(order) * test_fraction))
    n_val = int(round(len(order) * val_fraction))
    test_runs, val_runs = set(order[:n_test]), set(order[n_test:n_test + n_val])
    train = [s for s in samples if s.run_id not in test_runs and s.run_id not in val_runs]
    val = [s for s in samples if s.run_id in val_runs]
    test = [s for s in samples if s.run_id in test_runs]
    return train, val, test


def _held_out(samples: Sequence[ZooSample], held: list[ZooSample], rule: str, seed: int, val_fraction: float) -> Split:
    """Test on ``held``; train and validate on a random split (by run) of the rest."""
    if not held:
        raise ZooError(f"split {rule!r} holds out no model")
    rest = [s for s in samples if s not in held]
    train, val, _ = _random(rest, "", seed, val_fraction, 0.0)
    return train, val, held


@SPLIT_RULES.register("family")
def _family(samples: Sequence[ZooSample], value: str, seed: int, val_fraction: float, test_fraction: float) -> Split:
    return _held_out(samples, [s for s in samples if s.family == value], f"family:{value}", seed, val_fraction)


@SPLIT_RULES.register("arch")
def _arch(samples: Sequence[ZooSample], value: str, seed: int, val_fraction: float, test_fraction: float) -> Split:
    return _held_out(samples, [s for s in samples if s.arch == value], f"arch:{value}", seed, val_fraction)


@SPLIT_RULES.register("width")
def _wider(samples: Sequence[ZooSample], value: str, seed: int, val_fraction: float, test_fraction: float) -> Split:
    return _held_out(samples, [s for s in samples if _width(s) > int(value)], f"width:{value}", seed, val_fraction)
