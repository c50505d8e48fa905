"""Adversarial robustness: PGD (own implementation) and AutoAttack (torchattacks).

PGD and (Linf) AutoAttack attack all models of a batch in one run. PGD uses ``labeling.population``'s
``Population``, whose rows belong to models by position; it is implemented here (Madry et al.'s
algorithm with torchattacks' step, projection and random-start choices) so that every model's random
starts come from its own seed (``ModelBatch.seeds``): a model's PGD label is the same whichever batch
it lands in, up to float rounding of the batched forward (a near-tied logit or a near-zero gradient
component can flip; measured: identical on the models of tests/test_label_batching.py). AutoAttack cannot: its stages (and APGD, FAB,
Square inside) pass on only the rows still robust, so a row's position no longer says its model. Its
rows carry their model index in an extra tag channel instead (``labeling.routing.Routed``), chunked to
``models_per_run`` models and ``rows_per_run`` rows; a tag code that cannot work (eps too large) or a tag
that fails to decode falls back, with a warning, to one run per model, as does ``batch_models=False``.
L2 AutoAttack always runs model by model: the tag channel would take a share of the L2 budget.

Robust accuracy counts an example as robust only if the model classifies it correctly both clean and
under attack, so it never exceeds clean accuracy. Each row is an independent example of one model with
its own eps-ball, so the batched run measures the per-model quantity of separate runs; only the random
draws differ. PGD runs ``restarts`` times per eps (an example must survive every restart), and the eps
list is processed in increasing order with the robust sets intersected: an adversarial example found
within a small ball also lies within every larger ball, so robust accuracy does not increase with eps.

Inputs are attacked in [0, 1] coordinates (see ``labeling.population``); eps is given for [0, 1] images
and multiplied by ``DatasetInfo.eps_scale / (hi - lo)`` of the dataset's value range for other inputs.
torchattacks draws its random starts from the global torch RNG (and APGD/FAB reseed it), so every
AutoAttack call runs inside ``torch.random.fork_rng`` seeded from the property's generator: the global
state is restored afterwards and the same models in the same batch get the same numbers. PGD draws from
its own generators and never touches the global RNG.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn

from core.errors import ZooError
from core.hashing import stable_hash
from labeling.population import Population, population_logits, tile
from labeling.registry import ModelBatch, register_property
from labeling.routing import Routed, RoutingError, tag_code
from zoo.datasets import Splits


def eps_name(eps: float) -> str:
    """8/255 -> '8_255'; 0.5 -> '0p5'."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}_255"
    return f"{eps:g}".replace(".", "p").replace("-", "m")


def attack_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """torchattacks assumes (C, H, W) examples (L2 norms are viewed as (N, 1, 1, 1)): flat inputs become (1, 1, F)."""
    return tuple(shape) if len(shape) == 3 else (1, 1, math.prod(shape))


def seeded_call(seed: int, device: torch.device, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return fn()


def draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def attack_range(splits: Splits, x: torch.Tensor) -> tuple[float, float]:
    """The declared value range, widened to cover the data (torchattacks would clamp values outside it)."""
    lo, hi = splits.info.value_range
    return min(float(lo), float(x.min())), max(float(hi), float(x.max()))


def unit_eps(eps: float, splits: Splits, value_range: tuple[float, float]) -> float:
    """eps for [0, 1] images -> eps in the attack's [0, 1] coordinates of this dataset."""
    return eps * splits.info.eps_scale / (value_range[1] - value_range[0])


def subset(n_total: int, n: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded subset (all examples when n is None or >= n_total)."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


@torch.no_grad()
def correct(pop: nn.Module, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M*N,) bool: row classified correctly. u in unit coordinates, y tiled (a Population or Routed)."""
    return pop(u).argmax(-1) == y


@dataclass(frozen=True)
class PGDParams:
    eps_linf: tuple[float, ...] = (2 / 255, 8 / 255)
    eps_l2: tuple[float, ...] = (0.25, 0.5)
    steps: int = 10
    restarts: int = 1  # independent random starts; an example must survive all of them
    alpha_factor: float = 2.5  # step size = alpha_factor * eps / steps (Madry et al.)
    split: str = "test"
    n_examples: int | None = None  # None: the whole split; else a seeded subset
    subset_seed: int = 0
    chunk_rows: int = 4096  # rows (models x examples) per forward/backward; results do not depend on it


def _robust(pop: Population, x: torch.Tensor, y: torch.Tensor, make_attack, seeds: list[int], chunk_rows: int,
            device: torch.device) -> torch.Tensor:
    """(M, N) bool: clean-correct and correct after every restart of a torchattacks attack (AutoAttack)."""
    m, n = pop.m, x.shape[0]
    step = max(1, chunk_rows // m)
    out = []
    for i in range(0, n, step):
        xb, yb = x[i:i + step].to(device), y[i:i + step].to(device)
        u = tile(pop.to_unit(xb), m).reshape((m * xb.shape[0],) + attack_shape(tuple(xb.shape[1:])))
        yy = tile(yb, m)
        ok = correct(pop, u, yy)
        for seed in seeds:
            atk = make_attack()
            adv = seeded_call(seed, device, lambda: atk(u, yy))
            ok &= correct(pop, adv, yy)
        out.append(ok.reshape(m, xb.shape[0]).cpu())
    return torch.cat(out, dim=1)


def _row_norm(v: torch.Tensor) -> torch.Tensor:
    """(R, ...) -> (R, 1, ..., 1) L2 norm of each row."""
    return v.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (v.dim() - 1))


def pgd_start(norm: str, eps: float, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """One model's random start (N, *shape) from its own generator: uniform in the Linf ball, or a uniform
    direction (normalized Gaussian) times a uniform radius in the L2 ball (torchattacks' choices)."""
    g = torch.Generator().manual_seed(seed)
    if norm == "linf":
        return (torch.rand(shape, generator=g, dtype=torch.float32) * 2 - 1) * eps
    d = torch.randn(shape, generator=g, dtype=torch.float32)
    r = torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=g, dtype=torch.float32)
    return d / _row_norm(d).clamp_min(1e-12) * r * eps


def pgd_attack(pop: Population, u: torch.Tensor, y: torch.Tensor, start: torch.Tensor, norm: str, eps: float,
               alpha: float, steps: int) -> torch.Tensor:
    """Madry et al.'s PGD on every row at once: u (R, *shape) clean inputs in [0, 1] (rows of model m in
    block m, as ``Population`` reads them), start (R, *shape) the random start, y (R,) labels. Each step
    moves along the sign (Linf) or direction (L2) of the gradient of the row's own cross-entropy (the
    loss is a sum, so no row's step depends on the others), projects onto the eps-ball around the clean
    row and clips to [0, 1]."""
    adv = (u + start).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = torch.nn.functional.cross_entropy(pop(adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            if norm == "linf":
                adv = adv + alpha * grad.sign()
                adv = (u + (adv - u).clamp(-eps, eps)).clamp(0, 1)
            else:
                adv = adv + alpha * grad / (_row_norm(grad) + 1e-10)
                delta = adv - u
                delta = delta * (eps / _row_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
                adv = (u + delta).clamp(0, 1)
    return adv.detach()


def pgd_seed(model_seed: int, norm: str, eps: float, restart: int) -> int:
    return int(stable_hash(["pgd", int(model_seed), norm, float(eps), int(restart)]), 16) % 2**63


START_BLOCK = 64  # examples per random-start block: each block of a model's examples has its own generator


def pgd_starts(norm: str, eps: float, shape: tuple[int, ...], seed: int, rows: torch.Tensor) -> torch.Tensor:
    """One model's random starts (len(rows), *shape) for examples ``rows``: example e's start is row
    e % START_BLOCK of the block drawn from seed (seed, e // START_BLOCK), so it never depends on which
    other examples are attacked with it (chunks, skipped rows), and memory stays per chunk."""
    blocks = torch.unique(rows // START_BLOCK)  # sorted
    drawn = torch.cat([pgd_start(norm, eps, (START_BLOCK,) + shape,
                                 int(stable_hash([int(seed), int(b)]), 16) % 2**63) for b in blocks])
    return drawn[torch.searchsorted(blocks, rows // START_BLOCK) * START_BLOCK + rows % START_BLOCK]


def _pgd_robust(pop: Population, u: torch.Tensor, y: torch.Tensor, alive: torch.Tensor, norm: str, eps: float,
                alpha: float, steps: int, seeds: list[int], chunk_rows: int, device: torch.device) -> torch.Tensor:
    """(M, N) bool: ``alive`` (M, N) and still correct after the attack, ``seeds[m]`` seeding model m's start.

    Only alive rows are attacked (an example misclassified clean or at a smaller eps stays non-robust
    whatever this attack does): each model's alive rows are packed into K = max alive count slots,
    padded with copies of the model's first example (their results are dropped), so the Population
    still sees M equal blocks. Every row's attack depends on its own start and gradient only (a summed
    loss), so skipping rows does not change the others'. u: (N, *attack shape) clean examples in [0, 1].
    """
    m, n = alive.shape
    shape = tuple(u.shape[1:])
    counts = alive.sum(1)
    kmax = int(counts.max())
    out = alive.clone()
    if kmax == 0:
        return out
    # slot j of model i holds its j-th alive example (or example 0 as padding)
    order = torch.argsort((~alive).to(torch.int8), dim=1, stable=True)[:, :kmax]  # (M, K) alive first, in order
    valid = torch.arange(kmax)[None, :] < counts[:, None]  # (M, K)
    slots = torch.where(valid, order, torch.zeros_like(order))
    step = max(1, chunk_rows // m)
    for j in range(0, kmax, step):
        idx = slots[:, j:j + step]  # (M, k)
        k = idx.shape[1]
        uu = u[idx.reshape(-1)].to(device)  # (M*k, *shape)
        yy = y[idx.reshape(-1)].to(device)
        start = torch.cat([pgd_starts(norm, eps, shape, seeds[i], idx[i]) for i in range(m)]).to(device)
        ok = correct(pop, pgd_attack(pop, uu, yy, start, norm, eps, alpha, steps), yy).reshape(m, k).cpu()
        broken = valid[:, j:j + k] & ~ok  # padding slots never count
        rows = torch.arange(m)[:, None].expand(m, k)
        out[rows[broken], idx[broken]] = False
    return out


def model_seeds(batch: ModelBatch, generator: torch.Generator) -> list[int]:
    """The batch's per-model seeds (``ModelBatch.seeds``); a hand-made batch without them draws from the generator."""
    return list(batch.seeds) if batch.seeds else [draw_seed(generator) for _ in range(len(batch))]


# version 2: own PGD (same algorithm and random-start distributions as torchattacks') with each model's random
# starts drawn from its own seed, so a model's label no longer depends on the other models of its batch
@register_property("pgd", version=2, params=PGDParams())
def pgd(batch: ModelBatch, splits: Splits, params: PGDParams, device: torch.device,
        generator: torch.Generator) -> list[dict[str, float]]:
    x, y = splits.split(params.split)
    idx = subset(len(y), params.n_examples, params.subset_seed)
    x, y = x[idx], y[idx]
    vr = attack_range(splits, x)
    pop = Population(batch.modules, splits.info.input_shape, vr)
    per_model = model_seeds(batch, generator)
    u = pop.to_unit(x).reshape((len(y),) + attack_shape(tuple(x.shape[1:])))
    clean = population_logits(pop, x, params.chunk_rows).argmax(-1) == y  # (M, N)
    out: list[dict[str, float]] = [{} for _ in range(len(batch))]
    for norm, eps_list in (("linf", params.eps_linf), ("l2", params.eps_l2)):
        alive = clean
        for eps in sorted(eps_list):
            e = unit_eps(eps, splits, vr)
            alpha = params.alpha_factor * e / params.steps
            for r in range(params.restarts):
                seeds = [pgd_seed(s, norm, eps, r) for s in per_model]
                alive = _pgd_robust(pop, u, y, alive, norm, e, alpha, params.steps, seeds, params.chunk_rows, device)
            for i in range(len(batch)):
                out[i][f"pgd_{norm}_{eps_name(eps)}"] = float(alive[i].double().mean())
    return out


@dataclass(frozen=True)
class AutoAttackParams:
    eps: float = 8 / 255
    norm: str = "Linf"  # Linf | L2
    version: str = "standard"  # torchattacks' standard: APGD-CE, APGD-T, FAB-T, Square (APGD with 10 steps)
    n_queries: int = 5000  # Square's query budget (torchattacks' default; it dominates the cost)
    n_examples: int = 100  # fixed subset of the test split
    subset_seed: int = 0
    split: str = "test"
    batch_models: bool = True  # Linf: many models per AutoAttack run, rows routed by a tag channel
    models_per_run: int = 64  # models attacked together (also at most rows_per_run // n_examples)
    rows_per_run: int = 8192
    indices: tuple[int, ...] = ()  # the subset actually attacked, fixed per dataset before the run


def autoattack_name(params: AutoAttackParams) -> str:
    norm = "" if params.norm == "Linf" else params.norm.lower() + "_"
    return f"autoattack_ta_{params.version}_{norm}{eps_name(params.eps)}"


def _autoattack_indices(splits: Splits, params: AutoAttackParams) -> AutoAttackParams:
    _, y = splits.split(params.split)
    idx = subset(len(y), params.n_examples, params.subset_seed)
    return replace(params, indices=tuple(int(i) for i in idx))


def _one_by_one(modules: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, example_shape: tuple[int, ...],
                vr: tuple[float, float], make: Callable[[nn.Module], object], seed: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(robust, clean), each (M, N) bool: one AutoAttack run per model."""
    robust, clean = [], []
    for module in modules:
        pop = Population([module], example_shape, vr)
        robust.append(_robust(pop, x, y, lambda: make(pop), [seed], chunk_rows=len(y), device=device)[0])
        u = pop.to_unit(x.to(device)).reshape((len(y),) + attack_shape(example_shape))
        clean.append(correct(pop, u, y.to(device)).cpu())
    return torch.stack(robust), torch.stack(clean)


def _routed(modules: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, example_shape: tuple[int, ...],
            vr: tuple[float, float], make: Callable[[nn.Module], object], eps: float, seed: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(robust, clean), each (M, N) bool: ONE AutoAttack run on M*N rows, each tagged with its model.

    Every row is an independent example of one model with its own Linf ball, so the per-model robust
    accuracy is the quantity the one-by-one runs measure; only the random draws differ (they are made for
    the whole run, e.g. Square's window positions are shared by all rows of a step, as they are by all
    examples of one model in a one-model run).
    """
    m, n = len(modules), len(y)
    shape = attack_shape(example_shape)
    pop = Population(modules, example_shape, vr)
    routed = Routed(pop, tag_code(m, eps, math.prod(shape[1:])))
    yy = tile(y.to(device), m)
    u = tile(pop.to_unit(x.to(device)), m).reshape((m * n,) + shape)
    clean = correct(pop, u, yy)
    tagged = routed.tag(u, torch.arange(m, device=device).repeat_interleave(n))
    atk = make(routed)
    adv = seeded_call(seed, device, lambda: atk(tagged, yy))
    robust = clean & correct(routed, adv, yy)
    return robust.reshape(m, n).cpu(), clean.reshape(m, n).cpu()


# version 2: models attacked together (other random draws than version 1's one run per model; same quantity)
@register_property("autoattack", version=2, params=AutoAttackParams(), kinds=("image",),
                   resolve_params=_autoattack_indices)
def autoattack(batch: ModelBatch, splits: Splits, params: AutoAttackParams, device: torch.device,
               generator: torch.Generator) -> list[dict[str, float]]:
    import torchattacks

    if params.norm not in ("Linf", "L2"):
        raise ZooError(f"AutoAttack norm must be 'Linf' or 'L2', got {params.norm!r}")
    x, y = splits.split(params.split)
    idx = torch.tensor(params.indices or _autoattack_indices(splits, params).indices, dtype=torch.long)
    x, y = x[idx], y[idx]
    seed = draw_seed(generator)  # one seed for every model of the batch
    vr = attack_range(splits, x)
    eps = unit_eps(params.eps, splits, vr)
    shape = tuple(splits.info.input_shape)

    def make(model: nn.Module):
        atk = torchattacks.AutoAttack(model, norm=params.norm, eps=eps, version=params.version,
                                      n_classes=splits.info.n_classes, seed=seed)
        for sub in atk._autoattack.attacks:
            if isinstance(sub, torchattacks.Square):
                sub.n_queries = params.n_queries
        return atk

    modules = list(batch.modules)
    # L2 stays one by one: the tag channel would share the L2 budget (see labeling.routing).
    per_run = max(1, min(params.models_per_run, params.rows_per_run // max(1, len(y))))
    robust, clean = [], []
    for i in range(0, len(modules), per_run):
        chunk = modules[i:i + per_run]
        if params.batch_models and params.norm == "Linf" and len(chunk) > 1:
            try:
                r, c = _routed(chunk, x, y, shape, vr, make, eps, seed, device)
            except RoutingError as e:
                warnings.warn(f"AutoAttack: rows cannot be routed ({e}); attacking models {i}..{i + len(chunk) - 1} "
                              f"one by one", stacklevel=2)
                r, c = _one_by_one(chunk, x, y, shape, vr, make, seed, device)
        else:
            r, c = _one_by_one(chunk, x, y, shape, vr, make, seed, device)
        robust.append(r)
        clean.append(c)
    robust, clean = torch.cat(robust), torch.cat(clean)
    name = autoattack_name(params)
    return [{name: float(r.double().mean()), f"{name}_clean": float(c.double().mean())} for r, c in zip(robust, clean)]
