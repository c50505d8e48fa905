"""Weight statistics per layer and overall (also the StatNN baseline's raw material).

Every weight tensor with >= 2 dims is read as a matrix (out, rest): a conv kernel (out, in, k, k)
becomes (out, in*k*k). Spectral quantities come from ``torch.linalg.svdvals`` (exact, float64):
- spectral norm = largest singular value s_1;
- stable rank = ||W||_F^2 / s_1^2 (between 1 and rank(W));
- Frobenius norm; singular value quantiles (q10, q50, q90).
Elementwise statistics (sparsity = fraction |w| < 1e-3, mean, variance, quantiles) use every trainable
tensor, weights and biases, buffers excluded.
Names: ``weights_<stat>`` overall, ``weights_l<k>_<stat>`` for the weight matrix at depth k (the spec's
layer index; when one depth has several matrices, e.g. attention q/k/v, the first in the state dict).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from labeling.registry import ModelBatch, register_property
from storage.writes import ModelRecord
from zoo.datasets import Splits

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def as_matrix(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


def matrix_stats(w: torch.Tensor) -> dict[str, float]:
    m = as_matrix(w.detach().double())
    s = torch.linalg.svdvals(m)  # descending
    fro2 = float((m * m).sum())
    top = float(s[0])
    return {
        "spectral_norm": top,
        "stable_rank": fro2 / (top * top) if top > 0 else 0.0,
        "frobenius_norm": fro2 ** 0.5,
        "sv_q10": float(torch.quantile(s, 0.1)),
        "sv_q50": float(torch.quantile(s, 0.5)),
        "sv_q90": float(torch.quantile(s, 0.9)),
    }


def elementwise_stats(values: torch.Tensor, threshold: float) -> dict[str, float]:
    v = values.detach().double().flatten()
    out = {"sparsity": float((v.abs() < threshold).double().mean()), "mean": float(v.mean()),
           "var": float(v.var(unbiased=False)), "abs_mean": float(v.abs().mean())}
    qs = torch.quantile(v if v.numel() <= 16_000_000 else v[:: v.numel() // 16_000_000 + 1],
                        torch.tensor(QUANTILES, dtype=torch.float64))
    for q, val in zip(QUANTILES, qs):
        out[f"q{int(q * 100):02d}"] = float(val)
    return out


@dataclass(frozen=True)
class WeightStatsParams:
    sparsity_threshold: float = 1e-3
    per_layer: bool = True


def weight_stats(record: ModelRecord, state: dict[str, torch.Tensor], params: WeightStatsParams) -> dict[str, float]:
    out: dict[str, float] = {}
    trainable = [p for p in record.spec.params if p.role != "buffer" and state[p.name].is_floating_point()]
    matrices = [p for p in trainable if p.role == "weight" and len(p.shape) >= 2 and p.kind not in
                ("embedding", "pos_embedding", "cls_token")]
    per: list[dict[str, float]] = []
    seen_layers: set[int] = set()
    for p in matrices:
        st = matrix_stats(state[p.name])
        per.append(st)
        if params.per_layer and p.layer not in seen_layers:
            seen_layers.add(p.layer)
            out.update({f"weights_l{p.layer}_{k}": v for k, v in st.items()})
    if per:
        sn = torch.tensor([d["spectral_norm"] for d in per], dtype=torch.float64)
        sr = torch.tensor([d["stable_rank"] for d in per], dtype=torch.float64)
        fro = torch.tensor([d["frobenius_norm"] for d in per], dtype=torch.float64)
        out.update({
            "weights_spectral_norm_max": float(sn.max()), "weights_spectral_norm_mean": float(sn.mean()),
            "weights_spectral_norm_prod_log": float(sn.clamp_min(1e-300).log().sum()),
            "weights_stable_rank_mean": float(sr.mean()), "weights_stable_rank_min": float(sr.min()),
            "weights_frobenius_norm_total": float((fro * fro).sum().sqrt()),
        })
    if trainable:
        flat = torch.cat([state[p.name].detach().double().flatten() for p in trainable])
        out.update({f"weights_{k}": v for k, v in elementwise_stats(flat, params.sparsity_threshold).items()})
    return out


@register_property("weight_stats", version=1, params=WeightStatsParams())
def weight_statistics(batch: ModelBatch, splits: Splits, params: WeightStatsParams, device: torch.device,
                      generator: torch.Generator) -> list[dict[str, float]]:
    return [weight_stats(rec, state, params) for rec, state in zip(batch.records, batch.states)]
