"""Width-invariant weight features (TokenizerConfig.width_invariant): per-unit statistics as fan-in sums and
fan-in-scaled layer summaries are unchanged by function-preserving widening (evaluation.widen at 2x,
4x, 8x), while the default per-unit means are not."""
from __future__ import annotations

import pytest
import torch

from fixtures.weightnet_models import example_sample
from weightnet.config import TokenizerConfig
from evaluation.widen import widen
from weightnet.tokenizers import N_STATS, N_SUMMARY, ROLE_OUT, per_layer_stats, tokenize

BIG = dict(unit_budget=4096, max_tokens=1 << 20)  # no bucket pooling: every unit is its own token


def _out_means(s, cfg: TokenizerConfig) -> dict[int, torch.Tensor]:
    """depth -> mean over the layer's incoming-weight tokens of their own features (stats, CDF, bias):
    duplicating units leaves this mean unchanged exactly when each unit's features are unchanged."""
    tok = tokenize(s.state, s.spec, cfg)
    own = tok.features.shape[1] // 2  # the second half holds the partner features
    out = {}
    for d in tok.depth.unique().tolist():
        sel = (tok.depth == d) & (tok.role == ROLE_OUT)  # weight tensors, output axis
        if sel.any():
            out[d] = tok.features[sel, :own].double().mean(0)
    return out


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    scale = max(1.0, float(a.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale, (a, b)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_unit_features_and_summary_are_width_invariant(arch: str, rng: torch.Generator) -> None:
    s = example_sample(arch, rng)
    inv, plain = TokenizerConfig(width_invariant=True, **BIG), TokenizerConfig(width_invariant=False, **BIG)
    base, base_plain = _out_means(s, inv), _out_means(s, plain)
    stats = per_layer_stats(s.state, s.spec, width_invariant=True)
    exact = [0, 1, 2, 2 + 4]  # mean, variance, min, max (interpolated quartiles move slightly with repeats)
    exact_cols = exact + [N_SUMMARY + i for i in exact]  # the same statistics of the biases (copied verbatim)
    changed = 0.0
    for factor in (2, 4, 8):
        w = widen(s, factor)
        wide = _out_means(w, inv)
        assert wide.keys() == base.keys()
        for d in base:
            assert_close_rel(base[d], wide[d], 1e-4)
        ws = per_layer_stats(w.state, w.spec, width_invariant=True)
        assert_close_rel(torch.tensor(stats[:, exact_cols]), torch.tensor(ws[:, exact_cols]), 1e-4)
        wide_plain = _out_means(w, plain)
        changed = max(changed, max(float((base_plain[d][:N_STATS] - wide_plain[d][:N_STATS]).abs().max())
                                   for d in base_plain))
    assert changed > 1e-2  # the default features (means, not sums) do move: the test can tell them apart


def test_width_invariant_meta_drops_width(rng: torch.Generator) -> None:
    s = example_sample("mlp", rng)
    cfg = TokenizerConfig(width_invariant=True, **BIG)
    a, b = tokenize(s.state, s.spec, cfg), tokenize(widen(s, 4).state, widen(s, 4).spec, cfg)
    assert torch.equal(a.meta.unique(dim=0), b.meta.unique(dim=0))
    assert torch.allclose(a.summary[: 2 * N_SUMMARY][[0, 1, 2, 6]], b.summary[: 2 * N_SUMMARY][[0, 1, 2, 6]], rtol=1e-4)
