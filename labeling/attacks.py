"""Adversarial robustness with torchattacks.

PGD and (Linf) AutoAttack attack all models of a batch in one run. PGD uses ``labeling.population``'s
``Population``, whose rows belong to models by position. AutoAttack cannot: its stages (and APGD, FAB,
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
torchattacks draws its random starts from the global torch RNG (and APGD/FAB reseed it), so every call
runs inside ``torch.random.fork_rng`` seeded from the property's generator: the global state is
restored afterwards and the same models in the same batch get the same numbers.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn

from core.errors import ZooError
from labeling.population import Population, tile
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
    chunk_rows: int = 16384  # rows (models x examples) per attack call


def _robust(pop: Population, x: torch.Tensor, y: torch.Tensor, make_attack, seeds: list[int], chunk_rows: int,
            device: torch.device) -> torch.Tensor:
    """(M, N) bool: clean-correct and correct after every restart of the attack."""
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


@register_property("pgd", version=1, params=PGDParams())
def pgd(batch: ModelBatch, splits: Splits, params: PGDParams, device: torch.device,
        generator: torch.Generator) -> list[dict[str, float]]:
    import torchattacks

    x, y = splits.split(params.split)
    idx = subset(len(y), params.n_examples, params.subset_seed)
    x, y = x[idx], y[idx]
    vr = attack_range(splits, x)
    pop = Population(batch.modules, splits.info.input_shape, vr)
    out: list[dict[str, float]] = [{} for _ in range(len(batch))]
    for norm, eps_list in (("linf", params.eps_linf), ("l2", params.eps_l2)):
        alive = torch.ones(len(batch), len(y), dtype=torch.bool)
        for eps in sorted(eps_list):
            e = unit_eps(eps, splits, vr)
            alpha = params.alpha_factor * e / params.steps
            if norm == "linf":
                make = lambda: torchattacks.PGD(pop, eps=e, alpha=alpha, steps=params.steps, random_start=True)
            else:
                make = lambda: torchattacks.PGDL2(pop, eps=e, alpha=alpha, steps=params.steps, random_start=True)
            seeds = [draw_seed(generator) for _ in range(params.restarts)]
            alive &= _robust(pop, x, y, make, seeds, params.chunk_rows, device)
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
