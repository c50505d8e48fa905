"""Population training: G members of one architecture and shape train together as one network.

All members' weights live in one flat buffer ``flat`` of shape (G, P) (P = parameters per member, in
the registered module's state-dict order), so the forward pass is batched matmuls (MLP) or im2col +
batched matmuls / grouped convolutions (CNN), and the optimizer is one vectorized update for all
members: each member keeps its own optimizer kind (sgd/adam/rmsprop, torch's update rules), learning
rate and L2. Each member also keeps its own seed, initialization, training subset, label noise, data
order (its own permutation per epoch), dropout rate and batch size (shorter batches are masked).

``POPULATIONS`` maps an architecture name to its batched forward; architectures without an entry train
with the plain loop (zoo.train.train_plain).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from core.errors import ZooError
from core.registry import Registry
from core.spec import WeightSpec
from zoo.archs import build
from zoo.archs.basic import ACTIVATIONS
from zoo.datasets import Splits
from zoo.sampling import OPTIMIZERS, TrainConfig, stream
from zoo.train import Checkpoint, Progress, epoch_orders, init_state, last_epoch, member_data

# forward(pop, params, x, train) -> logits (G, B, K); params: name -> (G, *shape) views of flat
Forward = Callable[["Population", Mapping[str, torch.Tensor], torch.Tensor, bool], torch.Tensor]
POPULATIONS: Registry[Forward] = Registry("population architecture")

_ACT = {name: cls() for name, cls in ACTIVATIONS.items()}
ADAM_BETAS, ADAM_EPS, RMS_ALPHA, RMS_EPS = (0.9, 0.999), 1e-8, 0.99, 1e-8  # torch defaults


@dataclass(frozen=True)
class Member:
    train_config: TrainConfig
    seed: int


class Population:
    def __init__(self, arch: str, arch_config: Mapping, members: Sequence[Member], device: str = "cpu",
                 conv_impl: str = "grouped"):
        if not members:
            raise ZooError("a population needs at least one member")
        self.forward_fn = POPULATIONS.get(arch)
        self.arch, self.arch_config, self.members, self.device = arch, dict(arch_config), list(members), device
        self.conv_impl = conv_impl  # "grouped" (groups=G conv2d, channels last) or "unfold" (im2col + bmm)
        built = build(arch, arch_config)
        self.spec: WeightSpec = built.spec
        template = built.module.state_dict()
        self.layout = [(k, tuple(v.shape), v.numel()) for k, v in template.items()]
        g = len(members)
        states = [init_state(arch, arch_config, self.spec, m.train_config, m.seed) for m in members]
        self.flat = torch.stack([torch.cat([s[k].reshape(-1).float() for k, _, _ in self.layout]) for s in states])
        self.flat = self.flat.to(device).requires_grad_(True)  # (G, P)
        col = lambda f: torch.tensor([f(m.train_config) for m in members], dtype=torch.float32, device=device)
        self.lr, self.l2 = col(lambda t: t.lr)[:, None], col(lambda t: t.l2)[:, None]  # (G, 1)
        self.dropout = col(lambda t: t.dropout)  # (G,)
        self.opt_code = torch.tensor([OPTIMIZERS.index(m.train_config.optimizer) for m in members], device=device)
        self.steps = torch.zeros(g, device=device)  # optimizer steps taken per member (Adam bias correction)
        zeros = lambda: torch.zeros_like(self.flat, requires_grad=False)
        self.exp_avg, self.exp_avg_sq, self.square_avg = zeros(), zeros(), zeros()
        # each member draws its dropout masks from its own stream, so its weights do not depend on which
        # other members share its population (resumed builds regroup members)
        self.gens = [stream(m.seed, "dropout") for m in members]
        self.rates = [m.train_config.dropout for m in members]
        self.batch_counts: list[int] | None = None  # real examples per member in this step (None: all)

    @property
    def size(self) -> int:
        return len(self.members)

    def params(self) -> dict[str, torch.Tensor]:
        """Views of ``flat``: name -> (G, *shape)."""
        out, o = {}, 0
        for name, shape, n in self.layout:
            out[name] = self.flat[:, o:o + n].view(self.size, *shape)
            o += n
        return out

    def logits(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """x: (G, B, *input_shape) -> (G, B, n_classes)."""
        return self.forward_fn(self, self.params(), x, train)

    def drop(self, h: torch.Tensor, train: bool) -> torch.Tensor:
        """Per-member inverted dropout on h (G, B, ...)."""
        if not train or not bool((self.dropout > 0).any()):
            return h
        u = torch.ones(h.shape)  # (G, B, ...) uniform draws; members without dropout keep all units
        counts = self.batch_counts or [h.shape[1]] * self.size
        for m, (gm, rate, n) in enumerate(zip(self.gens, self.rates, counts)):
            if rate > 0 and n > 0:  # draw for the member's real examples only, as the plain loop does
                torch.rand((n, *h.shape[2:]), generator=gm, out=u[m, :n])
        p = self.dropout.view(-1, *([1] * (h.dim() - 1)))
        scale = (u.to(h.device) >= p) / (1 - p)  # 0 or 1/(1-p): one multiply forward and backward
        return h * scale

    @torch.no_grad()
    def update(self, grad: torch.Tensor, active: torch.Tensor | None) -> None:
        """One optimizer step for every (active) member, torch's SGD/Adam/RMSprop rules with weight decay."""
        p = self.flat
        act = None if active is None else active[:, None]
        self.steps += 1 if active is None else active.float()
        g = grad + self.l2 * p
        b1, b2 = ADAM_BETAS
        exp_avg = self.exp_avg.lerp(g, 1 - b1)
        exp_avg_sq = self.exp_avg_sq * b2 + (1 - b2) * g * g
        square_avg = self.square_avg * RMS_ALPHA + (1 - RMS_ALPHA) * g * g
        t = self.steps.clamp(min=1)[:, None]
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        u_adam = exp_avg / (exp_avg_sq.sqrt() / bc2.sqrt() + ADAM_EPS) / bc1
        u_rms = g / (square_avg.sqrt() + RMS_EPS)
        code = self.opt_code[:, None]
        u = torch.where(code == 0, g, torch.where(code == 1, u_adam, u_rms))
        new = p - self.lr * u
        if act is not None:
            new = torch.where(act, new, p)
            exp_avg, exp_avg_sq = torch.where(act, exp_avg, self.exp_avg), torch.where(act, exp_avg_sq, self.exp_avg_sq)
            square_avg = torch.where(act, square_avg, self.square_avg)
        p.copy_(new)
        self.exp_avg, self.exp_avg_sq, self.square_avg = exp_avg, exp_avg_sq, square_avg

    def extract(self, m: int) -> dict[str, torch.Tensor]:
        """Member m as a standard state dict of the registered architecture (CPU copies)."""
        return {k: v[m].detach().cpu().clone() for k, v in self.params().items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Logits of every member on shared inputs x (N, ...) -> (G, N, K)."""
        outs = []
        for xb in x.to(self.device).split(batch_size):
            outs.append(self.logits(xb.unsqueeze(0).expand(self.size, *xb.shape).contiguous(), train=False))
        return torch.cat(outs, dim=1)


def train_population(pop: Population, splits: Splits, device: str = "cpu",
                     progress: Progress | None = None) -> list[list[Checkpoint]]:
    """Train every member of ``pop`` for its epochs; returns each member's checkpoints in epoch order."""
    tcs = [m.train_config for m in pop.members]
    epochs = max(last_epoch(t) for t in tcs)  # members whose last checkpoint is earlier just idle
    g, bmax = pop.size, max(t.batch_size for t in tcs)
    datas = [member_data(splits.y_train, splits.info.n_classes, t, m.seed) for t, m in zip(tcs, pop.members)]
    orders = [epoch_orders(d, epochs, m.seed) for d, m in zip(datas, pop.members)]
    x_all = splits.x_train.to(device)
    y_all = torch.stack([d.labels for d in datas]).to(device)  # (G, N_train): each member's noisy labels
    out: list[list[Checkpoint]] = [[] for _ in range(g)]
    step_count = [0] * g
    if any(0 in t.checkpoints for t in tcs):
        for m, t in enumerate(tcs):
            if 0 in t.checkpoints:
                out[m].append(Checkpoint(0, 0, pop.extract(m)))
    for epoch in range(1, epochs + 1):
        idx, valid = _epoch_batches([next(o) for o in orders], [t.batch_size for t in tcs], bmax)
        for m, t in enumerate(tcs):
            if epoch > last_epoch(t):
                valid[:, m] = False  # past its last checkpoint: the member idles
        idx, valid = idx.to(device), valid.to(device)  # (T, G, B)
        uniform = bool(valid.all())
        for s in range(idx.shape[0]):
            bi, bv = idx[s], valid[s]  # (G, B)
            pop.batch_counts = None if uniform else bv.sum(1).tolist()
            logits = pop.logits(x_all[bi], train=True)  # (G, B, K)
            ce = F.cross_entropy(logits.flatten(0, 1), y_all.gather(1, bi).flatten(), reduction="none").view(g, -1)
            if uniform:
                loss = ce.mean(1).sum()  # members' mean losses; their gradients do not mix
                active = None
            else:
                w = bv.float()
                loss = ((ce * w).sum(1) / w.sum(1).clamp(min=1)).sum()
                active = bv.any(1)
            (grad,) = torch.autograd.grad(loss, pop.flat)
            pop.update(grad, active)
            for m in range(g):
                step_count[m] += 1 if active is None or bool(active[m]) else 0
        for m, t in enumerate(tcs):
            if epoch in t.checkpoints:
                out[m].append(Checkpoint(epoch, step_count[m], pop.extract(m)))
        if progress is not None:
            progress(epoch, epochs)
    pop.batch_counts = None
    return out


def _epoch_batches(orders: list[torch.Tensor], batch_sizes: list[int], bmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member orders -> (T, G, B) indices and validity; members with fewer or shorter batches are padded."""
    steps = max(math.ceil(len(o) / b) for o, b in zip(orders, batch_sizes))
    idx = torch.zeros(len(orders), steps, bmax, dtype=torch.int64)
    valid = torch.zeros(len(orders), steps, bmax, dtype=torch.bool)
    for m, (o, b) in enumerate(zip(orders, batch_sizes)):
        for s, chunk in enumerate(o.split(b)):
            idx[m, s, :len(chunk)] = chunk
            valid[m, s, :len(chunk)] = True
    return idx.transpose(0, 1).contiguous(), valid.transpose(0, 1).contiguous()


def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h (G, B, in), w (G, out, in), b (G, out) -> (G, B, out)."""
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


@POPULATIONS.register("mlp")
def _mlp(pop: Population, p: Mapping[str, torch.Tensor], x: torch.Tensor, train: bool) -> torch.Tensor:
    act = _ACT[pop.arch_config.get("activation", "relu")]
    h = x.flatten(2)  # (G, B, F)
    for i in range(int(pop.arch_config.get("depth", 2))):
        h = pop.drop(act(_linear(h, p[f"layers.{i}.weight"], p[f"layers.{i}.bias"])), train)
    return _linear(h, p["head.weight"], p["head.bias"])


@POPULATIONS.register("cnn")
def _cnn(pop: Population, p: Mapping[str, torch.Tensor], x: torch.Tensor, train: bool) -> torch.Tensor:
    act = _ACT[pop.arch_config.get("activation", "relu")]
    h = x.permute(0, 1, 3, 4, 2)  # channels last: (G, B, H, W, C); free for one input channel
    for i in range(int(pop.arch_config.get("n_layers", 3))):
        w, bias = p[f"convs.{i}.weight"], p[f"convs.{i}.bias"]  # (G, Co, Ci, 3, 3), (G, Co)
        h = pop.drop(act(_conv(h, w, bias, pop.conv_impl)), train)
    return _linear(h.mean(dim=(2, 3)), p["head.weight"], p["head.bias"])


def _conv(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, impl: str) -> torch.Tensor:
    """3x3, stride 2, padding 1 convolution of every member, channels last: (G, B, H, W, Ci) -> (G, B, H', W', Co)."""
    g, b, hh, ww, ci = h.shape
    co = w.shape[1]
    ho, wo = (hh + 1) // 2, (ww + 1) // 2
    if impl == "grouped":
        # (B, H, W, G*Ci) seen as an NCHW tensor in channels-last memory format: no copies either way
        xin = h.permute(1, 2, 3, 0, 4).reshape(b, hh, ww, g * ci).permute(0, 3, 1, 2)
        y = F.conv2d(xin, w.reshape(g * co, ci, 3, 3), bias.reshape(-1), stride=2, padding=1, groups=g)
        return y.permute(0, 2, 3, 1).reshape(b, ho, wo, g, co).permute(3, 0, 1, 2, 4)  # (G, B, H', W', Co)
    # im2col by strided views (F.unfold's im2col is slow on CPU for many small images)
    xp = F.pad(h.reshape(g * b, hh, ww, ci), (0, 0, 1, 1, 1, 1))  # zero padding 1 on H and W
    cols = xp.unfold(1, 3, 2).unfold(2, 3, 2)  # (G*B, H', W', Ci, 3, 3): taps ordered like the weight
    cols = cols.reshape(g, b * ho * wo, ci * 9)
    y = torch.baddbmm(bias.unsqueeze(1), cols, w.reshape(g, co, ci * 9).transpose(1, 2))  # (G, B*H'*W', Co)
    return y.view(g, b, ho, wo, co)


from zoo import population_1d  # noqa: E402,F401  (registers the 1-D architectures' forwards)
