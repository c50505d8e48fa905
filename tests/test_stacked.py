"""Stacked eval forwards (zoo.stacked): members of differing configs (widths, kernels, strides, norms,
activations, residuals) run in one padded call give each member's own logits and input gradients (to
float rounding); the probe runner uses one call per stacking key, and its probe outputs equal those of
each model run alone."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch

from core.errors import ZooError
from weightnet.data import ZooSample
from weightnet.probes import ProbeRunner
from zoo import stacked
from zoo.archs import build
from zoo.sampling import WildCNN1dSpace, WildCNNSpace, sample_wildcnn, sample_wildcnn1d
from zoo.population_wild import group_key, padded_config
from zoo.stacked import STACKED, StackedForward, wild1d_logits, wild_shapes

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# every wild architecture with a config sampler (small members, strides 1 and 2 in 1-D); every
# registered stacked forward must have an entry here
SAMPLERS = {
    "wildcnn": (lambda seed: sample_wildcnn(WildCNNSpace(layers=(2, 3), channels=(3, 12)), seed, [1, 8, 8], 10)),
    "wildcnn1d": (lambda seed: sample_wildcnn1d(WildCNN1dSpace(WildCNNSpace(layers=(2, 3), channels=(3, 12))),
                                                seed, [1, 21], 10)),
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


def groups_of(arch: str, n: int, key=group_key) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for seed in range(n):
        cfg = SAMPLERS[arch](seed)
        out[key(cfg)].append(cfg)
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


@pytest.mark.parametrize("chunk_macs", [float("inf"), 0.0])  # one padded call per depth / a call per member
def test_wild1d_logits_and_input_gradients_equal_each_members_own(chunk_macs: float, monkeypatch) -> None:
    monkeypatch.setattr(stacked, "CHUNK_MACS", chunk_macs)
    gen = torch.Generator().manual_seed(0)
    groups = groups_of("wildcnn1d", 60, stacked.depth_key)
    for configs in groups.values():  # equal widths are rare in the sampler: one residual chain per depth
        c = configs[0]
        configs.append({**c, "channels": [5] * len(c["channels"]), "strides": [1] * len(c["channels"]),
                        "residual": True})
    big = max(groups.values(), key=len)
    # the biggest call mixes strides, widths, kernels, norms, activations and residuals (odd length 21:
    # a stride-2 layer rounds up), every choice the sampler has
    assert len({str(c["strides"]) for c in big}) >= 3 and len({str(c["channels"]) for c in big}) >= 8
    assert len({c["kernel_sizes"][-1] for c in big}) >= 2
    assert {c["norm"] for c in big} == {"none", "batch", "layer"} and len({c["activation"] for c in big}) >= 3
    assert any(any(stacked._skips(c)) for c in big)
    for configs in groups.values():
        modules = [random_module("wildcnn1d", c, gen) for c in configs]
        x = torch.randn((6, 1, 21), generator=gen, requires_grad=True)
        got = wild1d_logits(configs, [m.state_dict() for m in modules], x)
        want = torch.stack([m(x) for m in modules])
        assert got.shape == want.shape == (len(configs), 6, 10)
        assert_close_relative(got.detach(), want.detach(), 1e-5)
        g_got, = torch.autograd.grad(got.square().sum(), x)
        g_want, = torch.autograd.grad(want.square().sum(), x)
        assert_close_relative(g_got, g_want, 1e-4)


def test_chunks_partition_the_members_and_cut_only_when_it_pays() -> None:
    configs = [SAMPLERS["wildcnn1d"](seed) for seed in range(60)]
    configs = [c for c in configs if len(c["channels"]) == 3]
    def chunks(cs: list[dict]) -> list[list[int]]:
        return stacked._chunks(np.array([stacked._geometry(c, 21) for c in cs]), 8)

    whole = chunks(configs)
    assert sorted(m for ms in whole for m in ms) == list(range(len(configs)))
    tiny = {**configs[0], "channels": [3, 3, 3], "kernel_sizes": [3, 3, 3]}
    wide = {**configs[0], "channels": [400, 400, 400], "kernel_sizes": [7, 7, 7]}
    assert chunks([tiny, wide, tiny]) == [[0, 2], [1]]  # the tiny ones not padded to 400 wide
    assert chunks([tiny, tiny, tiny]) == [[0, 1, 2]]


def test_wild1d_logits_refuses_another_input_rank() -> None:
    cfg = SAMPLERS["wildcnn1d"](0)
    with pytest.raises(ZooError, match="1-D"):
        wild1d_logits([cfg], [build("wildcnn1d", cfg).module.state_dict()], torch.zeros(2, 1, 4, 4))


@pytest.mark.parametrize("arch", STACKED.names())
def test_probe_runner_stacks_one_key_in_one_call_with_each_models_own_outputs(arch: str, monkeypatch) -> None:
    gen = torch.Generator().manual_seed(1)
    configs = max(groups_of(arch, 40, STACKED.get(arch).key).values(), key=len)
    assert len({group_key(c) for c in configs}) >= 3  # several (depth, strides) groups in one call
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
    counting = StackedForward(real.key, real.bank, lambda *a: calls.append(1) or real.logits(*a))
    monkeypatch.setitem(STACKED._entries, arch, counting)
    together, has = runner.outputs(probes, handles, 10)
    assert has.all() and len(calls) == 1
    assert_close_relative(together, alone, 1e-5)
    some, _ = runner.outputs(probes, handles[::-2], 10)  # a subset of the bank's rows, in another order
    assert_close_relative(some, alone.flip(0)[::2], 1e-5)
    unbanked, _ = runner.outputs(probes, [runner.handle(s) for s in samples], 10)  # handles made one by one
    assert_close_relative(unbanked, alone, 1e-5)
