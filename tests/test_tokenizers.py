"""Tokenizers: any registered architecture tokenizes; neuron/layer tokens are a set under neuron permutations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import BadWeights, ZooError
from core.spec import ParamSpec, PermGroup, WeightSpec, permute, random_perms
from fixtures.symmetry import break_coupling
from fixtures.weightnet_models import example_sample, weightnet_archs
from weightnet import tokenizers
from weightnet.config import TokenizerConfig, WeightNetConfig
from weightnet.tokenizers import (N_POOLED, N_SUMMARY, TOKENIZERS, Tokens, feature_dim, layer_summary, per_layer_stats,
                                  pooled_summary, summarize, tokenize, unit_features)


def assert_same_token_set(a: Tokens, b: Tokens, atol: float = 1e-5) -> None:
    """Equal up to a reordering of tokens (rows sorted by a random projection of all fields)."""
    assert len(a) == len(b)

    def rows(t: Tokens) -> torch.Tensor:
        r = torch.cat([t.features, t.meta, torch.stack([t.kind, t.role, t.depth, t.position], 1).float()], 1)
        key = r.double() @ torch.linspace(1, 2, r.shape[1], dtype=torch.float64)
        return r[torch.argsort(key)]

    assert torch.allclose(rows(a), rows(b), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("arch", weightnet_archs())
@pytest.mark.parametrize("name", TOKENIZERS.names())
def test_every_arch_tokenizes(arch: str, name: str, rng: torch.Generator) -> None:
    s = example_sample(arch, rng)
    cfg = TokenizerConfig(name=name)
    t = tokenize(s.state, s.spec, cfg)
    assert t.features.shape == (len(t), feature_dim(cfg))
    assert torch.isfinite(t.features).all() and torch.isfinite(t.meta).all()
    assert t.mask.all() and len(t) <= cfg.max_tokens + 64
    for f in ("kind", "role", "depth", "position", "group", "mask"):
        assert getattr(t, f).shape == (len(t),)


@pytest.mark.parametrize("arch", weightnet_archs())
@pytest.mark.parametrize("name", ["neuron", "layer"])
def test_tokens_are_a_set_under_neuron_permutations(arch: str, name: str, rng: torch.Generator) -> None:
    s = example_sample(arch, rng)
    cfg = TokenizerConfig(name=name, unit_budget=4)  # small budget: pooling must stay invariant too
    perms = random_perms(s.spec, rng)
    assert_same_token_set(tokenize(s.state, s.spec, cfg), tokenize(permute(s.state, s.spec, perms), s.spec, cfg))


@pytest.mark.parametrize("arch", weightnet_archs())
def test_neuron_tokens_see_broken_coupling(arch: str, rng: torch.Generator) -> None:
    s = example_sample(arch, rng)
    cfg = TokenizerConfig()
    with pytest.raises(AssertionError):
        assert_same_token_set(tokenize(s.state, s.spec, cfg), tokenize(break_coupling(s.state, s.spec, rng), s.spec, cfg))


def test_global_and_positional_tokens_see_permutations(rng: torch.Generator) -> None:
    s = example_sample("mlp", rng)
    perms = random_perms(s.spec, rng)
    for cfg in (TokenizerConfig(name="global"), TokenizerConfig(permutation="none")):
        a, b = tokenize(s.state, s.spec, cfg), tokenize(permute(s.state, s.spec, perms), s.spec, cfg)
        assert not torch.allclose(a.features, b.features)


def test_unit_features_accept_any_fan_in_and_ignore_entry_order(rng: torch.Generator) -> None:
    for m in (1, 2, 7, 300):
        x = torch.randn(5, m, generator=rng)
        f = unit_features(x, 9)
        assert f.shape == (5, 16)
        shuffled = x[:, torch.randperm(m, generator=rng)]
        assert torch.allclose(f, unit_features(shuffled, 9), atol=1e-6)
    assert torch.allclose(unit_features(torch.tensor([[3.0, -4.0]]), 1)[0, :7],
                          torch.tensor([-0.5, 3.5, 3.5, (12.5) ** 0.5, -4.0, 3.0, 4.0]))


def test_unit_features_cdf_is_the_same_at_once_and_level_by_level(rng: torch.Generator, monkeypatch) -> None:
    x = torch.randn(6, 50, generator=rng)
    at_once = unit_features(x, 5)
    monkeypatch.setattr(tokenizers, "CDF_AT_ONCE", 0)  # what tensors above the size threshold take
    assert torch.equal(unit_features(x, 5), at_once)
    mean, std = x.mean(1, keepdim=True), x.std(1, correction=0, keepdim=True)
    want = torch.stack([(x <= mean + t * std).float().mean(1) for t in (-1.5, -0.75, 0.0, 0.75, 1.5)], 1)
    assert torch.allclose(at_once[:, 7:], want)


def test_wide_layers_respect_the_token_budget(rng: torch.Generator) -> None:
    spec = WeightSpec((ParamSpec("w", (1000, 20), "linear", "weight", 0, ("h", None)),
                       ParamSpec("v", (3, 1000), "linear", "weight", 1, (None, "h"))), (PermGroup("h", 1000),))
    state = {"w": torch.randn(1000, 20, generator=rng), "v": torch.randn(3, 1000, generator=rng)}
    t = tokenize(state, spec, TokenizerConfig(unit_budget=16))
    assert len(t) == 16 + 16 + 3


def test_spec_without_float_tensors_is_refused() -> None:
    spec = WeightSpec((ParamSpec("n", (), "buffer", "buffer", 0, ()),))
    with pytest.raises(BadWeights, match="no floating-point tensor"):
        tokenize({"n": torch.tensor(3)}, spec, TokenizerConfig())


@pytest.mark.parametrize("arch", weightnet_archs())
def test_layer_summary_is_invariant_and_sees_scale(arch: str, rng: torch.Generator) -> None:
    s = example_sample(arch, rng)
    a = layer_summary(s.state, s.spec)
    assert a.dim() == 1 and a.numel() % (2 * N_SUMMARY) == 0 and torch.isfinite(a).all()
    for other in (permute(s.state, s.spec, random_perms(s.spec, rng)), break_coupling(s.state, s.spec, rng)):
        assert torch.allclose(layer_summary(other, s.spec), a, atol=1e-6, rtol=1e-5)  # multisets per layer
    scaled = {k: v * 2 if v.is_floating_point() else v for k, v in s.state.items()}
    assert not torch.allclose(layer_summary(scaled, s.spec), a)
    assert torch.equal(tokenize(s.state, s.spec, TokenizerConfig(width_invariant=False)).summary, a)


def assert_stats_match_numpy(got: torch.Tensor, x: np.ndarray) -> None:
    """got: (N_SUMMARY,) from layer_summary; x: every entry of that layer (float64)."""
    want = [x.mean(), x.var(), *np.quantile(x, [0, 0.25, 0.5, 0.75, 1.0])]
    assert np.allclose(got.numpy(), want, rtol=1e-6, atol=1e-7 * np.abs(x).max()), (got, want)


@pytest.mark.parametrize("n", [1, 2, 35, 1000, 300_001])
@pytest.mark.parametrize("ties", [False, True])
def test_layer_summary_matches_numpy_quantiles(n: int, ties: bool, rng: torch.Generator) -> None:
    # layer 0: a weight split over two tensors (one fp16) and a bias; layer 1: a weight only
    w = torch.randn(n, generator=rng) * 3 + 1
    if ties:  # many equal values: interpolation between equal neighbours
        w = torch.round(w)
    w1, w2 = w[: n // 2].reshape(-1, 1), w[n // 2:].half()
    b = torch.rand(7, generator=rng)
    v = torch.randn(4, 5, generator=rng).exp()  # skewed
    spec = WeightSpec((ParamSpec("w1", tuple(w1.shape), "linear", "weight", 0, (None, None)),
                       ParamSpec("w2", tuple(w2.shape), "linear", "weight", 0, (None,)),
                       ParamSpec("b", (7,), "linear", "bias", 0, (None,)),
                       ParamSpec("v", (4, 5), "linear", "weight", 1, (None, None))))
    got = layer_summary({"w1": w1, "w2": w2, "b": b, "v": v}, spec).reshape(4, N_SUMMARY)
    entries = torch.cat([w1.reshape(-1), w2.float()]).double().numpy()
    assert_stats_match_numpy(got[0], entries)
    assert_stats_match_numpy(got[1], b.double().numpy())
    assert_stats_match_numpy(got[2], v.double().reshape(-1).numpy())
    assert torch.equal(got[3], torch.zeros(N_SUMMARY))  # layer 1 has no bias


@pytest.mark.parametrize("arch", weightnet_archs())
def test_pooled_summary_is_depth_free_invariant_and_pools_the_layer_stats(arch: str, rng: torch.Generator) -> None:
    s = example_sample(arch, rng)
    per = per_layer_stats(s.state, s.spec)  # (layers, 2 * N_SUMMARY)
    got = pooled_summary(s.state, s.spec)
    assert got.shape == (N_POOLED,) and torch.isfinite(got).all()  # one width for every architecture
    n_params = sum(s.state[p.name].numel() for p in s.spec.params if p.role != "buffer")
    want = np.concatenate([per[0], per[-1], per.mean(0), per.min(0), per.max(0),
                           [np.log1p(n_params), np.log1p(per.shape[0])]])
    assert np.allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)
    for other in (permute(s.state, s.spec, random_perms(s.spec, rng)), break_coupling(s.state, s.spec, rng)):
        assert torch.allclose(pooled_summary(other, s.spec), got, atol=1e-6, rtol=1e-5)
    both = tokenize(s.state, s.spec, TokenizerConfig(summary="both", width_invariant=False)).summary
    assert torch.equal(both, torch.cat([got, layer_summary(s.state, s.spec)]))
    assert torch.equal(summarize(s.state, s.spec, "pooled"), got)


def test_unknown_summary_kind_is_refused() -> None:
    with pytest.raises(ZooError, match="unknown summary 'deep'"):
        WeightNetConfig(tokenizer=TokenizerConfig(summary="deep"))
