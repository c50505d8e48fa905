"""Routing each row to its model through the input itself, so that AutoAttack attacks M models in one run.

``Population`` (``labeling.population``) assigns rows to models by position (block m of N rows goes to
model m). That breaks under attacks that pass on only a subset of their rows: torchattacks'
``MultiAttack`` (AutoAttack's driver) hands each stage only the rows still robust, APGD/APGD-T/FAB
restart on the rows still correctly classified, and Square queries only the rows not yet fooled.

``Routed`` instead reads the model index from the row: every (C, H, W) example gets one extra channel,
the **tag**, holding the index of its model in base ``B`` digits, each digit written as the level
``digit / (B - 1)`` in [0, 1] and repeated over the channel's pixels (pixel p holds digit p % D). The
levels lie at least ``4 * tolerance`` apart, where the tolerance is the attack's Linf eps (plus float
slack), so a tag moved by at most eps still rounds to its level. Why Linf only, and why eps stays the
same:

- The models never see the tag: the forward pass decodes it under ``no_grad`` (round to the level) and
  feeds only the real channels to the models, so the gradient w.r.t. the tag is exactly zero. APGD's
  signed steps and FAB's projections (which zero coordinates of zero gradient) therefore never move it;
  only random starts (APGD's uniform start, Square's stripes and windows) do, by at most eps, and the
  clamp to [0, 1] keeps it in range.
- Linf budgets are per coordinate, so the real channels keep exactly their budget. Square sizes its
  windows from H * W (not C), so an extra channel does not change its schedule. An L2 budget, by
  contrast, is shared by all coordinates: random starts and Square's L2 updates would spend part of it
  on the tag, so L2 AutoAttack must run model by model (``labeling.attacks.autoattack`` does).

A tag that decodes to no model, whose pixels disagree, or that moved by more than the tolerance raises
``RoutingError`` (the caller then falls back to attacking model by model), never a silent misroute.

Rows of the same model are grouped and, when the population's parameters are stacked, padded to equal
counts and run with ``vmap(functional_call)`` over the parameters of the models present; otherwise the
models present are run one by one. Logits come back in the input's row order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import ZooError
from labeling.population import Population

FLOAT_SLACK = 1e-5  # float32 rounding in the attacks' projections and clamps


class RoutingError(ZooError):
    """A tag that cannot be routed (eps too large for distinct levels, a corrupted or moved tag)."""


@dataclass(frozen=True)
class TagCode:
    n_models: int
    base: int  # levels per tag pixel
    n_digits: int  # base-`base` digits of the model index
    n_pixels: int  # pixels in the tag channel (H * W)
    tolerance: float  # largest legitimate move of a tag pixel: the attack's Linf eps plus float slack

    @property
    def spacing(self) -> float:
        return 1.0 / (self.base - 1)


def tag_code(n_models: int, eps: float, n_pixels: int) -> TagCode:
    """The coarsest-needed code for ``n_models`` whose levels stay distinct under Linf moves of ``eps``."""
    if n_models < 1:
        raise RoutingError(f"need at least one model to route, got {n_models}")
    tolerance = float(eps) + FLOAT_SLACK
    max_base = math.floor(1.0 / (4 * tolerance)) + 1  # levels k / (B - 1) at least 4 * tolerance apart
    if max_base < 2:
        raise RoutingError(f"eps {eps:g} is too large to tag rows: two levels in [0, 1] need eps <= "
                           f"{0.25 - FLOAT_SLACK:g}")
    base = min(max_base, max(n_models, 2))
    n_digits = 1
    while base ** n_digits < n_models:
        n_digits += 1
    if n_digits > n_pixels:
        raise RoutingError(f"{n_models} models need {n_digits} tag digits of base {base}, but a tag channel "
                           f"has only {n_pixels} pixels")
    return TagCode(n_models, base, n_digits, n_pixels, tolerance)


def _digit_of_pixel(code: TagCode, device: torch.device) -> torch.Tensor:
    return torch.arange(code.n_pixels, device=device) % code.n_digits


def encode_tags(index: torch.Tensor, code: TagCode) -> torch.Tensor:
    """(R,) model indices -> (R, n_pixels) tag values in [0, 1]."""
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= code.n_models):
        raise RoutingError(f"model index out of range [0, {code.n_models}): {int(index.min())}..{int(index.max())}")
    powers = code.base ** torch.arange(code.n_digits, device=index.device)
    digits = (index.long().unsqueeze(1) // powers) % code.base  # (R, D)
    return digits[:, _digit_of_pixel(code, index.device)].float() * code.spacing


@torch.no_grad()
def decode_tags(tags: torch.Tensor, code: TagCode, table: torch.Tensor | None = None) -> torch.Tensor:
    """(R, n_pixels) tag values -> (R,) model indices; RoutingError naming the first bad row otherwise.

    The digits are read from pixels 0..D-1 (pixel d holds digit d); the row is valid only if EVERY pixel
    lies within the tolerance of the tag that index encodes (``table``: ``encode_tags`` of all indices),
    which catches moved pixels and pixels that disagree with their digit in one comparison.
    """
    digits = torch.round(tags[:, :code.n_digits] * (code.base - 1)).long()
    powers = code.base ** torch.arange(code.n_digits, device=tags.device)
    index = (digits * powers).sum(dim=1)
    in_range = (index >= 0) & (index < code.n_models)
    if table is None:
        table = encode_tags(torch.arange(code.n_models, device=tags.device), code)
    moved = (tags - table.to(tags.device, tags.dtype)[index.clamp(0, code.n_models - 1)]).abs().amax(dim=1)  # (R,)
    bad = ~in_range | (moved > code.tolerance)
    if bool(bad.any()):
        r = int(bad.nonzero()[0, 0])
        raise RoutingError(f"row {r} has a corrupted model tag ({int(bad.sum())} of {len(bad)} rows): index "
                           f"{int(index[r])} of {code.n_models} models, "
                           + (f"a pixel {float(moved[r]):.4g} away from its level (tolerance {code.tolerance:.4g})"
                              if in_range[r] else "out of range"))
    return index


class Routed(nn.Module):
    """``pop``'s models as one module whose rows carry their model index in an extra tag channel.

    Input (R, C + 1, H, W) in [0, 1] coordinates, where (C, H, W) is ``attack_shape`` of the examples and
    channel C is the tag; output (R, classes) logits, row r from model ``decode(tag of r)``.
    """

    def __init__(self, pop: Population, code: TagCode):
        super().__init__()
        if code.n_models != pop.m:
            raise RoutingError(f"tag code for {code.n_models} models, population of {pop.m}")
        self.pop = pop
        self.code = code
        self.table = encode_tags(torch.arange(code.n_models), code).to(pop.device)  # (M, n_pixels) every tag

    @property
    def device(self) -> torch.device:
        return self.pop.device

    def tag(self, u: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(R, C, H, W) examples + (R,) model indices -> (R, C + 1, H, W) tagged rows."""
        if u[0, 0].numel() != self.code.n_pixels:
            raise RoutingError(f"tag code for {self.code.n_pixels} pixels, examples of shape {tuple(u.shape[1:])}")
        tags = encode_tags(index.to(u.device), self.code).to(u.dtype).reshape((u.shape[0], 1) + tuple(u.shape[2:]))
        return torch.cat([u, tags], dim=1)

    def route(self, u: torch.Tensor) -> torch.Tensor:
        """(R,) model index of each tagged row."""
        return decode_tags(u[:, -1].detach().reshape(u.shape[0], self.code.n_pixels), self.code, self.table)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        index = self.route(u)
        x = self.pop.from_unit(u[:, :-1]).reshape((u.shape[0],) + self.pop.example_shape)
        if len(index) == 0:
            return self.pop.members[0](x)  # (0, classes)
        present, group, counts = torch.unique(index, return_inverse=True, return_counts=True)  # sorted models
        # torchattacks keeps subsets in row order, so rows usually arrive grouped by model already
        order = None if bool((index[1:] >= index[:-1]).all()) else torch.argsort(group, stable=True)
        if order is not None:
            x, group = x[order], group[order]
        if self.pop.stacked:
            logits = self._stacked(x, present, group, counts)
        else:
            logits = torch.cat([self.pop.members[int(j)](x[g:g + int(c)])
                                for j, g, c in zip(present, torch.cumsum(counts, 0) - counts, counts)])
        if order is None:
            return logits
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return logits[inverse]

    def _stacked(self, xs: torch.Tensor, present: torch.Tensor, g: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """xs: rows sorted by model; g: (R,) group of each row -> (R, classes) logits in that order."""
        n_groups, width = len(present), int(counts.max())
        if n_groups * width == len(g):  # equal counts: the rows are already (groups, width) blocks
            slot, padded = None, xs
        else:
            starts = torch.cumsum(counts, 0) - counts
            slot = g * width + torch.arange(len(g), device=g.device) - starts[g]  # row -> (group, position)
            padded = xs.new_zeros((n_groups * width,) + tuple(xs.shape[1:])).index_copy(0, slot, xs)
        if n_groups == self.pop.m:
            params, buffers = self.pop._params, self.pop._buffers
        else:
            params = {k: v[present] for k, v in self.pop._params.items()}
            buffers = {k: v[present] for k, v in self.pop._buffers.items()}
        out = self.pop.stacked_forward(params, buffers, padded.reshape((n_groups, width) + tuple(xs.shape[1:])))
        out = out.reshape(n_groups * width, -1)
        return out if slot is None else out[slot]
