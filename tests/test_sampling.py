"""Sampling: TrainConfig validation, pure per-member seeds, Small CNN Zoo ranges, wildcnn architectures."""
from __future__ import annotations

import math

import pytest

from core.errors import ZooError
from zoo.archs import ARCHS, build
from zoo.datasets import DATASETS, load_dataset
from zoo.families import FAMILIES
from zoo.sampling import (OPTIMIZERS, BadConfig, TrainConfig, TrainSpace, WildCNNSpace, member_seed,
                          sample_train_config, sample_wildcnn)


@pytest.mark.parametrize("bad, culprit", [
    (dict(optimizer="lbfgs"), "optimizer"), (dict(init="zeros"), "init"), (dict(lr=0.0), "lr"),
    (dict(dropout=1.0), "dropout"), (dict(epochs=5, checkpoints=(10,)), "checkpoint"),
])
def test_train_config_rejects_bad_values_naming_them(bad, culprit):
    with pytest.raises(BadConfig, match=culprit) as e:
        TrainConfig(**bad)
    assert isinstance(e.value, ZooError)


def test_checkpoints_are_sorted_and_excluded_from_identity():
    a = TrainConfig(epochs=10, checkpoints=(10, 2, 2))
    assert a.checkpoints == (2, 10)
    assert a.identity() == TrainConfig(epochs=10, checkpoints=(10,)).identity()
    assert a.identity() != TrainConfig(epochs=10, checkpoints=(10,), lr=0.5).identity()


def test_member_seed_is_pure_and_distinct():
    assert member_seed("digits-cnn", 3, 0) == member_seed("digits-cnn", 3, 0)
    seeds = {member_seed(f, i, s) for f in ("digits-cnn", "digits-mlp") for i in range(50) for s in (0, 1)}
    assert len(seeds) == 200  # family, index and seed all matter
    assert all(0 <= s < 2**31 for s in seeds)


def test_sampled_configs_follow_the_small_cnn_zoo_ranges():
    space = TrainSpace()
    cfgs = [sample_train_config(space, member_seed("x", i, 0)) for i in range(300)]
    assert {c.optimizer for c in cfgs} == set(OPTIMIZERS)
    assert all(space.lr[0] <= c.lr <= space.lr[1] and space.l2[0] <= c.l2 <= space.l2[1] for c in cfgs)
    assert all(0 <= c.dropout <= 0.7 and c.train_fraction in space.train_fractions for c in cfgs)
    # log-uniform: about half the learning rates fall below the geometric mean of the range
    mid = math.sqrt(space.lr[0] * space.lr[1])
    assert 0.35 < sum(c.lr < mid for c in cfgs) / len(cfgs) < 0.65
    assert len({c.init for c in cfgs}) == len(space.inits)


def test_sampling_depends_only_on_the_seed():
    space = TrainSpace()
    assert sample_train_config(space, 11) == sample_train_config(space, 11)
    assert sample_train_config(space, 11) != sample_train_config(space, 12)


def test_wildcnn_architectures_span_the_ranges_and_build():
    space = WildCNNSpace()
    cfgs = [sample_wildcnn(space, member_seed("wildcnn", i, 0), (1, 8, 8), 10) for i in range(80)]
    depths = {len(c["channels"]) for c in cfgs}
    assert min(depths) >= 2 and max(depths) <= 6 and len(depths) >= 4
    assert all(4 <= ch <= 64 for c in cfgs for ch in c["channels"])
    assert {k for c in cfgs for k in c["kernel_sizes"]} == {3, 5, 7}
    assert {c["residual"] for c in cfgs} == {True, False} and len({c["norm"] for c in cfgs}) == 3
    if "wildcnn" in ARCHS:
        for c in cfgs[:5]:
            assert build("wildcnn", c).spec.n_params > 0


@pytest.mark.parametrize("family", FAMILIES.names())
def test_every_family_plans_members_deterministically(family):
    fam = FAMILIES.get(family)
    if fam.dataset not in DATASETS:
        pytest.skip(f"dataset {fam.dataset} not registered yet")
    info = load_dataset(fam.dataset, fam.dataset_seed).info
    a = [fam.member(i, 0, info) for i in range(3)]
    assert a == [fam.member(i, 0, info) for i in range(3)]
    assert len({p.seed for p in a}) == 3 and a != [fam.member(i, 1, info) for i in range(3)]
    for p in a:
        assert p.arch_config["input_shape"] == list(info.input_shape) and p.arch_config["n_classes"] == info.n_classes
        assert max(p.train_config.checkpoints) <= p.train_config.epochs
        if fam.arch in ARCHS:
            build(fam.arch, p.arch_config)  # the sampled config is one the architecture accepts
