"""Canonicalization: permuted copies of a network share one canonical form, which computes the same function."""
from __future__ import annotations

import pytest
import torch

from core.spec import permute, random_perms
from fixtures.weightnet_models import example_sample, hidden_groups, weightnet_archs
from weightnet.canonical import CANONICALIZERS, align, canonicalize, module_activations, weight_sort
from zoo.archs import build

UNCHANGED = ("invariant", "none")  # the encoder handles permutations (or the ablation ignores them)
METHODS = [m for m in CANONICALIZERS.names() if m not in UNCHANGED]  # a new canonicalizer is tested for free


@pytest.mark.parametrize("method", UNCHANGED)
def test_invariant_and_none_leave_the_weights_as_they_are(method: str, rng: torch.Generator) -> None:
    s = example_sample("mlp", rng)
    out = canonicalize(s.state, s.spec, method)
    assert out.keys() == s.state.keys() and all(torch.equal(out[k], s.state[k]) for k in out)


def assert_states_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol), k


def _canon(sample, state, method: str, reference=None) -> dict:
    fwd = module_activations(sample.arch, sample.arch_config, sample.spec) if method == "activation_sort" else None
    return canonicalize(state, sample.spec, method, forward=fwd, reference=reference)


@pytest.mark.parametrize("arch", weightnet_archs())
@pytest.mark.parametrize("method", METHODS)
def test_permuted_copies_share_a_canonical_form(arch: str, method: str, rng: torch.Generator) -> None:
    s = example_sample(arch, rng)
    if not hidden_groups(s.spec):
        pytest.skip(f"{arch} has no permutable group")
    ref = example_sample(arch, rng, "ref").state if method == "align" else None
    permuted = permute(s.state, s.spec, random_perms(s.spec, rng))
    assert_states_close(_canon(s, s.state, method, ref), _canon(s, permuted, method, ref))


@pytest.mark.parametrize("arch", weightnet_archs())
@pytest.mark.parametrize("method", METHODS)
def test_canonical_form_computes_the_same_function(arch: str, method: str, rng: torch.Generator) -> None:
    s = example_sample(arch, rng)
    ref = example_sample(arch, rng, "ref").state if method == "align" else None
    module = build(arch, s.arch_config).module.eval()
    shape = s.arch_config["input_shape"]
    if s.arch_config.get("vocab_size"):
        x = torch.randint(0, int(s.arch_config["vocab_size"]), (4, *shape), generator=rng)
    else:
        x = torch.rand(4, *shape, generator=rng)
    module.load_state_dict(s.state)
    before = module(x)
    module.load_state_dict(_canon(s, s.state, method, ref))
    after = module(x)
    before = before if isinstance(before, torch.Tensor) else before[0]
    after = after if isinstance(after, torch.Tensor) else after[0]
    assert torch.allclose(before, after, atol=1e-4)


def test_weight_sort_orders_units_by_norm(rng: torch.Generator) -> None:
    s = example_sample("mlp", rng)
    c = weight_sort(s.state, s.spec)
    # every hidden group's first unit has the largest combined (incoming + bias + outgoing) norm
    score = c["layers.0.weight"].pow(2).sum(1) + c["layers.0.bias"].pow(2) + c["layers.1.weight"].pow(2).sum(0)
    assert torch.all(score[:-1] >= score[1:] - 1e-6)


def test_alignment_moves_closer_to_the_reference(rng: torch.Generator) -> None:
    s, r = example_sample("mlp", rng), example_sample("mlp", rng, "ref")
    near = {k: v + 0.05 * torch.randn(v.shape, generator=rng) for k, v in r.state.items()}  # a noisy copy of r ...
    hidden = permute(near, s.spec, random_perms(s.spec, rng))  # ... with its neurons shuffled
    ref = weight_sort(r.state, s.spec)

    def dist(a: dict) -> float:
        return sum(float((a[k] - ref[k]).pow(2).sum()) for k in ref)

    aligned = align(hidden, s.spec, r.state)
    assert dist(aligned) < dist(weight_sort(hidden, s.spec))
    assert dist(aligned) < 0.1 * dist(hidden)
