"""Stacked eval forwards (zoo.stacked): members of differing configs run in one padded call give each
member's own logits and input gradients (to float rounding); the probe runner uses one call per
stacking key, and its probe outputs equal those of each model run alone."""
from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from weightnet.data import ZooSample
from weightnet.probes import ProbeRunner
from zoo.archs import build
from zoo.sampling import WildCNN1dSpace, WildCNNSpace, sample_wildcnn, sample_wildcnn1d
from zoo.population_wild import group_key, padded_config
from zoo.stacked import STACKED, StackedForward, wild_logits, wild_shapes

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# the architectures zoo.stacked.wild_logits runs, with a config sampler (small members) each; every
# registered stacked forward must have an entry here
SAMPLERS = {
    "wildcnn": (lambda seed: sample_wildcnn(WildCNNSpace(layers=(2, 3), channels=(3, 12)), seed, [1, 8, 8], 10)),
    "wildcnn1d": (lambda seed: sample_wildcnn1d(WildCNN1dSpace(WildCNNSpace(layers=(2, 3), channels=(3, 12)),
                                                               strides=(1,)), seed, [1, 40], 10)),
}


def test_every_stacked_architecture_is_tested() -> None:
    assert STACKED.names() and set(STACKED.names()) <= set(SAMPLERS)


def random_module(arch: str, config: dict, gen: torch.Generator) -> torch.nn.Module:
    """The arch's module with random weights and BatchNorm statistics, in eval mode."""
    module = build(arch, config).module
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=gen) * 0.4)
    return module.eval()


def groups_of(arch: str, n: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for seed in range(n):
        cfg = SAMPLERS[arch](seed)
        out[group_key(cfg)].append(cfg)
    return out


def assert_close_relative(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale, (float((a - b).abs().max()), scale)


@pytest.mark.parametrize("arch", sorted(SAMPLERS))
def test_wild_shapes_equal_the_built_modules_state(arch: str) -> None:
    """wild_shapes reads a config's state shapes without building it: the same (name, shape) pairs as the
    module's float state, for single members and for the padded layout of every group."""
    groups = groups_of(arch, 40)
    padded = [padded_config(cs) for cs in groups.values()]
    assert {c["norm"] for cs in groups.values() for c in cs} == {"none", "batch", "layer"}
    for cfg in [c for cs in groups.values() for c in cs] + padded:
        want = {k: tuple(v.shape) for k, v in build(arch, cfg).module.state_dict().items() if v.is_floating_point()}
        got = wild_shapes(cfg)
        assert len(got) == len(want) and dict(got) == want, cfg


@pytest.mark.parametrize("arch", sorted(SAMPLERS))
def test_stacked_logits_and_input_gradients_equal_each_members_own(arch: str) -> None:
    gen = torch.Generator().manual_seed(0)
    groups = groups_of(arch, 40)
    big = max(groups.values(), key=len)
    assert len(big) >= 4 and len({str(c) for c in big}) >= 4, "the test needs members of differing configs"
    # every norm kind, activation and residual choice the sampler has is in the big group or another
    kinds = {(c["norm"], c["activation"], c["residual"]) for cs in groups.values() for c in cs}
    assert {k[0] for k in kinds} == {"none", "batch", "layer"}
    shape = tuple(big[0]["input_shape"])
    for configs in groups.values():
        modules = [random_module(arch, c, gen) for c in configs]
        x = torch.randn((6, *shape), generator=gen, requires_grad=True)
        got = wild_logits(configs, [m.state_dict() for m in modules], x)
        want = torch.stack([m(x) for m in modules])
        assert got.shape == want.shape == (len(configs), 6, 10)
        assert_close_relative(got.detach(), want.detach(), 1e-5)
        g_got, = torch.autograd.grad(got.square().sum(), x)
        g_want, = torch.autograd.grad(want.square().sum(), x)
        assert_close_relative(g_got, g_want, 1e-4)


@pytest.mark.parametrize("arch", STACKED.names())
def test_probe_runner_stacks_one_key_in_one_call_with_each_models_own_outputs(arch: str, monkeypatch) -> None:
    gen = torch.Generator().manual_seed(1)
    configs = max(groups_of(arch, 40).values(), key=len)
    samples = []
    for i, cfg in enumerate(configs):
        module = random_module(arch, cfg, gen)
        built = build(arch, cfg)
        samples.append(ZooSample(f"m{i}", f"r{i}", "fam", arch, cfg, built.spec,
                                 {k: v.clone() for k, v in module.state_dict().items()}, {}))
    runner = ProbeRunner()
    handles = runner.handles(samples)
    assert all(h is not None and h.stack for h in handles)
    probes = torch.rand((5, *configs[0]["input_shape"]), generator=gen)
    alone = torch.cat([runner.outputs(probes, [h], 10)[0] for h in handles])
    calls = []
    real = STACKED.get(arch)
    counting = StackedForward(real.key, lambda *a: calls.append(1) or real.logits(*a))
    monkeypatch.setitem(STACKED._entries, arch, counting)
    together, has = runner.outputs(probes, handles, 10)
    assert has.all() and len(calls) == 1
    assert_close_relative(together, alone, 1e-5)
