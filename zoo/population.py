"""Population training: G members of one architecture config train together as one network.

All members' weights live in one flat buffer ``flat`` of shape (G, P) (P = parameters per member, in
the registered module's state-dict order), so the forward pass is batched matmuls (MLP) or batched
convolution kernels (CNN, zoo.population_archs), and the optimizer is a dozen vectorized in-place ops over the (G, P) buffer for
all members: each keeps its own optimizer kind (sgd/adam/rmsprop, torch's update rules), learning
rate and L2. Each member also keeps its own seed, initialization, training subset, label noise, data
order (its own permutation per epoch), dropout rate, batch size and number of steps per epoch.

Mixed members in one population: inside ``train_population`` the members are held sorted by their
steps per epoch (most first), so the members still stepping at step s of an epoch are a prefix of the
buffer and a step computes on ``flat[:k]`` only; shorter batches are padded and masked out of the
loss (their gradients are exact zeros). Members past their last checkpoint stay frozen. A member's
result therefore does not depend on who else is in its population.

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
from zoo.datasets import Splits
from zoo.sampling import OPTIMIZERS, TrainConfig, stream
from zoo.train import Checkpoint, Progress, epoch_orders, init_state, last_epoch, member_data

# forward(pop, params, x, train) -> logits (G', B, K); params: name -> (G', *shape) views of flat, where
# G' <= G is the number of members stepping now (a prefix); x: (G', B, *input_shape). Call pop.drop(h,
# train) after every hidden activation; it knows which members and rows are real.
Forward = Callable[["Population", Mapping[str, torch.Tensor], torch.Tensor, bool], torch.Tensor]
POPULATIONS: Registry[Forward] = Registry("population architecture")

ADAM_BETAS, ADAM_EPS, RMS_ALPHA, RMS_EPS = (0.9, 0.999), 1e-8, 0.99, 1e-8  # torch defaults
DROP_LEVELS = 65536  # dropout masks compare 16 random bits: a rate p drops round(p * 65536) of 65536 levels
# dropout bits: a counter-based hash (Wellons' "lowbias32" 32-bit mixer) in int32 arithmetic that wraps;
# the constants are the mixer's, written as signed int32
_GOLDEN32, _MIX1, _MIX2 = 0x9E3779B9 - 2 ** 32, 0x7FEB352D, 0x846CA68B - 2 ** 32


@dataclass(frozen=True)
class Member:
    train_config: TrainConfig
    seed: int


class Population:
    def __init__(self, arch: str, arch_config: Mapping, members: Sequence[Member], device: str = "cpu",
                 conv_impl: str = "auto"):
        if not members:
            raise ZooError("a population needs at least one member")
        self.forward_fn = POPULATIONS.get(arch)
        self.arch, self.arch_config, self.members, self.device = arch, dict(arch_config), list(members), device
        self.conv_impl = conv_impl  # conv kernels: zoo.population_archs.CONV_IMPLS ("auto" picks per layer)
        built = build(arch, arch_config)
        self.spec: WeightSpec = built.spec
        self.layout = [(k, tuple(v.shape), v.numel()) for k, v in built.module.state_dict().items()]
        states = [init_state(arch, arch_config, self.spec, m.train_config, m.seed) for m in members]
        self.flat = torch.stack([torch.cat([s[k].reshape(-1).float() for k, _, _ in self.layout]) for s in states])
        self.flat = self.flat.to(device)  # (G, P)
        self.exp_avg = torch.zeros_like(self.flat)  # Adam's first moment
        self.sq_avg = torch.zeros_like(self.flat)  # Adam's exp_avg_sq or RMSprop's square_avg (one buffer)
        self.steps = torch.zeros(len(members), 1, device=device)  # optimizer steps per member (bias correction)
        # each member's dropout bits hash its own key, its own step count and the call index within the
        # step, so its masks do not depend on which other members share its population
        self.drop_keys = torch.tensor([[int(torch.randint(-2 ** 31, 2 ** 31 - 1, (), dtype=torch.int32,
                                                          generator=stream(m.seed, "dropout")))] for m in members],
                                      dtype=torch.int32, device=device)  # (G, 1)
        self.drop_calls = 0  # pop.drop calls since the step began (the step loop resets it)
        self.row0 = 0  # the first member of the batch being computed (the step loop splits the members)
        self._coefficients()
        self.batch_counts: list[int] | None = None  # real examples per stepping member (None: all rows)

    def _coefficients(self) -> None:
        """Per-member (G, 1) columns that turn one update formula into SGD, Adam or RMSprop."""
        col = lambda f: torch.tensor([[float(f(m.train_config))] for m in self.members], device=self.device)
        code = [OPTIMIZERS.index(m.train_config.optimizer) for m in self.members]
        is_ = lambda o: torch.tensor([[float(c == OPTIMIZERS.index(o))] for c in code], device=self.device)
        adam, rms, sgd = is_("adam"), is_("rmsprop"), is_("sgd")
        self.lr, self.l2 = col(lambda t: t.lr), col(lambda t: t.l2)
        self.dropout = col(lambda t: t.dropout)[:, 0]  # (G,)
        self.rates = [m.train_config.dropout for m in self.members]
        levels = [round(r * DROP_LEVELS) for r in self.rates]  # dropped levels of 65536
        # a unit is kept iff its int16 level >= lv - 32768; held as that threshold - 1, in float
        self.drop_below = torch.tensor([[lv - 32769.0] for lv in levels], device=self.device)
        self.drop_scale = torch.tensor([[DROP_LEVELS / (DROP_LEVELS - lv)] for lv in levels], device=self.device)
        self.adam, self.not_adam, self.sgd = adam, 1 - adam, sgd
        self.decay = adam * ADAM_BETAS[1] + rms * RMS_ALPHA + sgd  # second-moment decay; 1 (unused) for SGD
        self.eps = (adam + rms) * ADAM_EPS + sgd  # SGD divides by sqrt(0) + 1 (ADAM_EPS == RMS_EPS)

    def permute(self, order: Sequence[int]) -> None:
        """Reorder the members (and everything per member) in place: member i becomes ``order[i]``."""
        idx = torch.as_tensor(list(order), device=self.device)
        for name in ("flat", "exp_avg", "sq_avg", "steps", "drop_keys"):
            setattr(self, name, getattr(self, name)[idx].contiguous())
        self.members = [self.members[i] for i in order]
        self._coefficients()

    @property
    def size(self) -> int:
        return len(self.members)

    def params(self, flat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Views of ``flat`` (default: every member's weights): name -> (G', *shape)."""
        flat = self.flat if flat is None else flat
        out, o = {}, 0
        for name, shape, n in self.layout:
            out[name] = flat[:, o:o + n].view(flat.shape[0], *shape)
            o += n
        return out

    def logits(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """x: (G, B, *input_shape) -> (G, B, n_classes)."""
        return self.forward_fn(self, self.params(), x, train)

    def drop(self, h: torch.Tensor, train: bool) -> torch.Tensor:
        """Per-member inverted dropout on h (G', B, ...), all members in one set of tensor ops (the bits:
        ``drop_mask``)."""
        mult, _ = self.drop_mask(h.shape[0], h[0].numel(), train)
        return h if mult is None else h * mult.view(h.shape)

    def drop_mask(self, k: int, n: int, train: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The dropout of the next call on n units per member, for the k members from ``row0``: a (k, n)
        multiplier (0 for a dropped unit, 1/(1-p) for a kept one) and the (k, 1) scales 1/(1-p), or
        (None, None) when nothing drops. Unit u (row-major over (B, ...)) of member m gets 16 bits of
        hash(key_m, step_m, call, u // 2) (two units per 32-bit hash), so its masks depend only on its
        seed, its own optimizer steps, the call index within the step and its own rows (padded rows get
        bits too: their loss is masked out). Its rate is used to 1/65536 (``DROP_LEVELS``)."""
        call, self.drop_calls = self.drop_calls, self.drop_calls + 1
        rows = slice(self.row0, self.row0 + k)  # the members being computed
        if not train or max(self.rates[rows]) <= 0:
            return None, None
        step = self.steps[rows].to(torch.int32)  # (k, 1): exact below 2**24 steps
        base = _mix32(_mix32(self.drop_keys[rows] + step * _GOLDEN32) + _wrap32(call * _GOLDEN32))  # (k, 1)
        levels = _mix32(base + _counters((n + 1) // 2, self.device)).view(torch.int16)[:, :n]  # (k, n)
        # kept iff level >= threshold; in float arithmetic, exact on int16 values: clamp(level -
        # (threshold - 1), 0, 1) is 1 for kept, 0 for dropped (bool masks and where/masked_fill are
        # several times slower on CPU than these float passes)
        scale = self.drop_scale[rows]
        mult = levels.to(torch.float32).sub_(self.drop_below[rows]).clamp_(0, 1).mul_(scale)
        return mult, scale

    @torch.no_grad()
    def update(self, k: int, grad: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """One optimizer step for members 0..k-1 (those in ``active`` (k,) bool, if given) with torch's
        SGD/Adam/RMSprop rules and weight decay: a dozen in-place ops over the (k, P) slice."""
        if active is None or bool(active.all()):
            rows = slice(0, k)
            state = [self.flat[rows], self.exp_avg[rows], self.sq_avg[rows], self.steps[rows]]  # views
            self._step(rows, grad, *state)
            return
        rows = active.nonzero()[:, 0]  # step a compacted copy of the active members, scatter it back
        state = [self.flat[rows], self.exp_avg[rows], self.sq_avg[rows], self.steps[rows]]
        self._step(rows, grad[rows], *state)
        for full, part in zip((self.flat, self.exp_avg, self.sq_avg, self.steps), state):
            full.index_copy_(0, rows, part)

    def _step(self, rows: slice | torch.Tensor, grad: torch.Tensor, p: torch.Tensor, m: torch.Tensor,
              v: torch.Tensor, t: torch.Tensor) -> None:
        """In place on p (weights), m (first moment), v (second moment), t (steps, (n, 1))."""
        b1, b2 = ADAM_BETAS
        adam, not_adam, sgd = self.adam[rows], self.not_adam[rows], self.sgd[rows]  # (n, 1) each
        decay = self.decay[rows]
        t += 1
        g = torch.addcmul(grad, self.l2[rows], p)  # weight decay as torch adds it: grad + l2 * p
        m.lerp_(g, 1 - b1)
        v.mul_(decay).addcmul_(g * (1 - decay), g)
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        # Adam: m / bc1 / (sqrt(v / bc2) + eps); RMSprop: g / (sqrt(v) + eps); SGD: g / (sqrt(0 * v) + 1)
        num = torch.addcmul(g.mul_(not_adam), m, adam / bc1)
        denom = v.mul(adam / bc2 + not_adam * (1 - sgd)).sqrt_().add_(self.eps[rows])
        p.addcdiv_(num.mul_(-self.lr[rows]), denom)

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
    """Train every member of ``pop`` for its epochs; returns each member's checkpoints in the order of
    ``pop.members`` (the population is back in that order afterwards)."""
    given = list(pop.members)
    datas = [member_data(splits.y_train, splits.info.n_classes, m.train_config, m.seed) for m in given]
    per_epoch = [math.ceil(len(d.indices) / m.train_config.batch_size) for d, m in zip(datas, given)]
    # stable: most steps first, equal batch sizes next to each other (fewer padded segments)
    order = sorted(range(pop.size), key=lambda i: (-per_epoch[i], given[i].train_config.batch_size))
    pop.permute(order)
    try:
        out = _train_sorted(pop, splits, [datas[i] for i in order], device, progress)
    finally:
        pop.permute(sorted(range(pop.size), key=order.__getitem__))  # the inverse permutation
        pop.batch_counts = None
    back: list[list[Checkpoint]] = [[] for _ in given]
    for pos, i in enumerate(order):
        back[i] = out[pos]
    return back


def _train_sorted(pop: Population, splits: Splits, datas: list, device: str,
                  progress: Progress | None) -> list[list[Checkpoint]]:
    tcs = [m.train_config for m in pop.members]
    lasts = torch.tensor([last_epoch(t) for t in tcs])
    epochs = int(lasts.max())  # members whose last checkpoint is earlier stay frozen
    orders = [epoch_orders(d, epochs, m.seed) for d, m in zip(datas, pop.members)]
    x_all = splits.x_train.to(device)
    y_all = torch.stack([d.labels for d in datas]).to(device)  # (G, N_train): each member's noisy labels
    out: list[list[Checkpoint]] = [[Checkpoint(0, 0, pop.extract(m))] if 0 in t.checkpoints else []
                                   for m, t in enumerate(tcs)]
    step_count = torch.zeros(pop.size, dtype=torch.int64)
    for epoch in range(1, epochs + 1):
        idx, counts = _epoch_batches([next(o) for o in orders], [t.batch_size for t in tcs])  # (G, T, B), (G, T)
        running = lasts >= epoch  # (G,) members still training this epoch
        counts[~running] = 0
        for s in range(idx.shape[1]):
            cnt = counts[:, s]
            k = int((cnt > 0).nonzero().max()) + 1 if bool((cnt > 0).any()) else 0
            if k == 0:
                continue
            cnt = cnt[:k]
            pop.batch_counts = cnt.tolist()  # real rows of the k members stepping
            # one leaf per parameter (views of flat[:k] would each scatter a full (k, P) gradient)
            leaves = {n: v.detach().requires_grad_(True) for n, v in pop.params(pop.flat[:k]).items()}
            loss = torch.zeros((), device=device)
            for a, e in _segments(pop.batch_counts) if type(pop) is Population else [(0, k)]:
                # members a..e-1 padded to their own widest batch (a mixed population pads less)
                c = cnt[a:e]
                bmax = int(c.max())
                bi = idx[a:e, s, :bmax].to(device)  # (e-a, B)
                pop.row0, pop.drop_calls = a, 0  # pop.drop reads the members' keys and steps from row0
                part = leaves if (a, e) == (0, k) else {n: v[a:e] for n, v in leaves.items()}
                logits = pop.forward_fn(pop, part, x_all[bi], True)  # (e-a, B, K)
                ce = F.cross_entropy(logits.flatten(0, 1), y_all[a:e].gather(1, bi).flatten(), reduction="none")
                valid = (torch.arange(bmax)[None, :] < c[:, None]).to(device)  # (e-a, B)
                ce = torch.where(valid, ce.view(e - a, bmax), 0.0)
                # each member's mean loss over its real rows; members' gradients do not mix
                loss = loss + (ce.sum(1) / c.clamp(min=1).to(ce)).sum()
            pop.row0 = 0
            grads = torch.autograd.grad(loss, list(leaves.values()))
            grad = torch.cat([gr.reshape(k, -1) for gr in grads], dim=1)  # (k, P) in layout order
            active = cnt > 0
            pop.update(k, grad, None if bool(active.all()) else active.to(device))
            step_count[:k] += active.long()
        for m, t in enumerate(tcs):
            if epoch in t.checkpoints:
                out[m].append(Checkpoint(epoch, int(step_count[m]), pop.extract(m)))
        if progress is not None:
            progress(epoch, epochs)
    return out


SEGMENT_ROWS = 256  # padded rows that cost about as much as one more forward/backward call (~1 ms)


def _segments(counts: list[int]) -> list[tuple[int, int]]:
    """Split the stepping members (real rows per member, in population order) into runs [a, e) that
    each pad to their own widest batch: a member starts a new run when padding it (or the run) to a
    common width would add more than ``SEGMENT_ROWS`` rows. Results do not depend on the split."""
    out, a, width = [], 0, counts[0]
    for i, c in enumerate(counts[1:], 1):
        merged = max(width, c)
        if merged * (i + 1 - a) - width * (i - a) - c > SEGMENT_ROWS:
            out.append((a, i))
            a, width = i, c
        else:
            width = merged
    return out + [(a, len(counts))]


_COUNTERS: dict[tuple[int, str], torch.Tensor] = {}


def _counters(n: int, device: str | torch.device) -> torch.Tensor:
    """(n,) int32: 0, golden, 2*golden, ... (wrapping): distinct hash inputs for one member's units."""
    key = (n, str(device))
    if key not in _COUNTERS:
        _COUNTERS[key] = torch.arange(n, dtype=torch.int32, device=device) * _GOLDEN32
    return _COUNTERS[key]


def _wrap32(v: int) -> int:
    return (v + 2 ** 31) % 2 ** 32 - 2 ** 31


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit mixer, in place on a fresh int32 tensor x (arithmetic wraps; shifts made
    logical by masking): the same bits on every device and for every batch of members. The shifts
    reuse one scratch tensor (fresh large tensors cost page faults on every call)."""
    tmp = torch.empty_like(x)
    torch.bitwise_right_shift(x, 16, out=tmp)
    x.bitwise_xor_(tmp.bitwise_and_(0xFFFF)).mul_(_MIX1)
    torch.bitwise_right_shift(x, 15, out=tmp)
    x.bitwise_xor_(tmp.bitwise_and_(0x1FFFF)).mul_(_MIX2)
    torch.bitwise_right_shift(x, 16, out=tmp)
    return x.bitwise_xor_(tmp.bitwise_and_(0xFFFF))


def _epoch_batches(orders: list[torch.Tensor], batch_sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member orders -> (G, T, B) indices and (G, T) real rows per step (0: the member idles)."""
    steps = [math.ceil(len(o) / b) for o, b in zip(orders, batch_sizes)]
    t_max, b_max = max(steps), max(batch_sizes)
    idx = torch.zeros(len(orders), t_max, b_max, dtype=torch.int64)
    counts = torch.zeros(len(orders), t_max, dtype=torch.int64)
    for m, (o, b, t) in enumerate(zip(orders, batch_sizes, steps)):
        padded = torch.zeros(t * b, dtype=torch.int64)
        padded[:len(o)] = o
        idx[m, :t, :b] = padded.view(t, b)
        counts[m, :t] = b
        counts[m, t - 1] = len(o) - (t - 1) * b  # the last batch may be short (no drop_last)
    return idx, counts


from zoo.population_archs import _conv, _linear  # noqa: E402,F401  (fill the registry; helpers for forwards)
from zoo import population_1d  # noqa: E402,F401  (registers the 1-D architectures' forwards)
from zoo import population_wild  # noqa: E402,F401  (registers the heterogeneous wildcnn / wildcnn1d populations)
