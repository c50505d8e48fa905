"""Where WeightNet looks: attention mass per layer kind and depth.

Every ``Block`` of the encoder computes ``softmax(q k^T / sqrt(d_head))`` inside
``scaled_dot_product_attention``, which does not return the weights. A forward hook on each block
captures its input and recomputes the same weights from the block's own ``n1`` and ``qkv`` (no copy of
the encoder's code, so they cannot drift apart). What is read depends on the pooling: with ``cls``
pooling the prediction reads the CLS token, so its attention row is used; with ``mean`` / ``attention``
pooling every token feeds the heads, so the rows of all real tokens are averaged.

The weight a token receives is averaged over blocks and heads, summed over the tokens of one layer
(``<kind>@<depth>``, the keys ``evaluation.interpret`` uses for sensitivity), normalized to sum to
1 per model over the weight tokens (the CLS token's self-attention is left out) and averaged over models.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from core.errors import ZooError
from core.spec import LAYER_KINDS
from weightnet.data import ZooSample


def block_attention(block: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x: (B, T, d), mask: (B, 1, 1, T) True = attend -> attention weights (B, heads, T, T)."""
    B, T, d = x.shape
    h = block.heads
    q, k, _ = block.qkv(block.n1(x)).reshape(B, T, 3, h, d // h).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)  # (B, heads, T, T)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)


@torch.no_grad()
def token_attention(model: nn.Module, batch: dict[str, torch.Tensor], pooling: str) -> torch.Tensor:
    """(B, T) attention each weight token receives from what the pooling reads, mean over blocks/heads."""
    maps: list[torch.Tensor] = []

    def hook(block: nn.Module, args: tuple) -> None:
        x, mask = args
        maps.append(block_attention(block, x, mask))

    handles = [blk.register_forward_pre_hook(hook) for blk in model.blocks]
    try:
        model.eval().encode(batch)
    finally:
        for h in handles:
            h.remove()
    a = torch.stack(maps).mean((0, 2))  # (B, 1 + T, 1 + T): query x key, CLS first
    if pooling == "cls":
        received = a[:, 0]
    else:
        real = batch["mask"].to(a.dtype)  # (B, T)
        received = (a[:, 1:] * real[:, :, None]).sum(1) / real.sum(1, keepdim=True).clamp_min(1)
    return received[:, 1:] * batch["mask"].to(a.dtype)  # drop the CLS key; padding gets 0


def attention_by_layer(predictor, samples: Sequence[ZooSample], batch_size: int = 64) -> dict[str, float]:
    """``kind@depth`` -> mean share of WeightNet's attention on that layer's tokens (sums to 1)."""
    if predictor.model is None:
        raise ZooError("WeightNet is not trained (call fit or load a checkpoint)")
    if not samples:
        return {}
    toks = predictor.pipeline.many(samples)
    totals: dict[str, float] = {}
    for i in range(0, len(toks), batch_size):
        chunk = toks[i:i + batch_size]
        b = predictor._batch(chunk, predictor.model)
        received = token_attention(predictor.model, b, predictor.config.pooling).cpu()
        share = received / received.sum(1, keepdim=True).clamp_min(1e-12)  # (B, T), rows sum to 1
        for j, t in enumerate(chunk):
            n = len(t)
            for kind, depth, w in zip(t.kind.tolist(), t.depth.tolist(), share[j, :n].tolist()):
                key = f"{LAYER_KINDS[kind]}@{depth}"
                totals[key] = totals.get(key, 0.0) + w
    return {k: v / len(toks) for k, v in sorted(totals.items(), key=lambda kv: (int(kv[0].split("@")[1]), kv[0]))}
