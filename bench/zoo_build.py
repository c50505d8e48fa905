"""Plain per-model loop vs population training on the same members, in one run.

    .venv/bin/python bench/zoo_build.py --threads 2            # 256 CNN + 256 MLP members, 20 epochs
    .venv/bin/python bench/zoo_build.py --quick                # seconds: tiny sizes, checks it runs

Members are sampled from the digits-cnn / digits-mlp families' spaces (own seed, init, lr, l2, optimizer,
dropout, label noise; the MLP also its batch size 32/64/128), with the full train split by default
(``--fractions`` samples data fractions 0.1-1 as the families do). All ``--n`` members train as ONE
population; the plain loop trains a sample of them (``--plain-n``, the first ones) and its s/model
is that sample's mean. Printed per architecture: s/model both ways, the speedup, achieved GFLOP/s
(nominal conv/linear MACs x 6 per example seen), a short dense ``torch.mm`` probe's GFLOP/s at the same
thread count with the population's fraction of it, and the sampled members' test accuracy both ways.
Timings on a shared machine are noisy: compare the ratios, which are measured in the same run.
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

from zoo.archs import build  # noqa: E402
from zoo.datasets import load_dataset  # noqa: E402
from zoo.families import FAMILIES  # noqa: E402
from zoo.population import Member, Population, train_population  # noqa: E402
from zoo.sampling import member_seed, sample_train_config  # noqa: E402
from zoo.train import accuracy, last_epoch, member_data, train_plain  # noqa: E402


def forward_macs(arch: str, cfg: dict) -> int:
    """Multiply-accumulates of one forward pass of one example (conv and linear layers, padding taps
    included: the textbook count, not what a kernel skips or adds)."""
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


def matmul_gflops(seconds: float = 1.0, size: int = 1024) -> float:
    """Dense float32 ``torch.mm`` throughput at the current thread count (median of short repeats:
    under the same load as the training it is compared with)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def matmul_shapes(arch: str, cfg: dict, batch: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of each member's forward matmuls in one population step (zoo.population_archs' kernels:
    CNN layer 1 as row-im2col, later layers as dense per-member matrices; MLP layers as they are)."""
    k = cfg["n_classes"]
    if arch == "mlp":
        widths = [math.prod(cfg["input_shape"])] + [cfg["width"]] * cfg["depth"] + [k]
        return [(batch, a, b) for a, b in zip(widths, widths[1:])]
    ci, hh, ww = cfg["input_shape"]
    out = []
    for i in range(cfg["n_layers"]):
        co, ho, wo = cfg["channels"], (hh + 1) // 2, (ww + 1) // 2
        out.append((batch * ho, 3 * ww * ci, wo * co) if i == 0 else (batch, hh * ww * ci, ho * wo * co))
        ci, hh, ww = co, ho, wo
    return out + [(batch, ci, k)]


def bmm_ceiling(shapes: list[tuple[int, int, int]], members: int, seconds: float) -> float:
    """GFLOP/s of the population's own forward matmuls alone (one ``torch.bmm`` per layer over all
    members, nothing else): the most the step could reach if everything but these matmuls were free."""
    ops = [(torch.randn(members, m, kk), torch.randn(members, kk, n)) for m, kk, n in shapes]
    flops = sum(2 * members * m * kk * n for m, kk, n in shapes)
    for a, b in ops:
        torch.bmm(a, b)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        for a, b in ops:
            torch.bmm(a, b)
        times.append(time.perf_counter() - t)
    return flops / statistics.median(times) / 1e9


def compare(label: str, arch: str, cfg: dict, splits, members: list[Member], plain_n: int,
            probe: tuple[float, int]) -> dict:
    macs = forward_macs(arch, cfg)
    seen = [len(member_data(splits.y_train, splits.info.n_classes, m.train_config, m.seed).indices)
            * last_epoch(m.train_config) for m in members]
    flops = [6 * macs * s for s in seen]  # forward 2*MACs, backward twice that
    spec = build(arch, cfg).spec
    batches = sorted({m.train_config.batch_size for m in members})
    print(f"\n== {label}: {arch} {spec.n_params} params, {len(members)} members in one population, "
          f"{last_epoch(members[0].train_config)} epochs, batch sizes {batches}")
    print(f"   training cost: {statistics.mean(flops) / 1e9:.3f} GFLOP per model on average ({macs} MACs per example)")

    warm = [Member(dataclasses.replace(m.train_config, epochs=1, checkpoints=(1,)), m.seed) for m in members[:2]]
    train_population(Population(arch, cfg, warm), splits)  # first calls (kernel selection, allocator) untimed
    train_plain(arch, cfg, spec, splits, warm[0].train_config, warm[0].seed)
    # the plain-loop sample is split around the population run, so load drifting during the run
    # weighs on both sides alike
    sample, half = members[:plain_n], (plain_n + 1) // 2
    t = time.perf_counter()
    plain_cps = [train_plain(arch, cfg, spec, splits, m.train_config, m.seed) for m in sample[:half]]
    t_before = time.perf_counter() - t
    mm = matmul_gflops(*probe)  # right before the population: under the load it runs in
    batch = max(m.train_config.batch_size for m in members)
    ceiling = bmm_ceiling(matmul_shapes(arch, cfg, batch), len(members), probe[0] / 2)
    t = time.perf_counter()
    pop_cps = train_population(Population(arch, cfg, members), splits)
    t_pop = time.perf_counter() - t
    pop_gf = sum(flops) / t_pop / 1e9
    print(f"   population: {t_pop / len(members):.4f} s/model ({t_pop:.1f} s), {pop_gf:.2f} GFLOP/s achieved, "
          f"{100 * pop_gf / mm:.1f}% of the torch.mm probe ({probe[1]}x{probe[1]} float32, "
          f"{torch.get_num_threads()} threads, median: {mm:.1f} GFLOP/s)")
    print(f"   ceiling: the population's own forward matmuls alone (torch.bmm, {len(members)} members, batch {batch}, "
          f"shapes (M, K, N) {matmul_shapes(arch, cfg, batch)}) run at {ceiling:.1f} GFLOP/s = "
          f"{100 * ceiling / mm:.1f}% of the torch.mm probe; the population reaches {100 * pop_gf / ceiling:.1f}% of that")
    t = time.perf_counter()
    plain_cps += [train_plain(arch, cfg, spec, splits, m.train_config, m.seed) for m in sample[half:]]
    t_after = time.perf_counter() - t
    t_plain = t_before + t_after
    plain_gf = sum(flops[:plain_n]) / t_plain / 1e9
    speedup = (t_plain / plain_n) / (t_pop / len(members))
    print(f"   plain loop: {t_plain / plain_n:.4f} s/model (sample of {plain_n}: {t_before / half:.4f} before the "
          f"population, {t_after / max(1, plain_n - half):.4f} after), {plain_gf:.2f} GFLOP/s achieved")
    print(f"   speedup population vs plain: {speedup:.2f}x")
    acc = lambda cps: [accuracy(arch, cfg, c[-1].state, splits.x_test, splits.y_test) for c in cps]
    a_plain, a_pop = acc(plain_cps), acc(pop_cps[:plain_n])
    print(f"   test accuracy of the sampled members: plain mean {statistics.mean(a_plain):.4f}, population mean "
          f"{statistics.mean(a_pop):.4f}, same-member mean |diff| "
          f"{statistics.mean(abs(a - b) for a, b in zip(a_plain, a_pop)):.4f} (dropout masks differ by design)")
    return {"pop_s_per_model": t_pop / len(members), "plain_s_per_model": t_plain / plain_n, "speedup": speedup,
            "pop_gflops": pop_gf, "mm_gflops": mm, "mm_fraction": pop_gf / mm, "bmm_ceiling_gflops": ceiling}


def members(family: str, n: int, seed: int, epochs: int, full_data: bool) -> list[Member]:
    fam = FAMILIES.get(family)
    space = dataclasses.replace(fam.space, epochs=epochs, **({"train_fractions": (1.0,)} if full_data else {}))
    return [Member(sample_train_config(space, s), s) for s in (member_seed(family, i, seed) for i in range(n))]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="CNN population members")
    ap.add_argument("--mlp-n", type=int, default=256, help="MLP population members (0 to skip)")
    ap.add_argument("--plain-n", type=int, default=8, help="members also trained with the plain loop")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fractions", action="store_true", help="sampled data fractions 0.1-1 (default: full data)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds): checks that the bench runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.mlp_n, args.plain_n, args.epochs = 8, 8, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    splits = load_dataset("digits", 0)
    probe = (0.3, 256) if args.quick else (2.0, 1024)
    shape = {"input_shape": list(splits.info.input_shape), "n_classes": splits.info.n_classes}
    out = {"cnn": compare("digits-cnn members (Small CNN Zoo CNN)", "cnn",
                          {"channels": 16, "n_layers": 3, "activation": "relu", **shape}, splits,
                          members("digits-cnn", args.n, args.seed, args.epochs, not args.fractions), args.plain_n, probe)}
    if args.mlp_n:
        out["mlp"] = compare("digits-mlp members", "mlp", {**FAMILIES.get("digits-mlp").arch_config, **shape}, splits,
                             members("digits-mlp", args.mlp_n, args.seed, args.epochs, not args.fractions),
                             args.plain_n, probe)
    print(f"\nload average at the end {os.getloadavg()} (shared machine: absolute times are noisy, ratios are "
          "measured in the same run)")
    return out


if __name__ == "__main__":
    main()
