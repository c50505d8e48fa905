"""How well can test accuracy be ranked at all? The label's agreement with itself, re-measured.

A label measured on N test examples is noisy: two models at chance level differ by a few examples, and
no predictor can rank them better than the label ranks itself when measured again. For every zoo family
this module takes each model's per-example correctness on its family's test split (the split the label
was measured on): the ``test_correct`` outcome the ``performance`` labeler stored beside the label, or,
for models labeled before outcomes were kept, a re-run of the model (the accuracy must equal the stored
label, else the family is skipped with a note), and reports:

- ``bootstrap_tau``: Kendall tau of test accuracy with itself recomputed on a bootstrap resample of the
  test examples (mean over resamples). Resamples share ~63% of their examples with the full set, so this
  is optimistic: a predictor's tau above it would be surprising.
- ``split_half_tau``: tau between the accuracies on two disjoint random halves of the test set (mean over
  splits): each half has N/2 examples, so this is pessimistic for the full set.
"""
from __future__ import annotations

from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from scipy.stats import kendalltau


TEST_CORRECT = "test_correct"  # the performance labeler's outcome read here (``storage.writes.read_outcomes``)
RECOMPUTE_TOLERANCE = 1e-3  # |recomputed - stored| test accuracy still taken as the same label (or 2 examples)


class ZooSample(Protocol):
    """What reliability reads of a stored model (``weightnet.data.ZooSample`` has it; labeling sits below
    weightnet, so it names the fields instead of importing the class)."""
    model_id: str
    family: str
    arch: str
    arch_config: dict
    state: dict[str, torch.Tensor]
    labels: dict[str, float]


# (samples, x, y) -> (M, N) bool: model m classifies test example n correctly
Correctness = Callable[[Sequence["ZooSample"], torch.Tensor, torch.Tensor], np.ndarray]


def correctness(samples: Sequence[ZooSample], x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """(M, N) bool: model m classifies test example n correctly."""
    from labeling.population import load_module

    rows = [_right(load_module(s, s.state), y, x) for s in samples]
    return np.array(rows, dtype=bool).reshape(len(samples), len(y))


def correctness_of_stored(lake, ids: Sequence[str], x: torch.Tensor, y: torch.Tensor, chunk: int = 256,
                          progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``correctness`` of stored models ``ids`` (lake: ``storage.lake.Lake``), reading their weights a
    chunk at a time (memory stays per chunk)."""
    from labeling.population import load_module
    from storage.writes import read_models, read_weights

    records = {r.model_id: r for r in read_models(lake, "model_id IN (SELECT unnest(?::VARCHAR[]))", [list(ids)])}
    rows = []
    for i in range(0, len(ids), chunk):
        part = list(ids[i:i + chunk])
        states = read_weights(lake, part)
        rows.extend(_right(load_module(records[m], states[m]), y, x) for m in part)
        if progress is not None:
            progress(i + len(part))
    return np.array(rows, dtype=bool).reshape(len(ids), len(y))


def _right(module: torch.nn.Module, y: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """(N,) bool: the module (eval mode) classifies example n correctly; the labels' own forward pass."""
    from labeling.population import model_logits

    return (model_logits(module, x).argmax(-1) == y).numpy()


def retest_taus(correct: np.ndarray, n_resamples: int = 20, seed: int = 0) -> dict[str, float]:
    """correct: (M, N) bool -> {'bootstrap_tau', 'split_half_tau'} (see the module docstring)."""
    rng = np.random.default_rng(seed)
    m, n = correct.shape
    acc = correct.mean(1)
    boot, half = [], []
    for _ in range(n_resamples):
        boot.append(kendalltau(acc, correct[:, rng.integers(0, n, n)].mean(1)).statistic)
        p = rng.permutation(n)
        half.append(kendalltau(correct[:, p[:n // 2]].mean(1), correct[:, p[n // 2:]].mean(1)).statistic)
    return {"bootstrap_tau": float(np.nanmean(boot)), "split_half_tau": float(np.nanmean(half))}


def label_reliability(samples: Sequence[ZooSample], prop: str = "test_accuracy", min_models: int = 10,
                      n_resamples: int = 20, seed: int = 0, correct: Correctness | None = None,
                      stored: Mapping[str, np.ndarray] | None = None) -> tuple[dict[str, dict], list[str]]:
    """(family -> {'n_models', 'n_test', 'bootstrap_tau', 'split_half_tau'}, notes) for ``prop``
    (only test accuracy is re-measurable here). ``stored``: model id -> its ``test_correct`` outcome
    (``storage.writes.read_outcomes``); models without one (or of another length) are re-run by
    ``correct``, which computes their (M, N) rows (default ``correctness`` in this process; the build
    suite spreads it over its worker processes)."""
    from zoo.datasets import load_dataset
    from zoo.families import FAMILIES

    if prop != "test_accuracy":
        raise ValueError(f"label reliability is defined for test_accuracy, not {prop!r}")
    out: dict[str, dict] = {}
    notes: list[str] = []
    by_family: dict[str, list[ZooSample]] = {}
    for s in samples:
        if prop in s.labels:
            by_family.setdefault(s.family, []).append(s)
    for fam, ss in sorted(by_family.items()):
        if len(ss) < min_models:
            continue
        if fam not in FAMILIES.names():
            notes.append(f"label reliability of {fam}: skipped (not a registered family, its test split is unknown)")
            continue
        family = FAMILIES.get(fam)
        x, y = load_dataset(family.dataset, family.dataset_seed).split("test")
        hits = _hits(ss, x, y, stored or {}, correct or correctness)
        labels = np.array([s.labels[prop] for s in ss])
        # labels come from batched/stacked forwards whose float rounding can flip a near-tie argmax: a few
        # examples in 10,000 may differ; another split or other code differs by far more
        if np.abs(hits.mean(1) - labels).max() > max(RECOMPUTE_TOLERANCE, 2.5 / len(y)):
            notes.append(f"label reliability of {fam}: skipped (recomputed test accuracy differs from the stored "
                         "labels: they were measured on another split or by other code)")
            continue
        out[fam] = {"n_models": len(ss), "n_test": int(len(y)), **retest_taus(hits, n_resamples, seed)}
    return out, notes


def _hits(samples: Sequence[ZooSample], x: torch.Tensor, y: torch.Tensor, stored: Mapping[str, np.ndarray],
          correct: Correctness) -> np.ndarray:
    """(M, N) correctness: the stored outcome of each model that has one of length N, the rest re-run."""
    have = np.array([len(stored.get(s.model_id, ())) == len(y) for s in samples], dtype=bool)
    hits = np.zeros((len(samples), len(y)), dtype=bool)
    if have.any():
        hits[have] = np.stack([stored[s.model_id] for s, h in zip(samples, have) if h])
    if not have.all():
        hits[~have] = correct([s for s, h in zip(samples, have) if not h], x, y)
    return hits
