"""Models of one architecture evaluated together.

``Population`` wraps M models as ONE module whose input is M stacked copies of a batch: rows
``[m*N, (m+1)*N)`` go through model m. An attack's forward-backward steps then cost one call instead of
M (plain forward passes over many examples, ``population_logits``, run each model on its own), and an attack
library (torchattacks) attacks all M models in one run: every row is an independent example, so the
per-row perturbation budgets and success checks are exactly those of M separate runs. This needs an
attack that keeps all rows in place (PGD); attacks that pass on subsets of rows (AutoAttack) go through
``labeling.routing.Routed``, which wraps a Population and reads each row's model from a tag channel.

When the M models share one architecture and config and are small (at most ``STACK_MAX_PARAMS``
parameters each), their parameters are stacked (``torch.func.stack_module_state``) and run with
``vmap`` over ``functional_call``; otherwise (or if vmap fails for an architecture) the wrapper loops
over the models. Why the size limit (PGD fwd+bwd steps, one thread, same run): 21 cnn1d models (2,858
parameters) ran 1.8x faster stacked, 21 mlps (7,370) 2-2.4x; but 2 or 8 wildcnn1d models (19,400) ran
1.0-1.8x faster looped, 2 or 8 wildcnn digits models (72,000) 1.2-1.6x (vmap turns their convolutions
into grouped ones, slower than M plain calls once each call has enough work).

Inputs are also mapped to [0, 1] here: torchattacks clamps to [0, 1], so a dataset whose values span
``value_range`` = (lo, hi) is attacked in ``u = (x - lo) / (hi - lo)`` coordinates and the wrapper feeds
``lo + u * (hi - lo)`` to the models (the normalization lives inside the attacked model).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from storage.writes import ModelRecord


def load_module(record: ModelRecord, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> nn.Module:
    """The stored model in eval mode with its weights (``zoo.archs.load_module`` when it exists)."""
    import zoo.archs as archs

    if hasattr(archs, "load_module"):
        module = archs.load_module(record, state)
    else:
        module = archs.build(record.arch, record.arch_config).module
        module.load_state_dict(state)
    return module.to(device).eval()


STACK_MAX_PARAMS = 10_000  # larger members run one by one (see the module docstring)


class Population(nn.Module):
    def __init__(self, modules: Sequence[nn.Module], example_shape: tuple[int, ...],
                 value_range: tuple[float, float] = (0.0, 1.0), stack: bool = True):
        super().__init__()
        self.m = len(modules)
        self.example_shape = tuple(example_shape)  # one example as the models expect it, e.g. (1, 8, 8)
        self.lo, self.span = float(value_range[0]), float(value_range[1] - value_range[0])
        self.members = nn.ModuleList(modules)
        for p in self.members.parameters():
            p.requires_grad_(False)  # attacks need input gradients only
        self.stacked = False
        if stack and self.m > 1 and sum(p.numel() for p in modules[0].parameters()) <= STACK_MAX_PARAMS:
            self._try_stack()
        self.eval()  # torchattacks re-applies the wrapper's mode after every attack: train() would reach the members

    def _try_stack(self) -> None:
        from torch.func import stack_module_state

        try:
            params, buffers = stack_module_state(list(self.members))
            self._params = {k: v.detach() for k, v in params.items()}
            self._buffers = buffers
            self._base = copy.deepcopy(self.members[0]).to("meta")
            self.stacked = True
            g = torch.Generator().manual_seed(0)
            probe = torch.rand((self.m * 2,) + self.example_shape, generator=g).to(self.device)
            ref = self.members[0](probe[:2])
            got = self(self.to_unit(probe))[:2]
            self.stacked = bool(torch.allclose(ref, got, atol=1e-4, rtol=1e-4))
        except Exception:  # an architecture vmap cannot handle: loop instead
            self.stacked = False

    @property
    def device(self) -> torch.device:
        return next(self.members.parameters()).device

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.lo) / self.span

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        return self.lo + u * self.span

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: (M*N, *shape) in [0, 1] coordinates -> logits (M*N, classes)."""
        n = u.shape[0] // self.m
        x = self.from_unit(u).reshape((self.m, n) + self.example_shape)
        if self.stacked:
            return self.stacked_forward(self._params, self._buffers, x).reshape(self.m * n, -1)
        return torch.cat([mod(x[i]) for i, mod in enumerate(self.members)])

    def stacked_forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                        x: torch.Tensor) -> torch.Tensor:
        """x: (G, N, *example_shape), params/buffers stacked over the same G models -> logits (G, N, classes)."""
        from torch.func import functional_call, vmap

        def one(p, b, xb):
            return functional_call(self._base, (p, b), (xb,))

        return vmap(one)(params, buffers, x)

    def parameters(self, recurse: bool = True):  # torchattacks reads the device from the first parameter
        return self.members.parameters(recurse)


# examples per forward call of one model: a chunk's activations should stay in cache (one thread, 64
# relu models on 20,000 mnist1d examples: 1,024 and 4,096 within the noise of each other)
CHUNK_ROWS = 4096


def tile(x: torch.Tensor, m: int) -> torch.Tensor:
    """(N, ...) -> (M*N, ...): the same examples for each of M models."""
    return x.unsqueeze(0).expand((m,) + tuple(x.shape)).reshape((m * x.shape[0],) + tuple(x.shape[1:]))


@torch.no_grad()
def population_logits(pop: Population, x: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Logits of every model on every example: (M, N, classes). Data in the models' own coordinates.

    Each model runs on its own, ``chunk_rows`` examples per call, not stacked: a forward pass alone on
    thousands of examples gives each call enough work, and the stacked (vmap) forward, which pays off for
    an attack's many small forward-backward steps, measured slower here (one thread, process CPU time, 64
    models on 20,000 mnist1d examples, two rounds: cnn1d 0.07 vs 0.10-0.17 s per model, mlp 0.009-0.010
    vs 0.020-0.021). The logits are each model's own forward (no trip through [0, 1] coordinates)."""
    return torch.stack([model_logits(mod, x, chunk_rows) for mod in pop.members])


@torch.no_grad()
def model_logits(module: nn.Module, x: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """One model's logits on every example, ``chunk_rows`` examples per call: (N, classes) float on the CPU."""
    device = next(module.parameters()).device
    return torch.cat([module(x[i:i + chunk_rows].to(device)).float().cpu() for i in range(0, x.shape[0], chunk_rows)])
