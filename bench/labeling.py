"""Labeling speed: seconds per model for the full property suite, one model at a time vs batched.

    .venv/bin/python bench/labeling.py [--models 16] [--aa-models 2] [--device auto] [--threads 1]

Trains ``--models`` Small-CNN-Zoo-shaped digits CNNs (the ``cnn`` defaults: 3 conv layers, 16 channels),
then times ``labeling.run.compute_labels`` (no lake I/O) for every property except AutoAttack:
(a) one model per call (the baseline), (b) all models in one batch; then AutoAttack at its defaults
(100 examples, 5000 Square queries) on ``--aa-models`` models. The corrupted test set is built (and
cached) before timing; its one-off cost is printed separately. Figures on a shared machine are noisy:
read the batched/one-by-one ratio, which is measured in the same run.
Targets (issue 4, 2 cores): all properties but AutoAttack < 2 s/model; AutoAttack < 10 s/model.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labeling  # noqa: E402,F401
from core.hashing import stable_hash  # noqa: E402
from labeling.corruptions import corrupted_test_set  # noqa: E402
from labeling.registry import PROPERTIES  # noqa: E402
from labeling.run import compute_labels, resolve_device  # noqa: E402
from storage.writes import ModelRecord  # noqa: E402
from zoo.archs import build  # noqa: E402
from zoo.datasets import load_dataset  # noqa: E402


def train(n: int, epochs: int) -> list[tuple[ModelRecord, dict]]:
    splits = load_dataset("digits", 0)
    config = {"input_shape": [1, 8, 8], "n_classes": 10}
    out = []
    for seed in range(n):
        torch.manual_seed(seed)  # bench only: module init uses the global RNG
        built = build("cnn", config)
        opt = torch.optim.Adam(built.module.parameters(), lr=0.01)
        for _ in range(epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(built.module(splits.x_train), splits.y_train).backward()
            opt.step()
        train_config = {"epochs": epochs, "data_seed": 0}
        mid = stable_hash({"bench": "labeling", "seed": seed, "train": train_config})
        rec = ModelRecord(mid, "digits-cnn", "cnn", config, "digits", built.spec, train_config, seed)
        out.append((rec, {k: v.detach().clone() for k, v in built.module.state_dict().items()}))
    return out


def timed(records, states, props, device) -> tuple[float, dict[str, float]]:
    per_prop: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    for p in props:
        t = time.perf_counter()
        compute_labels(records, states, [p], device)
        per_prop[p.name] += time.perf_counter() - t
    return time.perf_counter() - t0, per_prop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--aa-models", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch's default). 1 is fastest for these tiny models, and 10-20x faster "
                         "than 2 when other processes load the cores (thread spinning)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("ZOO_CACHE", os.path.join(tempfile.gettempdir(), "zoo-bench-cache"))
    device = resolve_device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores (measured under that load)")

    t = time.perf_counter()
    models = train(args.models, args.epochs)
    print(f"trained {len(models)} digits CNNs ({models[0][0].n_params} params) in {time.perf_counter() - t:.1f} s")
    records = [r for r, _ in models]
    states = {r.model_id: s for r, s in models}

    splits = load_dataset("digits", 0)
    t = time.perf_counter()
    corrupted_test_set("digits", 0, splits.x_test)  # the corruption property's default: all 360 test images
    print(f"corrupted test set (15 x 5 x {len(splits.y_test)} images) ready in {time.perf_counter() - t:.1f} s "
          f"(made once per dataset and seed, then cached)")

    props = [PROPERTIES.get(n) for n in PROPERTIES.names() if n != "autoattack" and PROPERTIES.get(n).applies(splits.info)]
    print("properties:", ", ".join(p.name for p in props))
    one_total, one_prop = 0.0, defaultdict(float)
    for r in records:
        dt, per = timed([r], states, props, device)
        one_total += dt
        for k, v in per.items():
            one_prop[k] += v
    batched_total, batched_prop = timed(records, states, props, device)
    n = len(records)
    print(f"\n{'property':14s} {'one-by-one s/model':>20s} {'batched s/model':>16s} {'ratio':>7s}")
    for p in props:
        a, b = one_prop[p.name] / n, batched_prop[p.name] / n
        print(f"{p.name:14s} {a:20.3f} {b:16.3f} {b / a:7.2f}")
    a, b = one_total / n, batched_total / n
    print(f"{'ALL but AA':14s} {a:20.3f} {b:16.3f} {b / a:7.2f}   target < 2 s/model: "
          f"{'met' if b < 2 else 'MISSED'} (batched)")

    if args.aa_models:
        aa = PROPERTIES.get("autoattack")
        t = time.perf_counter()
        compute_labels(records[:args.aa_models], states, [aa], device)
        s = (time.perf_counter() - t) / args.aa_models
        print(f"{'autoattack':14s} {s:20.3f} {'(per model)':>16s}          target < 10 s/model: "
              f"{'met' if s < 10 else 'MISSED'} ({aa.params.n_examples} examples, {aa.params.n_queries} Square queries)")


if __name__ == "__main__":
    main()
