"""Performance, fairness and efficiency properties.

Sign conventions (documented, tested):
- ``gen_gap_accuracy = train_accuracy - test_accuracy`` (positive when the model overfits);
- ``gen_gap_loss = test_loss - train_loss`` (positive when the model overfits).
Loss is the mean cross-entropy (natural log). F1 is macro F1 over the classes present in the labels or
the predictions (scikit-learn's convention, zero when a class has no true or predicted example).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.flops import count_flops
from core.hashing import canonical_json
from labeling.population import Population, population_logits
from labeling.registry import ModelBatch, PerExample, register_property
from zoo.datasets import Splits


def population(batch: ModelBatch, splits: Splits) -> Population:
    return Population(batch.modules, splits.info.input_shape, splits.info.value_range)


def macro_f1(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    """scikit-learn's ``f1_score(average="macro", zero_division=0)`` in torch (sklearn's per-call overhead
    was ~25 ms, a third of a small model's labeling): per class present in the labels or the predictions,
    F1 = 2 tp / (2 tp + fp + fn), averaged. Float64; equal to sklearn's up to rounding (~1e-16)."""
    n = int(max(int(y_true.max()), int(y_pred.max()))) + 1 if len(y_true) else 0
    if n == 0:
        return 0.0
    tp = torch.bincount(y_true[y_true == y_pred], minlength=n).double()
    n_true = torch.bincount(y_true, minlength=n).double()
    n_pred = torch.bincount(y_pred, minlength=n).double()
    present = (n_true + n_pred) > 0
    f1 = 2 * tp[present] / (n_true[present] + n_pred[present])  # 2tp + fp + fn = n_true + n_pred
    return float(f1.mean())


# per-example correctness kept on these splits (``<split>_correct`` outcomes): the test split's is what the
# label reliability re-measures (20,000 bits, 2.5 kB, per benchmark model)
OUTCOME_SPLITS = ("test",)


@dataclass(frozen=True)
class PerfParams:
    splits: tuple[str, ...] = ("train", "val", "test")  # accuracy/F1/loss on each; gaps need train and test


@register_property("performance", version=1, params=PerfParams())
def performance(batch: ModelBatch, splits: Splits, params: PerfParams, device: torch.device,
                generator: torch.Generator) -> list[dict[str, float | PerExample]]:
    pop = population(batch, splits)
    out: list[dict[str, float | PerExample]] = [{} for _ in range(len(batch))]
    for split in params.splits:
        x, y = splits.split(split)
        if len(y) == 0:
            continue
        logits = population_logits(pop, x)  # (M, N, classes)
        for i in range(len(batch)):
            pred = logits[i].argmax(-1)
            right = pred == y
            out[i][f"{split}_accuracy"] = float(right.double().mean())
            if split in OUTCOME_SPLITS:
                out[i][f"{split}_correct"] = PerExample(right.cpu().numpy())
            out[i][f"{split}_f1"] = macro_f1(y, pred)
            out[i][f"{split}_loss"] = float(F.cross_entropy(logits[i].double(), y))
    for d in out:
        if "train_accuracy" in d and "test_accuracy" in d:
            d["gen_gap_accuracy"] = d["train_accuracy"] - d["test_accuracy"]
            d["gen_gap_loss"] = d["test_loss"] - d["train_loss"]
    return out


@dataclass(frozen=True)
class FairnessParams:
    split: str = "test"


def fairness_values(y_true: torch.Tensor, y_pred: torch.Tensor, groups: dict[str, torch.Tensor],
                    n_classes: int) -> dict[str, float]:
    """Per sensitive feature: demographic parity / equalized odds difference (binary tasks) and per-group
    accuracy with its max-min difference, all through fairlearn."""
    from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference
    from sklearn.metrics import accuracy_score

    yt, yp = y_true.numpy(), y_pred.numpy()
    out: dict[str, float] = {}
    for attr, g in groups.items():
        s = g.numpy()
        frame = MetricFrame(metrics=accuracy_score, y_true=yt, y_pred=yp, sensitive_features=s)
        for group, acc in frame.by_group.items():
            out[f"fairness_acc_{attr}_{group}"] = float(acc)
        out[f"fairness_acc_diff_{attr}"] = float(frame.difference())
        if n_classes == 2:  # fairlearn's DP/EO are defined for binary tasks (class 1 = positive)
            out[f"fairness_dp_diff_{attr}"] = float(demographic_parity_difference(yt, yp, sensitive_features=s))
            out[f"fairness_eo_diff_{attr}"] = float(equalized_odds_difference(yt, yp, sensitive_features=s))
    return out


@register_property("fairness", version=1, params=FairnessParams(), needs_sensitive=True)
def fairness(batch: ModelBatch, splits: Splits, params: FairnessParams, device: torch.device,
             generator: torch.Generator) -> list[dict[str, float]]:
    x, y = splits.split(params.split)
    groups = {a: splits.sensitive[params.split][a] for a in splits.info.sensitive}
    logits = population_logits(population(batch, splits), x)
    return [fairness_values(y, logits[i].argmax(-1), groups, splits.info.n_classes) for i in range(len(batch))]


@dataclass(frozen=True)
class EfficiencyParams:
    batch: int = 1  # FLOPs are counted for a forward pass over this many examples


# one FLOP count per (architecture, config, input shape, batch) for the whole process: counting traces a
# forward pass, and a zoo's batches repeat the same few configs (wild families: both checkpoints of a run)
_FLOPS: dict[str, int] = {}


@register_property("efficiency", version=1, params=EfficiencyParams())
def efficiency(batch: ModelBatch, splits: Splits, params: EfficiencyParams, device: torch.device,
               generator: torch.Generator) -> list[dict[str, float]]:
    example = torch.zeros((params.batch,) + tuple(splits.info.input_shape), device=device)
    out = []
    for rec, mod in zip(batch.records, batch.modules):
        key = canonical_json([rec.arch, rec.arch_config, list(example.shape)])
        if key not in _FLOPS:
            _FLOPS[key] = count_flops(mod, example)
        out.append({"n_params": float(rec.n_params), "flops": float(_FLOPS[key])})
    return out
