"""Plain per-model loop vs population training, the same members, in one run.

    .venv/bin/python bench/zoo_build.py --n 32 --threads 2

For the Small-CNN-Zoo CNN (4,970 parameters) on digits, 20 epochs, batch 64, members sampled from the
digits-cnn space (own seed, init, lr, l2, optimizer, dropout, data fraction, label noise), it prints
seconds per model for both, the speedup (target >= 3x), achieved GFLOP/s, and both test-accuracy
distributions with two-sample tests; then the same for an MLP population. Timings on a shared machine
are noisy: compare the ratios, which are measured in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from scipy import stats  # noqa: E402

from zoo.archs import build  # noqa: E402
from zoo.datasets import load_dataset  # noqa: E402
from zoo.population import Member, Population, train_population  # noqa: E402
from zoo.sampling import TrainSpace, member_seed, sample_train_config  # noqa: E402
from zoo.train import accuracy, member_data, train_plain  # noqa: E402


def forward_macs(arch: str, cfg: dict) -> int:
    """Multiply-accumulates of one forward pass of one example (conv and linear layers)."""
    module = build(arch, cfg).module
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, torch.nn.Conv2d):
            macs += out[0].numel() * mod.in_channels // mod.groups * math.prod(mod.kernel_size)
        elif isinstance(mod, torch.nn.Linear):
            macs += mod.in_features * mod.out_features

    for m in module.modules():
        m.register_forward_hook(hook)
    with torch.no_grad():
        module(torch.zeros(1, *cfg["input_shape"]))
    return macs


def compare(label: str, arch: str, cfg: dict, splits, members: list[Member], skip_plain: bool) -> dict:
    macs = forward_macs(arch, cfg)
    seen = [len(member_data(splits.y_train, splits.info.n_classes, m.train_config, m.seed).indices) * m.train_config.epochs
            for m in members]
    flops = [6 * macs * s for s in seen]  # forward 2*MACs, backward twice that
    spec = build(arch, cfg).spec
    print(f"\n== {label}: {arch} {spec.n_params} params, {len(members)} members, "
          f"{members[0].train_config.epochs} epochs, batch {members[0].train_config.batch_size}")
    print(f"   training cost: {statistics.mean(flops) / 1e9:.3f} GFLOP per model on average "
          f"({macs} MACs per example forward)")

    # as zoo.build does: one population per data fraction (members of one population step together)
    t = time.perf_counter()
    pop_cps: list = [None] * len(members)
    for frac in sorted({m.train_config.train_fraction for m in members}):
        which = [i for i, m in enumerate(members) if m.train_config.train_fraction == frac]
        for i, cps in zip(which, train_population(Population(arch, cfg, [members[i] for i in which]), splits)):
            pop_cps[i] = cps
    t_pop = time.perf_counter() - t
    acc_pop = [accuracy(arch, cfg, cps[-1].state, splits.x_test, splits.y_test) for cps in pop_cps]

    out = {"pop_s_per_model": t_pop / len(members)}
    print(f"   population: {t_pop / len(members):.3f} s/model, {sum(flops) / t_pop / 1e9:.2f} GFLOP/s achieved")
    if skip_plain:
        return out
    t = time.perf_counter()
    plain_cps = [train_plain(arch, cfg, spec, splits, m.train_config, m.seed) for m in members]
    t_plain = time.perf_counter() - t
    acc_plain = [accuracy(arch, cfg, cps[-1].state, splits.x_test, splits.y_test) for cps in plain_cps]
    print(f"   plain loop: {t_plain / len(members):.3f} s/model, {sum(flops) / t_plain / 1e9:.2f} GFLOP/s achieved")
    speedup = t_plain / t_pop
    print(f"   speedup population vs plain: {speedup:.2f}x")
    q = lambda a: [round(x, 3) for x in statistics.quantiles(a, n=4)]
    print(f"   test accuracy plain: mean {statistics.mean(acc_plain):.4f} quartiles {q(acc_plain)}")
    print(f"   test accuracy pop:   mean {statistics.mean(acc_pop):.4f} quartiles {q(acc_pop)}")
    ks = stats.ks_2samp(acc_plain, acc_pop).pvalue
    mw = stats.mannwhitneyu(acc_plain, acc_pop).pvalue
    paired = statistics.mean(abs(a - b) for a, b in zip(acc_plain, acc_pop))
    print(f"   two-sample tests: KS p={ks:.3f}, Mann-Whitney p={mw:.3f} "
          f"({'indistinguishable' if min(ks, mw) > 0.05 else 'DIFFERENT'} at 5%); "
          f"same-member mean |diff| {paired:.4f}")
    out.update(plain_s_per_model=t_plain / len(members), speedup=speedup, ks_p=ks, mw_p=mw)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="CNN members (trained both ways)")
    ap.add_argument("--mlp-n", type=int, default=32, help="MLP members (0 to skip)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-plain", action="store_true", help="time the population only")
    ap.add_argument("--full-data", action="store_true",
                    help="every member trains on the whole train split (else sampled fractions 0.1-1)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    splits = load_dataset("digits", 0)
    space = dataclasses.replace(TrainSpace(), batch_sizes=(args.batch,), epochs=args.epochs,
                                train_fractions=(1.0,) if args.full_data else TrainSpace().train_fractions)

    def members(family: str, n: int) -> list[Member]:
        return [Member(tc, s) for s in (member_seed(family, i, args.seed) for i in range(n))
                for tc in [sample_train_config(space, s)]]

    shape = {"input_shape": list(splits.info.input_shape), "n_classes": splits.info.n_classes}
    compare("Small CNN Zoo CNN on digits", "cnn", {"channels": 16, "n_layers": 3, "activation": "relu", **shape},
            splits, members("bench-cnn", args.n), args.skip_plain)
    if args.mlp_n:
        compare("MLP on digits", "mlp", {"width": 32, "depth": 2, "activation": "relu", **shape},
                splits, members("bench-mlp", args.mlp_n), args.skip_plain)
    print(f"\nload average at the end {os.getloadavg()} (2 cores shared: absolute times are noisy)")


if __name__ == "__main__":
    main()
