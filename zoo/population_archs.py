"""Batched forwards of the fixed-shape architectures (``mlp``, ``cnn``) for zoo.population.

Every forward takes views of G' members' weights and their own batches and returns (G', B, K) logits.
The CNN's 3x3 stride-2 convolutions pick a kernel per layer shape (``conv_impl="auto"``), because the
fastest one differs by layer (measured with bench/zoo_build.py-sized populations, 1 thread):

- the first layer (data: no input gradient): im2col over rows only, (G, B*H', 3*W*Ci), times a dense
  (3*W*Ci, W'*Co) matrix per member for the columns (2.7x fewer MACs than the dense matrix on 8x8);
- small inputs (<= 8x8 positions): a dense (H*W*Ci, H'*W'*Co) matrix per member built from the
  kernel, then batched matmuls: the zeros it multiplies (2-7x the conv's MACs on 8x8 digits) cost
  less than im2col copies or grouped-convolution kernels on such tiny images (256 digits-cnn
  members, one step, same run: dense 295 ms, grouped 470 ms, im2col layer 1 + grouped 367 ms);
- larger inputs: a grouped convolution (groups=G, channels last).
``"unfold"`` (im2col by strided views + batched matmuls) is kept as a reference kernel for tests.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import torch
import torch.nn.functional as F

from zoo.archs.basic import ACTIVATIONS
from zoo.population import POPULATIONS, Population

_ACT = {name: cls() for name, cls in ACTIVATIONS.items()}
CONV_IMPLS = ("auto", "grouped", "unfold", "dense", "rows")


def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """h (G, B, in), w (G, out, in), b (G, out) -> (G, B, out). bmm, then the bias in place: baddbmm
    with a broadcast bias first copies it over the whole output (up to 3.7x slower at these shapes)."""
    y = torch.bmm(h, w.transpose(1, 2))
    return y if b is None else y.add_(b.unsqueeze(1))


def _bias_act_drop(pop: Population, y: torch.Tensor, bias: torch.Tensor, train: bool) -> torch.Tensor:
    """act(y + bias) with the members' dropout: y (G', B, ..., C) without its bias, bias (G', C); y must be
    a fresh kernel output that no backward saves (it may be overwritten). ReLU and tanh run as one
    hand-written autograd step (``_BiasActDrop``); other activations through autograd."""
    name = pop.arch_config.get("activation", "relu")
    if name not in _BiasActDrop.ACTS:
        return pop.drop(_ACT[name](y + bias.view(bias.shape[0], *[1] * (y.dim() - 2), bias.shape[1])), train)
    mult, scale = pop.drop_mask(y.shape[0], y[0].numel(), train)
    return _BiasActDrop.apply(y, bias, mult, scale, name)


class _BiasActDrop(torch.autograd.Function):
    """act(y + bias) times the dropout multiplier, computed in place on y (a fresh kernel output nothing
    else reads: a new 16 MB tensor per call costs page faults on top of the pass). Autograd's version of
    the same ops keeps more full-size tensors, and an in-place bias on a view of the matmul output makes
    it copy the whole activation three times in the backward. Same arithmetic as autograd, same bits.
    ReLU's backward needs only the output (a unit passes gradient iff its output is > 0, scaled by
    1/(1-p)); tanh's needs tanh(y + bias) and the multiplier."""

    ACTS = ("relu", "tanh")

    @staticmethod
    def forward(ctx, y: torch.Tensor, bias: torch.Tensor, mult: torch.Tensor | None,
                scale: torch.Tensor | None, act: str) -> torch.Tensor:
        k, c = bias.shape
        z = y.detach().add_(bias.view(k, *[1] * (y.dim() - 2), c))
        mult = None if mult is None else mult.view(z.shape)
        ctx.act = act
        if act == "tanh":
            t = z.tanh_()
            ctx.save_for_backward(t, mult)
            return t if mult is None else t * mult
        out = z.clamp_min_(0)
        if mult is not None:
            out.mul_(mult)
            scale = scale.view(k, *[1] * (y.dim() - 1))
        ctx.save_for_backward(out, scale)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.act == "tanh":
            t, mult = ctx.saved_tensors
            g = torch.ops.aten.tanh_backward(grad if mult is None else grad * mult, t)
        else:
            out, scale = ctx.saved_tensors
            g = torch.ops.aten.threshold_backward(grad, out, 0)
            if scale is not None:
                g.mul_(scale)
        return g, g.sum(dim=tuple(range(1, g.dim() - 1))), None, None, None


@POPULATIONS.register("mlp")
def _mlp(pop: Population, p: Mapping[str, torch.Tensor], x: torch.Tensor, train: bool) -> torch.Tensor:
    h = x.flatten(2)  # (G, B, F)
    for i in range(int(pop.arch_config.get("depth", 2))):
        h = _bias_act_drop(pop, _linear(h, p[f"layers.{i}.weight"], None), p[f"layers.{i}.bias"], train)
    return _linear(h, p["head.weight"], p["head.bias"])


@POPULATIONS.register("cnn")
def _cnn(pop: Population, p: Mapping[str, torch.Tensor], x: torch.Tensor, train: bool) -> torch.Tensor:
    h = x.permute(0, 1, 3, 4, 2)  # channels last: (G, B, H, W, C); free for one input channel
    for i in range(int(pop.arch_config.get("n_layers", 3))):
        w, bias = p[f"convs.{i}.weight"], p[f"convs.{i}.bias"]  # (G, Co, Ci, 3, 3), (G, Co)
        h = _bias_act_drop(pop, _conv(h, w, None, pop.conv_impl), bias, train)
    return _linear(h.mean(dim=(2, 3)), p["head.weight"], p["head.bias"])


def _conv(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, impl: str) -> torch.Tensor:
    """3x3, stride 2, padding 1 convolution of every member, channels last: (G, B, H, W, Ci) -> (G, B, H', W', Co).
    ``bias`` None: without the bias (the caller adds it)."""
    y = _conv_nobias(h, w, impl)
    return y if bias is None else y + bias.view(bias.shape[0], 1, 1, 1, -1)  # not in place: see _BiasActDrop


def _conv_nobias(h: torch.Tensor, w: torch.Tensor, impl: str) -> torch.Tensor:
    g, b, hh, ww, ci = h.shape
    co = w.shape[1]
    ho, wo = (hh + 1) // 2, (ww + 1) // 2
    if impl == "auto":
        impl = "rows" if not h.requires_grad and ww <= 32 else "dense" if hh * ww <= 64 else "grouped"
    if impl == "grouped":
        # (B, H, W, G*Ci) seen as an NCHW tensor in channels-last memory format: no copies either way
        xin = h.permute(1, 2, 3, 0, 4).reshape(b, hh, ww, g * ci).permute(0, 3, 1, 2)
        y = F.conv2d(xin, w.reshape(g * co, ci, 3, 3), None, stride=2, padding=1, groups=g)
        return y.permute(0, 2, 3, 1).reshape(b, ho, wo, g, co).permute(3, 0, 1, 2, 4)  # (G, B, H', W', Co)
    if impl == "dense":
        dense = _DenseConv.apply(w, _tap_table(hh, ww))  # (G, H*W*Ci, H'*W'*Co)
        return torch.bmm(h.reshape(g, b, hh * ww * ci), dense).view(g, b, ho, wo, co)
    if impl == "rows":
        # im2col over rows only: each output row reads 3 input rows (k, B*H', 3*W*Ci), then one dense
        # (3*W*Ci, W'*Co) matrix per member does the columns; a strided view, so kept for inputs
        # without gradient (the data), where its copy needs no backward
        rows = F.pad(h, (0, 0, 0, 0, 1, 1)).unfold(2, 3, 2)  # (G, B, H', W, Ci, 3)
        rows = rows.permute(0, 1, 2, 5, 3, 4).reshape(g, b * ho, 3 * ww * ci)
        dense = _DenseConv.apply(w, _row_table(ww))  # (G, 3*W*Ci, W'*Co)
        return torch.bmm(rows, dense).view(g, b, ho, wo, co)
    if impl != "unfold":
        raise ValueError(f"unknown conv_impl {impl!r} (known: {', '.join(CONV_IMPLS)})")
    # im2col by strided views (F.unfold's im2col is slow on CPU for many small images)
    xp = F.pad(h.reshape(g * b, hh, ww, ci), (0, 0, 1, 1, 1, 1))  # zero padding 1 on H and W
    cols = xp.unfold(1, 3, 2).unfold(2, 3, 2)  # (G*B, H', W', Ci, 3, 3): taps ordered like the weight
    cols = cols.reshape(g, b * ho * wo, ci * 9)
    return torch.bmm(cols, w.reshape(g, co, ci * 9).transpose(1, 2)).view(g, b, ho, wo, co)  # (G, B, H', W', Co)


@lru_cache(maxsize=None)
def _tap_table(hh: int, ww: int) -> torch.Tensor:
    """(H*W, H'*W') int64: the kernel tap (kh*3 + kw) joining input and output positions, 9 for none."""
    ho, wo = (hh + 1) // 2, (ww + 1) // 2
    t = torch.full((hh, ww, ho, wo), 9, dtype=torch.int64)
    for i in range(ho):
        for j in range(wo):
            for kh in range(3):
                for kw in range(3):
                    r, c = 2 * i - 1 + kh, 2 * j - 1 + kw
                    if 0 <= r < hh and 0 <= c < ww:
                        t[r, c, i, j] = kh * 3 + kw
    return t.view(hh * ww, ho * wo)


@lru_cache(maxsize=None)
def _row_table(ww: int) -> torch.Tensor:
    """(3*W, W') int64: tap joining (kernel row kh, input column c) and output column j, 9 for none."""
    wo = (ww + 1) // 2
    t = torch.full((3, ww, wo), 9, dtype=torch.int64)
    for kh in range(3):
        for j in range(wo):
            for kw in range(3):
                if 0 <= 2 * j - 1 + kw < ww:
                    t[kh, 2 * j - 1 + kw, j] = kh * 3 + kw
    return t.view(3 * ww, wo)


@lru_cache(maxsize=None)
def _dense_rows(table: torch.Tensor, ci: int, device: str) -> torch.Tensor:
    """(pin*Ci*pout,) int64: for each row (input position, input channel, output position) of the dense
    matrix seen as (pin*Ci*pout, Co), its row of the kernel blocks (10*Ci, Co): tap*Ci + channel (tap 9:
    the zero block). Tables are cached, so hashing them by identity is stable."""
    rows = table[:, None, :] * ci + torch.arange(ci)[None, :, None]  # (pin, Ci, pout)
    return rows.reshape(-1).to(device)


@lru_cache(maxsize=None)
def _tap_pairs(table: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (input, output) position pairs a kernel tap joins: input positions (n,), output positions
    (n,), and the (9, n) float matrix that sums each tap's pairs."""
    pin, pout = (table < 9).nonzero().unbind(1)
    sums = F.one_hot(table[pin, pout], 9).t().float().contiguous()
    return pin.to(device), pout.to(device), sums.to(device)


class _DenseConv(torch.autograd.Function):
    """Kernel (G, Co, Ci, 3, 3) -> dense matrix (G, H*W*Ci, H'*W'*Co), rows (position, channel) like
    channels-last activations. Forward: one gather of Co-float rows from the (10*Ci, Co) kernel blocks
    (a gather then a permute copy of the whole matrix was ~3x slower); backward: gather the gradient's
    (Ci, Co) blocks of the position pairs some tap joins (25 of 64 on a 4x4 input), then one matmul
    sums each tap's pairs (no permute copy of the whole gradient)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        g, co, ci = w.shape[:3]
        pin, pout = table.shape
        blocks = torch.cat([w.reshape(g, co, ci, 9).permute(0, 3, 2, 1), w.new_zeros(g, 1, ci, co)], 1)  # (G, 10, Ci, Co)
        dense = blocks.view(g, 10 * ci, co).index_select(1, _dense_rows(table, ci, str(w.device)))
        ctx.table, ctx.dims = table, (g, co, ci, pin, pout)
        return dense.view(g, pin * ci, pout * co)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g, co, ci, pin, pout = ctx.dims
        pins, pouts, sums = _tap_pairs(ctx.table, str(grad.device))
        blocks = grad.reshape(g, pin, ci, pout, co)[:, pins, :, pouts, :]  # (n pairs, G, Ci, Co)
        taps = (sums.to(grad.dtype) @ blocks.reshape(len(pins), -1)).view(3, 3, g, ci, co)
        return taps.permute(2, 4, 3, 0, 1), None
