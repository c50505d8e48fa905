"""WeightNet's attention by layer: the recomputed weights are the encoder's, shares are exact on a known case."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.errors import ZooError
from core.spec import LAYER_KINDS, permute, random_perms
from fixtures.weightnet_models import example_sample, with_state
from weightnet.attention import attention_by_layer, block_attention
from weightnet.config import TokenizerConfig, WeightNetConfig
from evaluation import interpret
from weightnet.model import WeightNetPredictor
from weightnet.network import Block


@pytest.fixture
def fitted() -> tuple[WeightNetPredictor, list]:
    g = torch.Generator().manual_seed(0)
    samples = [example_sample("cnn", g, f"a{i}", {"y": float(i)}) for i in range(6)]
    pred = WeightNetPredictor(WeightNetConfig(tokenizer=TokenizerConfig(), d_model=16, heads=2, depth=2, epochs=2,
                                              ensemble=1))
    pred.fit(samples[:4], samples[4:], ["y"], seed=0)
    return pred, samples


def test_recomputed_weights_reproduce_the_blocks_attention(rng: torch.Generator) -> None:
    blk = Block(8, 2, 2)
    x = torch.randn(3, 5, 8, generator=rng)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    with torch.no_grad():
        w = block_attention(blk, x, mask)  # (3, 2, 5, 5)
    assert torch.allclose(w.sum(-1), torch.ones(3, 2, 5))
    assert float(w[1, :, :, 3:].abs().max()) == 0.0  # padding receives nothing
    with torch.no_grad():
        q, k, v = blk.qkv(blk.n1(x)).reshape(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
        assert torch.allclose(w @ v, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_uniform_attention_gives_each_layer_its_token_share(fitted, pooling: str) -> None:
    pred, samples = fitted
    pred.config = WeightNetConfig.from_dict({**pred.config.to_dict(), "pooling": pooling})
    d = pred.config.d_model
    with torch.no_grad():
        for blk in pred.model.blocks:  # zero queries: every score is 0, attention is uniform
            blk.qkv.weight[:d].zero_()
            blk.qkv.bias[:d].zero_()
    shares = attention_by_layer(pred, samples[:2])
    toks = pred.pipeline.many(samples[:2])
    expected: dict[str, float] = {}
    for t in toks:
        for kind, depth in zip(t.kind.tolist(), t.depth.tolist()):
            key = f"{LAYER_KINDS[kind]}@{depth}"
            expected[key] = expected.get(key, 0.0) + 1.0 / len(t) / len(toks)
    assert shares.keys() == expected.keys()
    for key, v in expected.items():
        assert shares[key] == pytest.approx(v, abs=1e-6)


def test_shares_sum_to_one_match_sensitivity_keys_and_ignore_permutations(fitted, rng: torch.Generator) -> None:
    pred, samples = fitted
    shares = attention_by_layer(pred, samples)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(v >= 0 for v in shares.values())
    assert set(shares) <= {k for s in samples for k in interpret.layer_keys(s)}
    assert interpret.attention(pred, samples) == shares  # the evaluation report finds it on the predictor
    s = samples[0]
    permuted = with_state(s, permute(s.state, s.spec, random_perms(s.spec, rng)), "perm")
    a, b = attention_by_layer(pred, [s]), attention_by_layer(pred, [permuted])
    assert a.keys() == b.keys()
    assert np.allclose([a[k] for k in a], [b[k] for k in a], atol=1e-6)


def test_untrained_predictor_is_a_clear_error(fitted) -> None:
    with pytest.raises(ZooError, match="not trained"):
        attention_by_layer(WeightNetPredictor(), fitted[1])
