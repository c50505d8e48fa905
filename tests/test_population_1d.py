"""Population training of the 1-D architectures (zoo.population_1d) on MNIST-1D: a population of one
matches the plain loop, members do not interact, and extracted members compute the population's logits."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from fixtures.symmetry import assert_states_close
from zoo.archs import build
from zoo.datasets import load_dataset
from zoo.population import POPULATIONS, Member, Population, train_population
from zoo.sampling import TrainConfig
from zoo.train import train_plain

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CONFIGS = {"cnn1d": {"channels": 6, "n_layers": 3, "kernel_size": 5, "activation": "tanh"}}


@pytest.fixture(scope="module")
def mnist1d():
    """MNIST-1D splits with 256 training examples."""
    s = load_dataset("mnist1d", 0)
    return dataclasses.replace(s, x_train=s.x_train[:256], y_train=s.y_train[:256])


def arch_config(arch: str, splits) -> dict:
    return {**CONFIGS[arch], "input_shape": list(splits.info.input_shape), "n_classes": splits.info.n_classes}


def test_every_sequence_population_arch_has_a_config_here():
    # test_population.py leaves the "*1d" entries to this file
    assert set(CONFIGS) == {a for a in POPULATIONS.names() if a.endswith("1d") and not a.startswith("wild")}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_population_of_one_matches_the_plain_loop(mnist1d, arch, optimizer):
    cfg = arch_config(arch, mnist1d)
    tc = TrainConfig(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 2e-3, l2=1e-4, init="xavier",
                     train_fraction=0.5, label_noise=0.1, batch_size=48, epochs=2,
                     checkpoints=(0, 1, 2))
    plain = train_plain(arch, cfg, build(arch, cfg).spec, mnist1d, tc, seed=5)
    pop = train_population(Population(arch, cfg, [Member(tc, 5)]), mnist1d)[0]
    assert [(c.epoch, c.step) for c in plain] == [(c.epoch, c.step) for c in pop]
    assert_states_close(plain[0].state, pop[0].state, atol=0)
    for a, b in zip(plain[1:], pop[1:]):
        assert_states_close(a.state, b.state, atol=1e-4)
    moved = max((plain[-1].state[k] - plain[0].state[k]).abs().max() for k in plain[0].state)
    assert moved > 1e-3


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_members_do_not_interact(mnist1d, arch):
    cfg = arch_config(arch, mnist1d)
    members = [
        Member(TrainConfig(optimizer="adam", lr=3e-3, dropout=0.3, batch_size=32, epochs=1, checkpoints=(1,)), 1),
        Member(TrainConfig(optimizer="sgd", lr=0.1, l2=1e-3, init="orthogonal", train_fraction=0.25, batch_size=64,
                           epochs=1, checkpoints=(1,)), 2),
        Member(TrainConfig(optimizer="rmsprop", lr=1e-3, init="normal", init_scale=0.05, label_noise=0.2,
                           batch_size=64, epochs=1, checkpoints=(1,)), 3),
    ]
    together = train_population(Population(arch, cfg, members), mnist1d)
    for i, m in enumerate(members):
        alone = train_population(Population(arch, cfg, [m]), mnist1d)[0]
        assert_states_close(together[i][-1].state, alone[-1].state, atol=1e-5)
    a, b = together[0][-1].state, together[1][-1].state
    assert any(not torch.allclose(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_extracted_members_compute_the_population_logits(mnist1d, arch):
    cfg = arch_config(arch, mnist1d)
    members = [Member(TrainConfig(optimizer=o, epochs=1, checkpoints=(1,)), s)
               for s, o in enumerate(("sgd", "adam", "rmsprop"))]
    pop = Population(arch, cfg, members)
    train_population(pop, mnist1d)
    x = mnist1d.x_test[:100]
    logits = pop.predict(x)  # (G, N, K)
    for m in range(pop.size):
        module = build(arch, cfg).module
        module.load_state_dict(pop.extract(m))
        with torch.no_grad():
            assert torch.allclose(module.eval()(x), logits[m], atol=1e-5)
    assert not torch.allclose(logits[0], logits[1])
