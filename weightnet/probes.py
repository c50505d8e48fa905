"""Probe tokens: learned probe inputs run through each rebuilt model; each probe's output is one token.

The probes are a parameter of WeightNet (P inputs shaped like one example of the zoo's input space,
initialized from uniform noise, optimized end to end; never examples from a dataset). A model's
probe outputs depend only on the function it computes, so they are exactly invariant to hidden-unit
permutations and to function-preserving widening (up to float rounding), and every architecture on one
input space gives tokens of one shape. Models of one architecture configuration are stacked and run in
one ``torch.func.vmap(functional_call)``; models of an architecture with a registered stacked forward
(``zoo.stacked``: the 1-D wild CNNs, whose members nearly all differ in config) run in one padded call per
stacking key instead; a model whose architecture cannot be rebuilt (ingested from
an unknown source, another input space) gets no probe tokens and is read from its weight tokens only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from core.flops import count_flops
from weightnet.data import ZooSample
from zoo.stacked import STACKED

LOGP_FLOOR = -30.0  # log-probabilities are floored here (and divided by 10) before embedding


@dataclass(frozen=True)
class ProbeHandle:
    """What running probes needs from one model: its module key, its tensors and its input shape."""

    key: str  # the model's module (arch, arch_config); models with one key stack into one vmap call
    state: Mapping[str, torch.Tensor]
    input_shape: tuple[int, ...]
    # models with one (non-empty) stack key run in one ``zoo.stacked`` call, whatever their configs
    stack: str = ""
    arch: str = ""
    arch_config: Mapping | None = None
    # the stack's bank (``zoo.stacked``: these models' tensors laid out once) and this model's row in it
    bank: Any = None
    row: int = -1


class ProbeRunner:
    """Rebuilds one module per (arch, arch_config) and runs probes through many models' states."""

    def __init__(self, max_flops: float = math.inf) -> None:
        self.max_flops = max_flops  # a model whose forward on one example costs more gets no probe tokens
        # key -> (module in eval mode, {tensor name: shape}) or None when the architecture cannot be rebuilt
        self._modules: dict[str, tuple[torch.nn.Module, dict[str, tuple[int, ...]]] | None] = {}
        self._flops: dict[str, float] = {}  # key -> FLOPs of one forward pass on one example

    def _module(self, arch: str, arch_config: Mapping) -> tuple[str, tuple[torch.nn.Module, dict] | None]:
        key = json.dumps([arch, arch_config], sort_keys=True, default=str)
        if key not in self._modules:
            from zoo.archs import build

            try:
                module = build(arch, dict(arch_config)).module.eval()
                names = {n: tuple(t.shape) for n, t in module.state_dict().items()}
                for p in module.parameters():
                    p.requires_grad_(False)
                self._modules[key] = (module, names)
                self._flops[key] = _example_flops(module, arch_config)
            except Exception:  # any failure to rebuild means: no probe tokens for this model (weight tokens only)
                self._modules[key] = None
        return key, self._modules[key]

    def handle(self, sample: ZooSample) -> ProbeHandle | None:
        shape = sample.arch_config.get("input_shape") if isinstance(sample.arch_config, Mapping) else None
        if not shape:
            return None
        key, built = self._module(sample.arch, sample.arch_config)
        if built is None or self._flops.get(key, math.inf) > self.max_flops:
            return None
        _, names = built
        if any(n not in sample.state or tuple(sample.state[n].shape) != shp for n, shp in names.items()):
            return None
        state, shape = {n: sample.state[n] for n in names}, tuple(int(x) for x in shape)
        if sample.arch in STACKED:
            stack = json.dumps([sample.arch, STACKED.get(sample.arch).key(sample.arch_config)])
            return ProbeHandle(key, state, shape, stack, sample.arch, sample.arch_config)
        return ProbeHandle(key, state, shape)

    def handles(self, samples: Sequence[ZooSample]) -> list[ProbeHandle | None]:
        """One handle per sample; models of one stack key share one bank, laid out here once."""
        out = [self.handle(s) for s in samples]
        stacks: dict[str, list[int]] = {}
        for i, h in enumerate(out):
            if h is not None and h.stack:
                stacks.setdefault(h.stack, []).append(i)
        for idx in stacks.values():
            bank = _bank([out[i] for i in idx])
            for row, i in enumerate(idx):
                out[i] = replace(out[i], bank=bank, row=row)
        return out

    @torch.no_grad()
    def out_dim(self, h: ProbeHandle) -> int:
        """Width of one model's output vector (its last axis) on one zero input."""
        module, names = self._modules[h.key]
        y = functional_call(module, {n: h.state[n] for n in names}, (torch.zeros((1, *h.input_shape)),))
        return int(y.shape[-1])

    def outputs(self, probes: torch.Tensor, handles: Sequence[ProbeHandle | None], n_out: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """probes (P, *input_shape) -> ((B, P, n_out) logits, (B,) bool: the model has probe outputs).

        Models with another input shape or output width than ``n_out`` are marked absent."""
        B, P = len(handles), probes.shape[0]
        out = probes.new_zeros(B, P, n_out)
        has = torch.zeros(B, dtype=torch.bool)
        groups: dict[tuple[str, int], list[int]] = {}
        for i, h in enumerate(handles):
            if h is not None and h.input_shape == tuple(probes.shape[1:]):  # stacked: one call per bank
                groups.setdefault((h.stack, id(h.bank)) if h.stack else (h.key, 0), []).append(i)
        rows, values = [], []
        for (key, _), idx in groups.items():
            first = handles[idx[0]]
            if first.stack:
                bank, at = first.bank, [handles[i].row for i in idx]
                if bank is None:  # handles made one by one: a bank of just these
                    bank, at = _bank([handles[i] for i in idx]), list(range(len(idx)))
                y = STACKED.get(first.arch).logits(bank, at, probes)  # (G, P, K)
            else:
                module, names = self._modules[key]
                stacked = {n: torch.stack([handles[i].state[n] for i in idx]).to(probes.device) for n in names}
                y = _stacked_forward(module, stacked, probes)  # (G, P, K)
            if y.dim() != 3 or y.shape[2] != n_out:
                continue
            rows += idx
            values.append(y)
        if rows:
            index = torch.tensor(rows)
            out = out.index_put((index,), torch.cat(values).to(out.dtype))
            has[index] = True
        return out, has


def _bank(hs: Sequence[ProbeHandle]) -> Any:
    """The ``zoo.stacked`` bank of stacked handles of one stack key, in their order."""
    return STACKED.get(hs[0].arch).bank([h.arch_config for h in hs], [h.state for h in hs])


def _example_flops(module: torch.nn.Module, arch_config: Mapping) -> float:
    """FLOPs of one forward pass on one zero example (torch's counter: 2 per multiply-add); inf on failure."""
    try:
        return float(count_flops(module, torch.zeros((1, *[int(d) for d in arch_config["input_shape"]]))))
    except Exception:
        return math.inf


def _stacked_forward(module: torch.nn.Module, stacked: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """(G, ...) stacked tensors, shared input x (P, ...) -> (G, P, K): one vmap over the models; a
    module vmap cannot trace (data-dependent control flow) runs one functional_call per model."""
    try:
        return vmap(lambda p: functional_call(module, p, (x,)))(stacked)
    except Exception:
        n = next(iter(stacked.values())).shape[0]
        return torch.stack([functional_call(module, {k: v[i] for k, v in stacked.items()}, (x,)) for i in range(n)])


def probe_features(logits: torch.Tensor) -> torch.Tensor:
    """(..., K) probe logits -> (..., 2K): softmax probabilities and floored log-probabilities / 10.
    Both are unchanged by adding a constant to every logit (which a function-preserving change may do)."""
    logp = F.log_softmax(logits.float(), -1)
    return torch.cat([logp.exp(), logp.clamp_min(LOGP_FLOOR) / 10], -1)
