"""Population training: members are independent networks that happen to share tensors.

Symmetries tested: a population of one matches the plain loop; a member trained among others matches
itself trained alone; reordering the members reorders the results; extracted members compute exactly
what the population computes.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from zoo.archs import build
from zoo.datasets import load_dataset
from zoo.population import POPULATIONS, Member, Population, train_population
from zoo.sampling import TrainConfig
from zoo.train import init_state, train_plain

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CONFIGS = {
    "mlp": {"width": 16, "depth": 2, "activation": "tanh"},
    "cnn": {"channels": 8, "n_layers": 3, "activation": "relu"},
}


# 1-D (sequence) architectures, named "*1d", are tested on MNIST-1D in test_population_1d.py
IMAGE_ARCHS = [a for a in POPULATIONS.names() if not a.endswith("1d")]


@pytest.fixture(scope="module")
def digits():
    """The digits splits with 300 training examples: enough to train, small enough to be quick."""
    s = load_dataset("digits", 0)
    return dataclasses.replace(s, x_train=s.x_train[:300], y_train=s.y_train[:300])


def arch_config(arch: str, splits) -> dict:
    return {**CONFIGS[arch], "input_shape": list(splits.info.input_shape), "n_classes": splits.info.n_classes}


def assert_states_close(a: dict, b: dict, atol: float) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max():.3g}"


def test_every_population_arch_is_a_registered_arch():
    from zoo.archs import ARCHS

    assert set(POPULATIONS.names()) <= set(ARCHS.names())
    assert set(IMAGE_ARCHS) == set(CONFIGS)  # a new population entry needs a config here


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_population_of_one_matches_the_plain_loop(digits, arch, optimizer):
    cfg = arch_config(arch, digits)
    tc = TrainConfig(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 2e-3, l2=1e-4, init="xavier",
                     train_fraction=0.5, label_noise=0.1, batch_size=48, epochs=2, checkpoints=(0, 1, 2))
    plain = train_plain(arch, cfg, build(arch, cfg).spec, digits, tc, seed=5)
    pop = train_population(Population(arch, cfg, [Member(tc, 5)]), digits)[0]
    assert [(c.epoch, c.step) for c in plain] == [(c.epoch, c.step) for c in pop]
    assert pop[0].step == 0 and pop[1].step == 4  # ceil(150 / 48) steps per epoch, the short batch included
    assert_states_close(plain[0].state, pop[0].state, atol=0)  # the same initialization, bit for bit
    for a, b in zip(plain[1:], pop[1:]):
        assert_states_close(a.state, b.state, atol=1e-4)
    moved = max((plain[-1].state[k] - plain[0].state[k]).abs().max() for k in plain[0].state)
    assert moved > 1e-3  # it did train, so agreement above is not trivial


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_members_do_not_interact(digits, arch):
    """A member trained among others with other hyperparameters equals the member trained alone;
    reordering the population reorders the results."""
    cfg = arch_config(arch, digits)
    members = [
        Member(TrainConfig(optimizer="adam", lr=3e-3, dropout=0.3, batch_size=32, epochs=1, checkpoints=(1,)), 1),
        Member(TrainConfig(optimizer="sgd", lr=0.1, l2=1e-3, init="orthogonal", train_fraction=0.25, batch_size=64,
                           epochs=1, checkpoints=(1,)), 2),
        Member(TrainConfig(optimizer="rmsprop", lr=1e-3, init="normal", init_scale=0.05, label_noise=0.2,
                           batch_size=64, epochs=1, checkpoints=(1,)), 3),
    ]
    together = train_population(Population(arch, cfg, members), digits)
    reversed_ = train_population(Population(arch, cfg, members[::-1]), digits)
    for i, m in enumerate(members):
        alone = train_population(Population(arch, cfg, [m]), digits)[0]
        assert_states_close(together[i][-1].state, alone[-1].state, atol=1e-5)
        assert_states_close(reversed_[len(members) - 1 - i][-1].state, alone[-1].state, atol=1e-5)
    a, b = together[0][-1].state, together[1][-1].state
    assert any(not torch.allclose(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
@pytest.mark.parametrize("conv_impl", ["grouped", "unfold"])
def test_extracted_members_compute_the_population_logits(digits, arch, conv_impl):
    cfg = arch_config(arch, digits)
    members = [Member(TrainConfig(optimizer=o, epochs=1, checkpoints=(1,)), s)
               for s, o in enumerate(("sgd", "adam", "rmsprop", "adam"))]
    pop = Population(arch, cfg, members, conv_impl=conv_impl)
    train_population(pop, digits)
    x = digits.x_test[:100]
    logits = pop.predict(x)  # (G, N, K)
    for m in range(pop.size):
        module = build(arch, cfg).module
        module.load_state_dict(pop.extract(m))
        module.eval()
        with torch.no_grad():
            assert torch.allclose(module(x), logits[m], atol=1e-5)
    assert not torch.allclose(logits[0], logits[1])


def test_seeds_decide_initialization(digits):
    cfg = arch_config("mlp", digits)
    spec = build("mlp", cfg).spec
    tc = TrainConfig(init="he", init_scale=1.0)
    a, b = init_state("mlp", cfg, spec, tc, 1), init_state("mlp", cfg, spec, tc, 2)
    assert_states_close(a, init_state("mlp", cfg, spec, tc, 1), atol=0)
    assert not torch.equal(a["layers.0.weight"], b["layers.0.weight"])
    assert float(a["layers.0.bias"].abs().max()) == 0.0  # zero biases under a sampled init
    std = float(a["layers.0.weight"].std())
    assert abs(std - (2.0 / 64) ** 0.5) < 0.02  # He: sqrt(2 / fan_in), fan_in = 64 pixels


def test_plain_loop_trains_heterogeneous_members_reproducibly(digits):
    """The fallback for architectures without a population forward (wildcnn: residuals, BatchNorm)."""
    from zoo.sampling import sample_wildcnn, WildCNNSpace

    cfg = sample_wildcnn(WildCNNSpace(layers=(2, 2), channels=(4, 8)), 0, digits.info.input_shape, 10)
    cfg.update(norm="batch", residual=True)
    spec = build("wildcnn", cfg).spec
    tc = TrainConfig(optimizer="adam", lr=3e-3, dropout=0.2, init="he", epochs=1, checkpoints=(0, 1))
    a = train_plain("wildcnn", cfg, spec, digits, tc, seed=4)
    b = train_plain("wildcnn", cfg, spec, digits, tc, seed=4)
    assert_states_close(a[-1].state, b[-1].state, atol=0)  # dropout and data order come from the seed
    moved = [k for k in a[0].state if not torch.equal(a[0].state[k], a[-1].state[k])]
    assert "convs.0.weight" in moved and "norms.0.running_mean" in moved
