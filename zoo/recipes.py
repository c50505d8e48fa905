"""Models trained with recipes OUTSIDE a family's sampling space, exported as files for ``zoo ingest file``.

Issue 14 asks whether a predictor trained on a zoo still ranks models that were trained differently:
another optimizer (momentum SGD, AdamW, NAdam), a learning-rate schedule, augmentation, label
smoothing. The zoo's own space (zoo.sampling.TrainSpace) has none of these: sgd/adam/rmsprop without
momentum, a constant learning rate, no augmentation, plain cross-entropy. ``export_outside`` trains
members of a family's architectures with the registered ``RECIPES`` and writes each as a weights file
plus one ``manifest.jsonl`` that ``zoo ingest file`` reads; ingested models carry the family
``ingest-file``, so they never enter a family's training set, and the evaluation
(``evaluation`` suite ``standard``: the "outside recipes" test set) scores them separately.

    zoo recipes --family digits-cnn --n 60 --out outside/   # then: zoo ingest file outside/manifest.jsonl

Members spread in quality on purpose: each draws its learning rate (log-uniform around the recipe's) and
its number of epochs, so the set has a ranking worth predicting.
"""
from __future__ import annotations

import json
import math
import pathlib
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from core.hashing import stable_hash
from core.registry import Registry
from zoo.archs import build
from zoo.datasets import Splits, load_dataset
from zoo.families import FAMILIES
from zoo.sampling import OPTIMIZERS, member_seed, stream
from zoo.train import seeded_global_rng

OUTSIDE_EPOCHS = (2, 5, 10, 20)  # sampled per member: spreads accuracies like the zoo's checkpoints do


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str  # sgd_momentum | adamw | nadam (none of them is in zoo.sampling.OPTIMIZERS)
    lr: float  # centre of the member's log-uniform learning rate (x0.25 .. x2)
    schedule: str = "constant"  # constant | cosine | step (halved at 1/3 and 2/3) | onecycle
    weight_decay: float = 0.0  # AdamW: decoupled; the others: added to the gradient
    label_smoothing: float = 0.0
    augment: str = "none"  # none | shift (random +-1 step per spatial axis) | noise (gaussian, 0.1 data sd)
    batch_size: int = 64

    def outside_the_zoo(self) -> list[str]:
        """What puts this recipe outside every family's sampling space (never empty for a registered one)."""
        why = []
        if self.optimizer not in OPTIMIZERS:
            why.append(f"optimizer {self.optimizer}")
        if self.schedule != "constant":
            why.append(f"{self.schedule} schedule")
        if self.label_smoothing > 0:
            why.append(f"label smoothing {self.label_smoothing}")
        if self.augment != "none":
            why.append(f"{self.augment} augmentation")
        return why


RECIPES: Registry[Recipe] = Registry("training recipe")


def _register(r: Recipe) -> Recipe:
    return RECIPES.register(r.name)(r)


_register(Recipe("sgd-momentum-cosine", "sgd_momentum", 0.05, schedule="cosine", weight_decay=5e-4))
_register(Recipe("adamw-onecycle", "adamw", 3e-3, schedule="onecycle", weight_decay=0.05))
_register(Recipe("nadam-smoothing-step", "nadam", 2e-3, schedule="step", label_smoothing=0.1))
_register(Recipe("sgd-momentum-shift", "sgd_momentum", 0.05, augment="shift"))
_register(Recipe("nadam-noise", "nadam", 2e-3, augment="noise", weight_decay=1e-4))


def _optimizer(recipe: Recipe, params, lr: float) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd_momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "nadam":
        return torch.optim.NAdam(params, lr=lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"recipe {recipe.name}: unknown optimizer {recipe.optimizer!r}")


def _schedule(recipe: Recipe, opt: torch.optim.Optimizer, lr: float, total: int):
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if recipe.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[total // 3, 2 * total // 3], gamma=0.5)
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    if recipe.schedule == "constant":
        return None
    raise ValueError(f"recipe {recipe.name}: unknown schedule {recipe.schedule!r}")


def _augment(recipe: Recipe, x: torch.Tensor, data_sd: float, g: torch.Generator) -> torch.Tensor:
    """x (B, C, *spatial) -> augmented copy (the stored dataset is never changed)."""
    if recipe.augment == "noise":
        return x + 0.1 * data_sd * torch.randn(x.shape, generator=g)
    if recipe.augment == "shift":
        out = x
        for axis in range(2, x.dim()):  # every spatial axis: shift each example by -1, 0 or +1, zero-filled
            shifts = torch.randint(-1, 2, (x.shape[0],), generator=g)
            padded = F.pad(out, [0, 0] * (x.dim() - 1 - axis) + [1, 1])
            n = x.shape[axis]
            idx = (torch.arange(n)[None, :] + 1 - shifts[:, None])  # (B, n): source position in the padded axis
            view = [x.shape[0]] + [1] * (x.dim() - 1)
            view[axis] = n
            expand = list(padded.shape)
            expand[axis] = n
            out = padded.gather(axis, idx.view(view).expand(expand))
        return out
    return x


def train_with_recipe(arch: str, arch_config: Mapping, splits: Splits, recipe: Recipe, seed: int, lr: float,
                      epochs: int, progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """Train one model of ``arch`` from its own default initialization (seeded) with ``recipe``; returns
    its final state dict."""
    with seeded_global_rng(seed, "module_init"):
        module = build(arch, dict(arch_config)).module
    module.train()
    g = stream(seed, "outside-recipe")
    n = len(splits.y_train)
    steps = math.ceil(n / recipe.batch_size) * epochs
    opt = _optimizer(recipe, module.parameters(), lr)
    sched = _schedule(recipe, opt, lr, steps) if steps else None
    data_sd = float(splits.x_train.std())
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(n, generator=g).split(recipe.batch_size):
            x = _augment(recipe, splits.x_train[batch], data_sd, g)
            loss = F.cross_entropy(module(x), splits.y_train[batch], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        if progress is not None:
            progress(epoch, epochs)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@dataclass(frozen=True)
class OutsideMember:
    index: int
    arch: str
    arch_config: dict
    dataset: str
    recipe: str
    lr: float
    epochs: int
    seed: int


def plan_outside(family: str, n: int, seed: int = 0, recipes: tuple[str, ...] | None = None) -> list[OutsideMember]:
    """Member i: the family's architecture (sampled for heterogeneous families), recipe i mod len(recipes),
    a learning rate and an epoch count of its own; a pure function of (family, i, seed)."""
    fam = FAMILIES.get(family)
    names = list(recipes or RECIPES.names())
    for r in names:
        RECIPES.get(r)  # unknown names fail here, naming the known ones
    info = load_dataset(fam.dataset, fam.dataset_seed).info
    out = []
    for i in range(n):
        ms = member_seed(f"{family}/outside-recipes", i, seed)
        plan = fam.member(i, ms, info)  # architecture as the family samples it (train config unused)
        g = stream(ms, "outside-hparams")
        recipe = RECIPES.get(names[i % len(names)])
        lr = recipe.lr * math.exp(math.log(0.25) + float(torch.rand((), generator=g)) * math.log(8.0))
        epochs = OUTSIDE_EPOCHS[int(torch.randint(len(OUTSIDE_EPOCHS), (), generator=g))]
        out.append(OutsideMember(i, fam.arch, plan.arch_config, fam.dataset, recipe.name, lr, epochs, ms))
    return out


def export_outside(family: str, n: int, out_dir: str | pathlib.Path, seed: int = 0,
                   recipes: tuple[str, ...] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> pathlib.Path:
    """Train ``n`` outside-recipe members of ``family`` and write ``<out>/<family>-outside-<i>.pt`` plus
    ``<out>/manifest.jsonl`` (path, arch, config, dataset, and the recipe for the record). Files already
    written by the same plan are kept (re-running resumes). Returns the manifest's path."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fam = FAMILIES.get(family)
    splits = load_dataset(fam.dataset, fam.dataset_seed)
    rows = []
    members = plan_outside(family, n, seed, recipes)
    for k, m in enumerate(members):
        name = f"{family}-outside-{stable_hash(asdict(m), 10)}.pt"
        path = out / name
        if not path.exists():
            state = train_with_recipe(m.arch, m.arch_config, splits, RECIPES.get(m.recipe), m.seed, m.lr, m.epochs)
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(path)  # a killed run never leaves a half-written weights file behind
        rows.append({"path": name, "arch": m.arch, "config": m.arch_config, "dataset": m.dataset,
                     "recipe": m.recipe, "lr": m.lr, "epochs": m.epochs, "family": family})
        if progress is not None:
            progress(k + 1, len(members))
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return manifest
