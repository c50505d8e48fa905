"""WeightNet scale benchmark (CPU): prints figures, asserts nothing.

    .venv/bin/python bench/weightnet.py [--threads 2] [--n-digits 600] [--n-train 1000] [--quick]

0. tokenizing an ingested torchvision ResNet-50 (spec inferred from its graph): time and peak memory;
1. prediction time and peak memory for a ResNet-18-size model (11.7M parameters, the zoo's timm
   ``resnet`` with ResNet-18 layers/channels, random weights; default config, every member), split
   into tokenizing (of which the per-layer summary) and the encoder;
2. batched predictions per second on digits CNNs (Small-CNN-Zoo shape, default config: every one of
   its ``ensemble`` members runs), with the encoder's achieved GFLOP/s (torch.utils.flop_counter) and
   the cost of one member alone;
3. one training epoch over 1,000 digits CNNs (random weights and labels), and the default fit
   (all members, bounded by ``max_examples``) projected from it at that size and at 3,000 models.
Timings are wall clock; a 1024x1024 float32 matmul measured in the same run is the baseline, so the
ratios stay meaningful on a shared machine. ``--quick`` (seconds, run by the tests) swaps in a small
ResNet and 16 digits CNNs: its figures only show that every section still runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from weightnet.config import WeightNetConfig  # noqa: E402
from weightnet.data import ZooSample  # noqa: E402
from weightnet.model import WeightNetPredictor  # noqa: E402
from weightnet.network import buckets, collate  # noqa: E402
from weightnet.tokenizers import layer_summary, tokenize  # noqa: E402
from zoo.archs import build  # noqa: E402


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def fitted(cfg: WeightNetConfig, samples: list[ZooSample]) -> WeightNetPredictor:
    """A real predictor (``cfg.ensemble`` members) fitted for one epoch on ``samples`` (same layer layout
    as the models it will time, any width): timing predictions needs its shape, not its accuracy, and the
    public ``fit`` keeps the bench in step with the model."""
    p = WeightNetPredictor(dataclasses.replace(cfg, epochs=1))
    p.fit(samples, [], ["test_accuracy"], seed=0)
    return p


def best_of(n: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def sample(arch: str, config: dict, seed: int, label: float = 0.0) -> ZooSample:
    torch.manual_seed(seed)
    b = build(arch, config)
    return ZooSample(f"{arch}{seed}", f"{arch}{seed}", arch, arch, config, b.spec, b.module.state_dict(),
                     {"test_accuracy": label})


def tokenize_resnet50(cfg: WeightNetConfig, small: bool = False) -> None:
    """An ingested torchvision ResNet-50 (25.6M parameters; its spec inferred from the traced graph, as
    ``zoo ingest torchvision`` stores it): tokenizing it, target < 5 s and < 4 GiB peak RSS on CPU. Runs
    first, so the process peak RSS is this section's (imports included). ``small``: a ResNet-18 instead."""
    name = "resnet18" if small else "resnet50"
    t = time.perf_counter()
    b = build("torchvision", {"name": name, "kwargs": {}, "input_shape": [3, 64, 64], "n_classes": 1000})
    t_build = time.perf_counter() - t
    state = b.module.state_dict()
    t_first = best_of(1, lambda: tokenize(state, b.spec, cfg.tokenizer))
    t_tok = best_of(2, lambda: tokenize(state, b.spec, cfg.tokenizer))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small per-layer ops: on a loaded machine one thread avoids OpenMP spinning
    t_one = best_of(2, lambda: tokenize(state, b.spec, cfg.tokenizer))
    torch.set_num_threads(threads)
    peak = rss_mib()
    print(f"torchvision {name} ({b.spec.n_params / 1e6:.1f}M params, {len(b.spec.groups)} inferred groups; build + "
          f"spec inference {t_build:.1f} s): tokenize {t_tok:.2f} s on {threads} threads, {t_one:.2f} s on 1 thread "
          f"(best of 2; first call {t_first:.2f} s; target < 5 s: {min(t_tok, t_one) / 5:.2f} x target), process peak "
          f"RSS {peak:.0f} MiB (target < 4096: {peak / 4096:.2f} x target)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-digits", type=int, default=600)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds): checks that the bench runs")
    args = ap.parse_args()
    reps = 10
    if args.quick:
        args.n_digits, args.n_train, reps = 16, 16, 1
    torch.set_num_threads(args.threads)
    cfg = WeightNetConfig()
    base = matmul_gflops(reps=reps)
    print(f"baseline: 1024x1024 float32 matmul {base:.1f} GFLOP/s on {args.threads} threads")

    tokenize_resnet50(cfg, small=getattr(args, "quick", False))

    # 1. ResNet-18 size (the baseline is re-measured before each section: the machine is shared)
    narrow = {"input_shape": [3, 16, 16], "n_classes": 1000, "layers": [2, 2, 2, 2], "channels": [4, 8, 16, 32]}
    full = {"input_shape": [3, 224, 224], "n_classes": 1000, "layers": [2, 2, 2, 2], "channels": [64, 128, 256, 512]}
    r18 = sample("resnet", dict(narrow) if args.quick else full, 0)
    p = fitted(cfg, [sample("resnet", narrow, 1), sample("resnet", narrow, 2, label=1.0)])  # small: keeps peak RSS
    before = rss_mib()
    p.predict([ZooSample("warm", "warm", "x", "resnet", {}, r18.spec, r18.state)])  # warm-up (one-off allocations)
    times = []
    for i in range(3):
        p.pipeline._memory.clear()
        t = time.perf_counter()
        p.predict([r18])
        times.append(time.perf_counter() - t)
    t_tok = best_of(3, lambda: tokenize(r18.state, r18.spec, cfg.tokenizer))
    t_sum = best_of(3, lambda: layer_summary(r18.state, r18.spec))
    tok = p.pipeline.one(r18)
    t_enc = best_of(3, lambda: p._predict_tokens([tok], p.runner.handles([r18])))
    print(f"resnet18-size ({r18.spec.n_params / 1e6:.1f}M params, {len(tok)} tokens, {cfg.ensemble} members): "
          f"predict {min(times):.2f} s (best of 3; target < 2 s: {min(times) / 2:.2f} x target; tokenize "
          f"{t_tok:.2f} s of which layer_summary {t_sum:.2f} s, encoder {t_enc:.3f} s; baseline matmul {base:.0f} "
          f"GFLOP/s), peak RSS {rss_mib():.0f} MiB (+{rss_mib() - before:.0f} MiB over the loaded process; target < 2048)")

    # 2. batched predictions on digits CNNs
    base = matmul_gflops(reps=reps)
    cnn_cfg = {"input_shape": [1, 8, 8], "n_classes": 10, "channels": 16, "n_layers": 3}
    cnns = [sample("cnn", cnn_cfg, i) for i in range(args.n_digits)]
    p = fitted(cfg, cnns[:2] + [sample("cnn", cnn_cfg, -1, label=1.0)])
    t = time.perf_counter()
    toks = p.pipeline.many(cnns)
    t_tok = time.perf_counter() - t
    handles = p.runner.handles(cnns)
    t_fwd = best_of(2, lambda: p._predict_tokens(toks, handles, batch_size=256))
    members = p.members
    p.members = members[:1]
    t_one = best_of(2, lambda: p._predict_tokens(toks, handles, batch_size=256))
    p.members = members
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        p.model(collate(toks[:256], p.model.n_summary))
    flops = fc.get_total_flops() / 256 * len(toks) * len(members)
    n = len(cnns)
    rate = n / (t_tok + t_fwd)
    print(f"digits CNNs ({len(toks[0])} tokens each, {len(members)} members): {rate:.0f} predictions/s end to end "
          f"(target >= 300: {rate / 300:.2f} x target; tokenize {n / t_tok:.0f}/s, encoder {n / t_fwd:.0f}/s, one "
          f"member alone {n / t_one:.0f}/s); encoder {flops / t_fwd / 1e9:.1f} GFLOP/s achieved = "
          f"{flops / t_fwd / 1e9 / base:.2f} x baseline matmul ({base:.0f})")

    # 3. one training epoch over n_train digits CNNs
    g = torch.Generator().manual_seed(0)
    more = cnns + [sample("cnn", cnn_cfg, args.n_digits + i) for i in range(max(0, args.n_train - len(cnns)))]
    train = [ZooSample(s.model_id, s.run_id, s.family, s.arch, s.arch_config, s.spec, s.state,
                       {"test_accuracy": float(torch.rand(1, generator=g))}) for s in more[:args.n_train]]
    p = WeightNetPredictor(WeightNetConfig(epochs=1))
    t = time.perf_counter()
    p.pipeline.many(train)
    t_tok = time.perf_counter() - t
    base = matmul_gflops(reps=reps)
    t = time.perf_counter()
    p.fit(train, [], ["test_accuracy"], seed=0)
    t_fit = time.perf_counter() - t
    steps = len(buckets([len(x) for x in p.pipeline.many(train)], p.config.batch_size))
    print(f"training: one epoch over {len(train)} digits CNNs {t_fit:.1f} s ({p.config.ensemble} members x {steps} steps of {p.config.batch_size}; "
          f"tokenizing them first {t_tok:.1f} s, cached per snapshot afterwards; baseline matmul {base:.0f} GFLOP/s)")
    # a default fit is bounded by max_examples per member, whatever the zoo's size: project it from the
    # marginal cost of two more epochs (a fit's fixed costs, rebuilding modules and probe handles, excluded)
    q = WeightNetPredictor(WeightNetConfig(epochs=3), pipeline=p.pipeline)
    t = time.perf_counter()
    q.fit(train, [], ["test_accuracy"], seed=0)
    t_three = time.perf_counter() - t
    per_example = max(t_three - t_fit, 1e-9) / (2 * q.config.ensemble * len(train))
    fixed = max(0.0, t_fit - per_example * q.config.ensemble * len(train))
    for n in (len(train), 3000):
        budget = min(cfg.epochs * n, cfg.max_examples)
        total = fixed + per_example * budget * cfg.ensemble
        print(f"default fit on {n} training models: {cfg.ensemble} members x {budget} examples seen "
              f"(min({cfg.epochs} epochs, max_examples {cfg.max_examples})) ~ {total:.0f} s projected "
              f"({per_example * 1e3:.2f} ms per example from epochs 2-3, {fixed:.1f} s fixed; "
              f"target ~60 s at 3,000: {total / 60:.2f} x target)")


if __name__ == "__main__":
    main()
