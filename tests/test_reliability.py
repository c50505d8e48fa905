"""Label reliability: the retest taus on known answers, and the end-to-end checks against stored labels."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fixtures.weightnet_models import example_sample
from labeling.reliability import correctness, label_reliability, retest_taus
from zoo.datasets import load_dataset
from zoo.families import FAMILIES


def test_nested_correct_sets_rank_identically_on_every_resample() -> None:
    # model m is right on every example whose index mod 8 is below m: on any subset of examples that
    # holds each residue, accuracy strictly grows with m, so both retest taus are exactly 1
    n, m = 800, 8
    correct = np.array([[i % m < k for i in range(n)] for k in range(m)])
    assert retest_taus(correct, n_resamples=5) == pytest.approx({"bootstrap_tau": 1.0, "split_half_tau": 1.0})


def test_pure_noise_has_no_split_half_agreement_but_bootstrap_is_optimistic() -> None:
    rng = np.random.default_rng(1)
    correct = rng.random((200, 200)) < 0.1  # every model at the same 10% rate, right at random
    t = retest_taus(correct, n_resamples=10)
    assert abs(t["split_half_tau"]) < 0.1
    assert t["bootstrap_tau"] > 0.3  # shared examples: the resample agrees with the full set by construction


def test_label_reliability_checks_the_stored_labels(rng: torch.Generator) -> None:
    fam = FAMILIES.get("digits-mlp")
    x, y = load_dataset(fam.dataset, fam.dataset_seed).split("test")
    samples = [dataclasses.replace(example_sample("mlp", rng, f"m{i}"), family="digits-mlp") for i in range(12)]
    acc = correctness(samples, x, y).mean(1)
    for s, a in zip(samples, acc):
        s.labels["test_accuracy"] = float(a)
    out, notes = label_reliability(samples, n_resamples=4)
    assert notes == [] and out["digits-mlp"]["n_models"] == 12 and out["digits-mlp"]["n_test"] == len(y)
    assert -1 <= out["digits-mlp"]["split_half_tau"] <= out["digits-mlp"]["bootstrap_tau"] <= 1

    samples[0].labels["test_accuracy"] += 1 / len(y)  # one near-tie argmax flipped by another forward's rounding
    out, notes = label_reliability(samples, n_resamples=4)
    assert notes == [] and out["digits-mlp"]["n_models"] == 12
    samples[0].labels["test_accuracy"] += 0.5  # measured elsewhere: refuse rather than report nonsense
    out, notes = label_reliability(samples, n_resamples=4)
    assert out == {} and "differs from the stored labels" in notes[0]

    strangers = [dataclasses.replace(s, family="ingested-x") for s in samples]
    out, notes = label_reliability(strangers, n_resamples=4)
    assert out == {} and "not a registered family" in notes[0]
    with pytest.raises(ValueError, match="test_accuracy"):
        label_reliability(samples, prop="gen_gap_accuracy")


def test_stored_outcomes_stand_in_for_the_rerun_in_every_family(rng: torch.Generator) -> None:
    """Two families with stored test correctness: nothing re-run, the same numbers as a re-run."""
    samples = []
    for fam_name in ("digits-cnn", "digits-mlp"):
        fam = FAMILIES.get(fam_name)
        x, y = load_dataset(fam.dataset, fam.dataset_seed).split("test")
        ss = [dataclasses.replace(example_sample("mlp", rng, f"{fam_name}-{i}"), family=fam_name) for i in range(10)]
        for s, a in zip(ss, correctness(ss, x, y).mean(1)):
            s.labels["test_accuracy"] = float(a)
        samples += ss
    x, y = load_dataset("digits", 0).split("test")
    stored = dict(zip([s.model_id for s in samples], correctness(samples, x, y)))
    rerun, notes = label_reliability(samples, n_resamples=4)

    def refuse(*_):
        raise AssertionError("a model with a stored outcome was re-run")
    out, notes2 = label_reliability(samples, n_resamples=4, correct=refuse, stored=stored)
    assert sorted(out) == ["digits-cnn", "digits-mlp"] and out == rerun and notes == notes2 == []
