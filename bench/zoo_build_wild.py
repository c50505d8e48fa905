"""Plain per-model loop vs padded wild populations (zoo.population_wild) on the same heterogeneous members.

    .venv/bin/python bench/zoo_build_wild.py --threads 1          # both wild benchmark families
    .venv/bin/python bench/zoo_build_wild.py --quick              # seconds: tiny sizes, checks it runs

Per family (``bench-mnist1d-wild``, ``bench-digits-wild``):
1. Grouping: how many distinct architecture configs the family's first ``--plan`` members (2,000 = a
   benchmark build) have, how many structural groups (all but the widths), and how many population
   groups (zoo.population_wild.group_key: depth and strides), with the padded/real MAC ratio of
   ``--size``-member populations cut from them as zoo build would (sorted by order_key); and the family's
   total training arithmetic (6 x MACs x examples seen), the floor no training loop gets under.
2. Speed: ``--units`` units of ``--size`` consecutive members (at evenly spaced quantiles of unit size:
   small to large members), trained for ``--epochs`` with the plain loop member by member, and as
   populations of every size in ``--sizes`` (the unit cut in consecutive chunks; 1: a population of one,
   no padding). Both contenders train one member first, untimed: the first training in a process pays
   seconds of one-off start-up that would otherwise be charged to whoever runs first.
Timings on a shared machine are noisy: compare the ratios (plain / population), measured in the same run.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from zoo.archs import build  # noqa: E402
from zoo.datasets import load_dataset  # noqa: E402
from zoo.families import FAMILIES, MemberPlan  # noqa: E402
from zoo.population import Member, train_population  # noqa: E402
from zoo.population_wild import WildPopulation, group_key, order_key, padded_config  # noqa: E402
from zoo.train import member_data, train_plain  # noqa: E402

FAMILY_NAMES = ("bench-mnist1d-wild", "bench-digits-wild")


def macs(cfg: dict) -> int:
    """Forward multiply-accumulates per example: every conv (padding taps included) and the head."""
    total = 0
    spatial, c_in = list(cfg["input_shape"][1:]), int(cfg["input_shape"][0])
    kernels = cfg.get("kernel_sizes", [3] * len(cfg["channels"]))
    strides = cfg.get("strides", [1] * len(cfg["channels"]))
    for c_out, k, s in zip(cfg["channels"], kernels, strides):
        spatial = [(x - 1) // s + 1 for x in spatial]  # padding k//2, odd k: ceil(x / s)
        total += c_in * c_out * k ** len(spatial) * math.prod(spatial)
        c_in = c_out
    return total + c_in * int(cfg["n_classes"])


def grouping(plans: list[MemberPlan], size: int, n_train: int, epochs: int) -> dict:
    cfgs = [p.arch_config for p in plans]
    structural = {json.dumps({k: v for k, v in c.items() if k != "channels"} | {"depth": len(c["channels"])},
                             sort_keys=True) for c in cfgs}
    groups = collections.defaultdict(list)
    for p in plans:
        groups[group_key(p.arch_config)].append(p)
    real = sum(macs(c) for c in cfgs)
    padded = sum(len(u) * macs(padded_config([p.arch_config for p in u])) for u in units_of(groups, size))
    flops = sum(6 * macs(p.arch_config) * round(p.train_config.train_fraction * n_train) * epochs for p in plans)
    return {"members": len(plans), "configs": len({json.dumps(c, sort_keys=True) for c in cfgs}),
            "structural_groups": len(structural), "population_groups": len(groups),
            "padded_over_real_macs": padded / real, "train_tflop": flops / 1e12}


def units_of(groups: dict, size: int) -> list[list[MemberPlan]]:
    out = []
    for g in groups.values():
        g = sorted(g, key=lambda p: (order_key(p.arch_config), p.index))
        out += [g[i:i + size] for i in range(0, len(g), size)]
    return out


def train_pop(arch: str, plans: list[MemberPlan], splits) -> None:
    train_population(WildPopulation(arch, [p.arch_config for p in plans],
                                     [Member(p.train_config, p.seed) for p in plans]), splits)


def bench_family(name: str, args) -> dict:
    fam = FAMILIES.get(name)
    splits = load_dataset(fam.dataset, fam.dataset_seed)
    if args.train_n:
        splits = dataclasses.replace(splits, x_train=splits.x_train[:args.train_n], y_train=splits.y_train[:args.train_n])
    plans = [fam.member(i, args.seed, splits.info, (args.epochs,)) for i in range(args.plan)]
    epochs = max(fam.checkpoints or (fam.space.epochs,))  # what a build trains
    g = grouping(plans, args.size, len(splits.y_train), epochs)
    print(f"\n== {name} ({fam.arch} on {fam.dataset}): {g['members']} members, {g['configs']} distinct configs, "
          f"{g['structural_groups']} structural groups (all but widths), {g['population_groups']} population groups "
          f"(depth, strides); populations of {args.size}: padded/real MACs {g['padded_over_real_macs']:.2f}; "
          f"their training arithmetic at {epochs} epochs (a build): {g['train_tflop']:.1f} TFLOP")
    groups = collections.defaultdict(list)
    for p in plans:
        groups[group_key(p.arch_config)].append(p)
    full = sorted((u for u in units_of(groups, args.size) if len(u) == args.size),
                  key=lambda u: sum(macs(p.arch_config) for p in u))
    if not full:
        raise SystemExit(f"{name}: no population group has {args.size} members among {args.plan}; lower --size")
    picks = [full[round(q * (len(full) - 1) / max(1, args.units - 1))] for q in range(args.units)]
    warm = picks[0][0]
    train_plain(fam.arch, warm.arch_config, build(fam.arch, warm.arch_config).spec, splits, warm.train_config, warm.seed)
    train_pop(fam.arch, [warm], splits)
    totals = collections.Counter()
    for unit in picks:
        seen = sum(len(member_data(splits.y_train, splits.info.n_classes, p.train_config, p.seed).indices) for p in unit)
        t = time.perf_counter()
        for p in unit:
            train_plain(fam.arch, p.arch_config, build(fam.arch, p.arch_config).spec, splits, p.train_config, p.seed)
        plain = time.perf_counter() - t
        totals["plain"] += plain
        line = [f"plain {plain / len(unit):.3f}"]
        for s in args.sizes:
            t = time.perf_counter()
            for i in range(0, len(unit), s):
                train_pop(fam.arch, unit[i:i + s], splits)
            took = time.perf_counter() - t
            totals[s] += took
            line.append(f"pop/{s} {took / len(unit):.3f} ({plain / took:.2f}x)")
        widths = padded_config([p.arch_config for p in unit])["channels"]
        print(f"   unit of {len(unit)} (mean {sum(macs(p.arch_config) for p in unit) / len(unit) / 1e3:.0f}k MACs/example,"
              f" padded widths {widths}, {seen} examples/epoch): s/member " + ", ".join(line))
    n = len(picks) * args.size
    out = {"plain_s_per_member": totals["plain"] / n}
    for s in args.sizes:
        out[f"pop{s}_s_per_member"] = totals[s] / n
        out[f"speedup_pop{s}"] = totals["plain"] / totals[s]
    print(f"   all units: plain {out['plain_s_per_member']:.3f} s/member; "
          + ", ".join(f"population of {s}: {out[f'pop{s}_s_per_member']:.3f} s/member = {out[f'speedup_pop{s}']:.2f}x"
                      for s in args.sizes)
          + f" (>1: population faster); load average {os.getloadavg()}")
    return {**g, **out}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILY_NAMES))
    ap.add_argument("--plan", type=int, default=2000, help="members planned (grouping figures; units are cut from them)")
    ap.add_argument("--size", type=int, default=16, help="members per unit")
    ap.add_argument("--units", type=int, default=3, help="units timed, from small to large members")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16],
                    help="population sizes compared (comma-separated; each divides --size)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-n", type=int, default=0, help="use the first N training examples (0: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds): checks that the bench runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.families, args.plan, args.size, args.units, args.sizes = ["bench-digits-wild"], 60, 2, 1, [1, 2]
        args.epochs, args.train_n = 1, 64
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    out = {name: bench_family(name, args) for name in args.families}
    print(f"\nload average at the end {os.getloadavg()} (shared machine: absolute times are noisy, ratios are "
          "measured in the same run)")
    return out


if __name__ == "__main__":
    main()
