"""Corruption robustness: accuracy on the CIFAR-10-C-style corrupted test set (image datasets only).

Outputs ``corruption_mean_accuracy`` (mean over 15 corruptions x 5 severities), ``corruption_<name>``
(mean over severities), ``corruption_severity_<s>`` (mean over corruptions) and ``corruption_error_ratio``
= (1 - mean corrupted accuracy) / (1 - clean accuracy) on the same examples (clean error floored at 1e-3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from labeling.corruptions import CORRUPTIONS, SEVERITIES, corrupted_test_set
from labeling.population import Population, population_logits
from labeling.registry import ModelBatch, register_property
from zoo.datasets import Splits


@dataclass(frozen=True)
class CorruptionParams:
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS)
    severities: tuple[int, ...] = SEVERITIES
    n_examples: int | None = 1000  # seeded subset of the test split (digits' 360 test images: all)
    subset_seed: int = 0


# version 2: CIFAR-10-C's motion blur constants (v1 used the 64x64 ones) and our own fractal for fog/frost
@register_property("corruptions", version=2, params=CorruptionParams(), kinds=("image",))
def corruption_robustness(batch: ModelBatch, splits: Splits, params: CorruptionParams, device: torch.device,
                          generator: torch.Generator) -> list[dict[str, float]]:
    from labeling.attacks import subset

    x, y = splits.x_test, splits.y_test
    idx = subset(len(y), params.n_examples, params.subset_seed)
    x, y = x[idx], y[idx]
    sets = corrupted_test_set(splits.info.name, splits.seed, x, params.corruptions, params.severities)
    pop = Population(batch.modules, splits.info.input_shape, splits.info.value_range)
    lo, span = splits.info.value_range[0], splits.info.value_range[1] - splits.info.value_range[0]
    keys = list(sets)
    # every corrupted copy in one pass: (K*N, C, H, W) back in the models' coordinates
    allx = torch.cat([lo + sets[k] * span for k in keys] + [x])
    correct = (population_logits(pop, allx).argmax(-1) == torch.cat([y] * (len(keys) + 1))).double()
    n = len(y)
    out = []
    for i in range(len(batch)):
        acc = {k: float(correct[i, j * n:(j + 1) * n].mean()) for j, k in enumerate(keys)}
        clean = float(correct[i, len(keys) * n:].mean())
        d = {f"corruption_{c}": sum(acc[(c, s)] for s in params.severities) / len(params.severities)
             for c in params.corruptions}
        for s in params.severities:
            d[f"corruption_severity_{s}"] = sum(acc[(c, s)] for c in params.corruptions) / len(params.corruptions)
        mean = sum(acc.values()) / len(acc)
        d["corruption_mean_accuracy"] = mean
        d["corruption_error_ratio"] = (1 - mean) / max(1 - clean, 1e-3)
        out.append(d)
    return out
