"""Population training: members are independent networks that happen to share tensors.

Symmetries tested: a population of one matches the plain loop; a member trained among others matches
itself trained alone; reordering the members reorders the results; extracted members compute exactly
what the population computes.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from fixtures import population as shared
from fixtures.symmetry import assert_states_close
from zoo.archs import build
from zoo.population import POPULATIONS, Member, Population, train_population
from zoo.population_archs import CONV_IMPLS
from zoo.sampling import TrainConfig
from zoo.train import init_state, train_plain

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CONFIGS = {
    "mlp": {"width": 16, "depth": 2, "activation": "tanh"},
    "cnn": {"channels": 8, "n_layers": 3, "activation": "relu"},
}


# 1-D (sequence) architectures, named "*1d", are tested on MNIST-1D in test_population_1d.py
# heterogeneous (wild) architectures: tests/test_population_wild.py
IMAGE_ARCHS = [a for a in POPULATIONS.names() if not a.endswith("1d") and not a.startswith("wild")]


@pytest.fixture(scope="module")
def digits():
    """The digits splits with 300 training examples: enough to train, small enough to be quick."""
    return shared.first_train_examples("digits", 300)


def arch_config(arch: str, splits) -> dict:
    return shared.arch_config(CONFIGS, arch, splits)


def test_every_population_arch_is_a_registered_arch():
    from zoo.archs import ARCHS

    assert set(POPULATIONS.names()) <= set(ARCHS.names())
    assert set(IMAGE_ARCHS) == set(CONFIGS)  # a new population entry needs a config here


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_population_of_one_matches_the_plain_loop(digits, arch, optimizer):
    pop = shared.assert_population_of_one_matches_the_plain_loop(arch, arch_config(arch, digits), digits, optimizer)
    assert pop[0].step == 0 and pop[1].step == 4  # ceil(150 / 48) steps per epoch, the short batch included


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_members_do_not_interact(digits, arch):
    shared.assert_members_do_not_interact(arch, arch_config(arch, digits), digits)


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
@pytest.mark.parametrize("conv_impl", CONV_IMPLS)
def test_extracted_members_compute_the_population_logits(digits, arch, conv_impl):
    cfg = arch_config(arch, digits)
    members = [Member(TrainConfig(optimizer=o, epochs=1, checkpoints=(1,)), s)
               for s, o in enumerate(("sgd", "adam", "rmsprop", "adam"))]
    shared.assert_extracted_members_compute_the_population_logits(Population(arch, cfg, members, conv_impl=conv_impl),
                                                                  digits)


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


def mixed_members(n: int) -> list[Member]:
    """Members that differ in everything a population may mix: batch size, data fraction, label noise,
    optimizer, lr, L2, dropout, init, and last epoch (1 or 2)."""
    from zoo.sampling import TrainSpace, sample_train_config

    space = TrainSpace(batch_sizes=(16, 32, 48), train_fractions=(0.25, 0.5, 1.0), epochs=2)
    return [Member(sample_train_config(space, 100 + i, checkpoints=((1,) if i % 3 == 0 else (1, 2))), 100 + i)
            for i in range(n)]


@pytest.fixture(scope="module")
def tiny_digits(digits):
    return dataclasses.replace(digits, x_train=digits.x_train[:120], y_train=digits.y_train[:120])


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
@pytest.mark.parametrize("segment_rows", [256, 0])  # 0: every change of batch width starts a new segment
def test_a_member_in_a_large_mixed_population_equals_itself_alone(tiny_digits, arch, segment_rows, monkeypatch):
    import zoo.population as population

    monkeypatch.setattr(population, "SEGMENT_ROWS", segment_rows)
    cfg = arch_config(arch, tiny_digits)
    members = mixed_members(24)
    tcs = [m.train_config for m in members]
    assert len({(t.batch_size, t.train_fraction, max(t.checkpoints)) for t in tcs}) >= 6  # really mixed
    assert sum(t.dropout > 0 for t in tcs) >= 12 and len({t.optimizer for t in tcs}) == 3
    pop = Population(arch, cfg, members)
    assert pop.size == 24
    together = train_population(pop, tiny_digits)
    assert [m.seed for m in pop.members] == [m.seed for m in members]  # given order restored afterwards
    again = train_population(Population(arch, cfg, members), tiny_digits)
    for a, b in zip(together, again):  # same seeds: the same bits
        assert [(c.epoch, c.step) for c in a] == [(c.epoch, c.step) for c in b]
        assert_states_close(a[-1].state, b[-1].state, atol=0)
    reversed_ = train_population(Population(arch, cfg, members[::-1]), tiny_digits)[::-1]
    steps = [-(-round(t.train_fraction * 120) // t.batch_size) for t in tcs]  # ceil(n_m / b_m)
    probe = sorted({steps.index(min(steps)), steps.index(max(steps)), 0, 5, 23})  # shortest, longest, frozen at 1
    for i in probe:
        alone = train_population(Population(arch, cfg, [members[i]]), tiny_digits)[0]
        assert [(c.epoch, c.step) for c in alone] == [(c.epoch, c.step) for c in together[i]]
        assert alone[-1].step == steps[i] * max(tcs[i].checkpoints)  # masked steps are not counted
        assert_states_close(together[i][-1].state, alone[-1].state, atol=1e-5)
        assert_states_close(reversed_[i][-1].state, alone[-1].state, atol=1e-5)
    a, b = together[0][-1].state, together[1][-1].state
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_segments_split_the_stepping_members_where_padding_costs_more_than_a_call(monkeypatch):
    import zoo.population as population
    from zoo.population import _segments

    monkeypatch.setattr(population, "SEGMENT_ROWS", 256)
    assert _segments([32] * 40 + [64] * 40 + [128] * 40) == [(0, 40), (40, 80), (80, 120)]
    assert _segments([32] * 4 + [64] * 40) == [(0, 44)]  # padding 4 members by 32 rows: cheaper than a call
    assert _segments([64] * 10 + [0] * 3 + [64] * 10 + [17]) == [(0, 24)]  # idle members and short batches
    assert _segments([5]) == [(0, 1)]
    monkeypatch.setattr(population, "SEGMENT_ROWS", 0)
    assert _segments([32, 32, 64, 48, 48]) == [(0, 2), (2, 3), (3, 5)]


@pytest.mark.parametrize("impl", CONV_IMPLS)
def test_conv_kernels_match_conv2d_values_and_gradients(impl):
    import torch.nn.functional as F

    from zoo.population_archs import _conv

    g = torch.Generator().manual_seed(0)
    for hh, ci in ((8, 1), (4, 3), (2, 5), (5, 2)):
        x = torch.randn(3, 4, hh, hh, ci, generator=g, requires_grad=True)  # (G, B, H, W, Ci)
        w = torch.randn(3, 6, ci, 3, 3, generator=g, requires_grad=True)
        b = torch.randn(3, 6, generator=g, requires_grad=True)
        y = _conv(x, w, b, impl)
        ref = torch.stack([F.conv2d(x[m].permute(0, 3, 1, 2), w[m], b[m], stride=2, padding=1).permute(0, 2, 3, 1)
                           for m in range(3)])
        assert y.shape == ref.shape and torch.allclose(y, ref, atol=1e-5)
        up = torch.randn(ref.shape, generator=g)
        got = torch.autograd.grad((y * up).sum(), (x, w, b))
        want = torch.autograd.grad((ref * up).sum(), (x, w, b))
        for a, e in zip(got, want):
            assert torch.allclose(a, e, atol=1e-4)


def test_dropout_masks_are_the_members_own(tiny_digits):
    """Two members with the same seed and rate draw the same masks whatever sits between them; a
    member's rate is applied (to 1/65536) and kept units are scaled by 1/(1-p)."""
    cfg = arch_config("mlp", tiny_digits)
    tc = TrainConfig(dropout=0.4, epochs=1, checkpoints=(1,))
    pop = Population("mlp", cfg, [Member(tc, 7), Member(TrainConfig(dropout=0.1, epochs=1, checkpoints=(1,)), 8), Member(tc, 7)])
    h = torch.ones(3, 50, 200)
    out = pop.drop(h, train=True)
    assert torch.equal(out[0], out[2]) and not torch.equal(out[0], out[1])
    kept = (out[0] > 0).float().mean()
    scale = 65536 / (65536 - round(0.4 * 65536))  # the rate as 16-bit draws apply it
    assert abs(float(kept) - 0.6) < 0.02 and torch.allclose(out[0][out[0] > 0], torch.tensor(scale))
    assert abs(scale - 1 / 0.6) < 1e-4
    assert torch.equal(pop.drop(h, train=False), h)


def keep_masks(pop: Population, shape: tuple[int, ...], step: int = 0, call: int = 0) -> torch.Tensor:
    """The bool keep masks pop.drop applies to an all-ones h of ``shape`` (G', B, ...) at every member's
    optimizer step ``step`` and call ``call`` within the step."""
    pop.steps[:] = step
    pop.drop_calls = call
    return pop.drop(torch.ones(shape), train=True) > 0


def test_hashed_dropout_bits_are_a_function_of_member_step_call_and_unit(tiny_digits):
    """The counter-based dropout: keep rates match each member's rate statistically, masks differ
    across members, steps and calls, and a member's bits on its rows do not depend on the population
    (its position, the others, the padding rows) but only on its seed."""
    cfg = arch_config("mlp", tiny_digits)
    rates = [0.05, 0.3, 0.5, 0.7, 0.0]
    pop = Population("mlp", cfg, [Member(TrainConfig(dropout=r), 10 + i) for i, r in enumerate(rates)])
    masks = keep_masks(pop, (5, 128, 400))  # 51,200 units per member
    for m, r in enumerate(rates):
        kept = float(masks[m].float().mean())
        assert abs(kept - (1 - r)) < 4 * (r * (1 - r) / masks[m].numel()) ** 0.5 + 1e-9, (r, kept)
    same = [Member(TrainConfig(dropout=0.5), s) for s in (1, 2, 1)]
    a = keep_masks(Population("mlp", cfg, same), (3, 64, 100))
    assert torch.equal(a[0], a[2]) and (a[0] != a[1]).float().mean() > 0.4  # seeds decide, not positions
    b = keep_masks(Population("mlp", cfg, same), (3, 64, 100), step=1)
    c = keep_masks(Population("mlp", cfg, same), (3, 64, 100), call=1)
    for other in (b, c):
        assert (a[0] != other[0]).float().mean() > 0.4  # about half the bits of two independent masks differ
    assert torch.equal(a, keep_masks(Population("mlp", cfg, same), (3, 64, 100)))  # same seed: the same bits
    alone = keep_masks(Population("mlp", cfg, same[1:2]), (1, 40, 100))  # fewer rows: a prefix of the same bits
    assert torch.equal(alone[0], a[1, :40])
    big = [Member(TrainConfig(dropout=0.2 + 0.01 * i), 50 + i) for i in range(30)] + same[1:2]
    inside = keep_masks(Population("mlp", cfg, big), (31, 64, 100))
    assert torch.equal(inside[30], a[1])
    per_unit = inside[:30].float().mean(0)  # units are not tied across members: each kept ~ (1 - p) of members
    assert float(per_unit.std()) < 0.15


def test_bench_quick_prints_every_figure(capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / "zoo_build.py"
    spec = importlib.util.spec_from_file_location("bench_zoo_build", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--quick", "--threads", "1"])
    text = capsys.readouterr().out
    for arch in ("cnn", "mlp"):
        assert out[arch]["speedup"] > 0 and 0 < out[arch]["mm_fraction"] < 1
    for figure in ("torch.mm probe", "population:", "plain loop:", "speedup population vs plain", "GFLOP/s achieved",
                   "% of the torch.mm probe"):
        assert figure in text


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("rates", [(0.0, 0.0), (0.5, 0.0, 0.3)])
def test_hand_written_bias_activation_dropout_matches_autograd(tiny_digits, act, rates):
    """The fused step (zoo.population_archs._BiasActDrop) equals autograd on act(y + bias) * multiplier,
    values and gradients, with and without dropout, and leaves the members' masks where pop.drop puts them."""
    from zoo.population_archs import _ACT, _BiasActDrop, _bias_act_drop

    assert act in _BiasActDrop.ACTS
    cfg = {**arch_config("cnn", tiny_digits), "activation": act}
    members = [Member(TrainConfig(dropout=r), 3 + i) for i, r in enumerate(rates)]
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(len(rates), 6, 4, 4, 5, generator=g)
    bias = torch.randn(len(rates), 5, generator=g, requires_grad=True)
    up = torch.randn(y0.shape, generator=g)
    y = y0.clone().requires_grad_(True)
    pop = Population("cnn", cfg, members)
    got = _bias_act_drop(pop, y * 1.0, bias, train=True)  # y * 1.0: a fresh tensor it may overwrite
    ref_pop = Population("cnn", cfg, members)
    ref_y = y0.clone().requires_grad_(True)
    ref = ref_pop.drop(_ACT[act](ref_y + bias.view(-1, 1, 1, 1, 5)), train=True)
    assert torch.equal(got, ref)
    assert pop.drop_calls == ref_pop.drop_calls == 1
    if max(rates) > 0:
        assert bool((got == 0).any()) and not torch.equal(got, _ACT[act](y0 + bias.view(-1, 1, 1, 1, 5)))
    grads = torch.autograd.grad((got * up).sum(), (y, bias))
    want = torch.autograd.grad((ref * up).sum(), (ref_y, bias))
    for a, e in zip(grads, want):
        assert torch.allclose(a, e, atol=1e-6)
    assert torch.equal(y0, y.detach())  # the caller's leaf is untouched (only the fresh y * 1.0 is overwritten)
