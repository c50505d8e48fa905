"""The WeightNet network: a pre-norm transformer encoder over weight (and probe) tokens with multi-task
heads, and the batching that feeds it.

No positional information enters except the tokens' own ``position`` ids, which are 0 inside a
permutable set, so with the ``invariant`` tokenizers the encoder sees each group's neurons as a set
and pooling (CLS, mean or attention) is symmetric: predictions do not depend on neuron order.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ZooError
from core.spec import LAYER_KINDS
from weightnet.config import WeightNetConfig
from weightnet.probes import ProbeHandle, ProbeRunner, probe_features
from weightnet.tokenizers import MAX_DEPTH, MAX_POS, N_META, N_ROLES, Tokens, feature_dim

# standardized features and summaries are clipped to +-Z_CLIP: a statistic (nearly) constant over the
# training zoo has a tiny std, and an unseen architecture would otherwise feed the encoder values ~1e5
Z_CLIP = 10.0


# --- batching --------------------------------------------------------------------------------------
def collate(tokens: Sequence[Tokens], summary_width: int | None = None) -> dict[str, torch.Tensor]:
    """Pad to the longest: every field gets a leading batch axis; mask marks real tokens. Summaries are
    zero-padded or truncated to ``summary_width`` (default: the longest)."""
    T = max(len(t) for t in tokens)
    S = max(t.summary.numel() for t in tokens) if summary_width is None else summary_width
    out = {}
    for name in ("features", "kind", "role", "depth", "meta", "position", "group", "mask"):
        rows = []
        for t in tokens:
            x = getattr(t, name)
            pad = [0, 0] * (x.dim() - 1) + [0, T - x.shape[0]]
            rows.append(F.pad(x, pad) if x.dtype != torch.bool else F.pad(x, pad, value=False))
        out[name] = torch.stack(rows)
    out["summary"] = torch.stack([F.pad(t.summary.float()[:S], [0, S - min(S, t.summary.numel())]) for t in tokens])
    return out


class Collated:
    """Every token set of a fixed list collated (padded) once; ``batch(idx)`` slices rows and trims the
    padding to the batch's longest, which equals ``collate([tokens[i] for i in idx], width)`` without
    re-padding per step (padding per step measured ~10% of a training step; here ~0)."""

    def __init__(self, tokens: Sequence[Tokens], summary_width: int | None = None):
        self.lengths = torch.tensor([len(t) for t in tokens])
        self.data = collate(tokens, summary_width) if tokens else {}

    def batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(list(idx), dtype=torch.long)
        T = int(self.lengths[index].max())
        return {k: (v[index] if k == "summary" else v[index, :T]) for k, v in self.data.items()}


def buckets(lengths: Sequence[int], batch_size: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """Batches of similar token counts (less padding); shuffled when a generator is given."""
    idx = torch.randperm(len(lengths), generator=generator).tolist() if generator is not None else list(range(len(lengths)))
    window = batch_size * 8
    batches = []
    for i in range(0, len(idx), window):
        chunk = sorted(idx[i:i + window], key=lambda j: lengths[j])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


# --- network ---------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, d: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape  # mask: (B, 1, 1, T) True = attend
        q, k, v = self.qkv(self.n1(x)).reshape(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, T, d/heads)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
        return x + self.mlp(self.n2(x))


Handles = Sequence["ProbeHandle | None"]


class WeightNetModel(nn.Module):
    def __init__(self, cfg: WeightNetConfig, n_regression: int, n_summary: int = 0,
                 probe_shape: Sequence[int] | None = None, probe_out: int = 0):
        super().__init__()
        d, fdim = cfg.d_model, feature_dim(cfg.tokenizer)
        self.weight_tokens = cfg.weight_tokens
        # probe tokens need one input space (probe_shape: one example's shape) and its output width
        self.probe_shape = tuple(int(x) for x in probe_shape) if cfg.probes and probe_shape and probe_out else None
        self.probe_out = int(probe_out) if self.probe_shape else 0
        self.runner: ProbeRunner | None = None  # set by the predictor (rebuilt modules are not parameters)
        if self.probe_shape:
            if cfg.probe_latent:  # per-probe codes (P, L) through one shared deep linear generator
                L = cfg.probe_latent
                self.probe_code = nn.Parameter(torch.randn(cfg.probes, L))
                self.probe_gen = nn.Sequential(nn.Linear(L, L), nn.Linear(L, L), nn.Linear(L, math.prod(self.probe_shape)))
            else:  # the inputs themselves: noise, then learned
                init = torch.rand if cfg.probe_init == "uniform" else torch.randn
                self.probes = nn.Parameter(init(cfg.probes, *self.probe_shape))
            self.probe_embed = nn.Linear(2 * self.probe_out, d)
            self.probe_index = nn.Embedding(cfg.probes, d)  # probe i is one fixed (learned) input: not a set
        self.readout = (nn.Sequential(nn.Linear(2 * self.probe_out * cfg.probes, d), nn.GELU(), nn.Linear(d, d))
                        if self.probe_shape and cfg.probe_readout else None)
        self.n_summary = n_summary if cfg.summary else 0
        self.register_buffer("sum_mean", torch.zeros(self.n_summary))
        self.register_buffer("sum_std", torch.ones(self.n_summary))
        self.summary = nn.Sequential(nn.Linear(self.n_summary, d), nn.GELU(), nn.Linear(d, d)) if self.n_summary else None
        self.drop = nn.Dropout(cfg.dropout)
        d_head = d * (1 + bool(self.n_summary) + (self.readout is not None))
        self.pooling = cfg.pooling
        self.layer_type, self.segment = cfg.layer_type_embedding, cfg.segment_embedding
        self.register_buffer("feat_mean", torch.zeros(fdim))
        self.register_buffer("feat_std", torch.ones(fdim))
        self.embed = nn.Linear(fdim, d)
        self.meta = nn.Linear(N_META, d)
        self.kind = nn.Embedding(len(LAYER_KINDS), d)
        self.role = nn.Embedding(N_ROLES, d)
        self.depth = nn.Embedding(MAX_DEPTH, d)
        self.position = nn.Embedding(MAX_POS + 1, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.attn_query = nn.Linear(d, 1)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        self.regress = nn.Linear(d_head, n_regression)

    def probe_inputs(self) -> torch.Tensor:
        """(P, *probe_shape): the learned probes, free or generated from their codes."""
        if hasattr(self, "probe_gen"):
            return self.probe_gen(self.probe_code).reshape(-1, *self.probe_shape)
        return self.probes

    def probe_tokens(self, handles: Handles) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, P, 2 * probe_out) probe features, zeros for a model that could not be run; (B,) bool: the
        model could be run) for each handle. The zeros are what the probe readout reads for such a model
        (its probe tokens are masked out of the attention)."""
        if self.probe_shape is None or self.runner is None:
            raise ZooError("this WeightNet has no probe tokens (probes=0 or no rebuildable training model)")
        logits, has = self.runner.outputs(self.probe_inputs(), handles, self.probe_out)
        return probe_features(logits) * has[:, None, None].to(logits.device), has

    def encode(self, b: dict[str, torch.Tensor], handles: Handles | None = None) -> torch.Tensor:
        """(B, T, ...) padded batch (+ each model's probe handle) -> (B, d) pooled embedding."""
        return self._encode(b, handles)[0]

    def _encode(self, b: dict[str, torch.Tensor], handles: Handles | None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The pooled embedding, (B,) bool: the model was read from its probe tokens alone (None when
        the batch asks no model for that view), and the (B, P, F) probe features (zeros for a model
        without them; None when no probes ran). ``b["probe_only"]`` (B,) bool asks for that view; a model
        without probe tokens keeps its weight tokens whatever it asks."""
        f = ((b["features"] - self.feat_mean) / self.feat_std).clamp(-Z_CLIP, Z_CLIP)
        x = self.embed(f)
        if self.layer_type:
            x = x + self.kind(b["kind"]) + self.role(b["role"])
        if self.segment:
            x = x + self.meta(b["meta"]) + self.depth(b["depth"]) + self.position(b["position"])
        mask = b["mask"] if self.weight_tokens else torch.zeros_like(b["mask"])  # off: every weight token masked
        only = feats = None
        if self.probe_shape is not None and handles is not None and self.runner is not None:
            feats, has = self.probe_tokens(handles)  # (B, P, F), (B,)
            feats = feats.to(x.device)
            has = has.to(mask.device)
            if "probe_only" in b:
                only = b["probe_only"].to(mask.device) & has
                mask = mask & ~only[:, None]
            x = torch.cat([x, self.probe_embed(feats) + self.probe_index.weight[None]], 1)
            mask = torch.cat([mask, has[:, None].expand(-1, feats.shape[1])], 1)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)  # (B, 1 + T (+ P), d)
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)
        for blk in self.blocks:
            x = blk(x, mask[:, None, None, :])
        x = self.norm(x)
        if self.pooling == "cls":
            return x[:, 0], only, feats
        tok, m = x[:, 1:], mask[:, 1:, None].to(x.dtype)
        if self.pooling == "mean":
            return (tok * m).sum(1) / m.sum(1).clamp_min(1), only, feats
        logits = self.attn_query(tok).masked_fill(m == 0, float("-inf"))
        return (torch.softmax(logits, 1) * tok).sum(1), only, feats

    def head_input(self, b: dict[str, torch.Tensor], handles: Handles | None = None) -> torch.Tensor:
        """(B, d) pooled encoding, concatenated with the (B, d) summary embedding when configured (a
        probes-only model's summary reads as the training mean: standardized zeros) and the (B, d) probe
        readout when configured (of zero features when no probes ran)."""
        z, only, feats = self._encode(b, handles)
        parts = [z]
        if self.summary is not None:
            s = ((b["summary"] - self.sum_mean) / self.sum_std).clamp(-Z_CLIP, Z_CLIP)
            if only is not None:
                s = s.masked_fill(only[:, None], 0.0)
            parts.append(self.summary(s))
        if self.readout is not None:
            width = self.readout[0].in_features
            parts.append(self.readout(feats.flatten(1) if feats is not None else z.new_zeros(z.shape[0], width)))
        return self.drop(torch.cat(parts, 1))

    def forward(self, b: dict[str, torch.Tensor], handles: Handles | None = None) -> torch.Tensor:
        """(B, n_regression) standardized predictions."""
        return self.regress(self.head_input(b, handles))
