"""Labeling speed: seconds per model for the full property suite, one model at a time vs batched.

    .venv/bin/python bench/labeling.py [--models 16] [--aa-models 16] [--aa-loop-models 2] [--aa-only]
                                       [--device auto] [--threads 1] [--quick]
    .venv/bin/python bench/labeling.py --families [--lake LAKE] [--family-models 64] [--baseline REV]

``--families`` (issue 12): the benchmark suite's labeling path (``labeling.suite.label_family``: plan, read
weights, label, write, one snapshot per batch) per benchmark family and per suite property, on
``--family-models`` models of each family: the stored models of ``--lake`` (e.g. built by ``zoo build
--suite benchmark --n 32 --family F``), else freshly initialized members (untrained: PGD then attacks
almost nothing, so its figures flatter). Every measurement runs in its own process on a fresh lake
holding copies of those models, after one warm-up (imports, dataset, FLOP counter); ``--baseline REV``
runs the same measurement with the library of git revision REV (``git archive``), family by family
right after the current tree, so both see the same load; ratios are baseline / current.

Trains ``--models`` Small-CNN-Zoo-shaped digits CNNs (the ``cnn`` defaults: 3 conv layers, 16 channels),
then times ``labeling.run.compute_labels`` (no lake I/O) for every property except AutoAttack:
(a) one model per call (the baseline), (b) all models in one batch (skipped with ``--aa-only``). Then
AutoAttack at its defaults (100 examples, 5000 Square queries): batched (``--aa-models`` models in one
run, rows routed by a tag channel, ``labeling.routing``) vs the model-by-model loop
(``AutoAttackParams(batch_models=False)``, the first ``--aa-loop-models`` models), with the mean absolute
difference of their robust accuracies on the models both labeled (other random draws, same quantity).
The corrupted test set is built (and cached) before timing; its one-off cost is printed separately.
Figures on a shared machine are noisy: read the ratios, which are measured in the same run.
Targets (issue 4, 2 cores): all properties but AutoAttack < 2 s/model; AutoAttack < 10 s/model.
``--quick`` (seconds, run by the tests): 2 briefly trained models, 40 test examples for PGD and two
corruptions, AutoAttack on 10 examples with 10 queries; its figures only show that every section runs.
"""
from __future__ import annotations

import argparse
import dataclasses
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
from labeling.registry import replace as replace_property  # noqa: E402
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
    ap.add_argument("--aa-models", type=int, default=16, help="models labeled by one batched AutoAttack call")
    ap.add_argument("--aa-loop-models", type=int, default=2, help="models labeled by the model-by-model loop")
    ap.add_argument("--aa-only", action="store_true", help="skip the other properties")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch's default). 1 is fastest for these tiny models, and 10-20x faster "
                         "than 2 when other processes load the cores (thread spinning)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds): checks that the bench runs")
    ap.add_argument("--families", action="store_true", help="time the benchmark suite's labeling per family")
    ap.add_argument("--lake", help="--families: label copies of this lake's models (default: untrained members)")
    ap.add_argument("--family-models", type=int, default=64, help="--families: models per family")
    ap.add_argument("--only", help="--families: comma-separated families (default: the suite's)")
    ap.add_argument("--baseline", help="--families: also time the library of this git revision")
    args = ap.parse_args()
    if args.families:
        if args.threads:
            torch.set_num_threads(args.threads)
        families_bench(args.lake, 2 if args.quick else args.family_models, args.baseline, args.only, args.quick)
        return
    aa_params: dict = {}
    small: dict[str, dict] = {}  # property -> params overrides
    if args.quick:
        args.models, args.aa_models, args.aa_loop_models, args.epochs = 2, 2, 1, 5
        aa_params = {"n_examples": 10, "n_queries": 10}
        small = {"pgd": {"n_examples": 40},
                 "corruptions": {"n_examples": 40, "corruptions": ("gaussian_noise", "contrast"), "severities": (1, 5)}}
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

    if not args.aa_only:
        other_properties(records, states, device, small)
    if args.aa_models:
        autoattack_bench(records, states, args.aa_models, args.aa_loop_models, device, aa_params)
    if args.quick:  # the families section too (one family, 2 untrained models, tiny PGD)
        families_bench(None, 2, None, None, quick=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def other_properties(records, states, device, small: dict[str, dict] | None = None) -> None:
    splits = load_dataset("digits", 0)
    if not small:
        t = time.perf_counter()
        corrupted_test_set("digits", 0, splits.x_test)  # the corruption property's default: all 360 test images
        print(f"corrupted test set (15 x 5 x {len(splits.y_test)} images) ready in {time.perf_counter() - t:.1f} s "
              f"(made once per dataset and seed, then cached)")
    props = [PROPERTIES.get(n) for n in PROPERTIES.names()
             if n != "autoattack" and PROPERTIES.get(n).applies(splits.info)]
    props = [replace_property(p, params=dataclasses.replace(p.params, **small[p.name])) if p.name in (small or {})
             else p for p in props]
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


def autoattack_bench(records, states, n_batched: int, n_loop: int, device, params: dict | None = None) -> None:
    aa = PROPERTIES.get("autoattack")
    if params:
        aa = replace_property(aa, params=dataclasses.replace(aa.params, **params))
    loop = replace_property(aa, params=dataclasses.replace(aa.params, batch_models=False))
    runs = {}
    for label, prop, recs in (("batched", aa, records[:n_batched]), ("one-by-one", loop, records[:n_loop])):
        if not recs:
            continue
        t = time.perf_counter()
        labels = compute_labels(recs, states, [prop], device)
        runs[label] = ((time.perf_counter() - t) / len(recs), {(x.model_id, x.property): x.value for x in labels})
        print(f"autoattack {label:10s} {runs[label][0]:8.2f} s/model over {len(recs)} models "
              f"({aa.params.n_examples} examples, {aa.params.n_queries} Square queries)")
    if "batched" in runs:
        s = runs["batched"][0]
        print(f"autoattack target < 10 s/model: {'met' if s < 10 else 'MISSED'} (batched, {s:.2f} s/model)")
    if len(runs) == 2:
        (sb, vb), (sl, vl) = runs["batched"], runs["one-by-one"]
        shared = [k for k in vl if k in vb and not k[1].endswith("_clean")]
        diffs = [abs(vb[k] - vl[k]) for k in shared]
        print(f"autoattack batched / one-by-one time ratio {sb / sl:.3f} ({sl / sb:.1f}x faster); robust accuracy "
              f"mean |batched - one-by-one| {sum(diffs) / max(1, len(diffs)):.4f} over {len(diffs)} models "
              f"(values: {[(round(vb[k], 2), round(vl[k], 2)) for k in shared]})")


# --- issue 12: the benchmark suite's labeling path, per family, current tree vs a baseline revision -------
WORKER = r"""
import dataclasses, json, os, sys, time
cfg = json.load(open(sys.argv[1]))
sys.path.insert(0, cfg["root"])
import torch
torch.set_num_threads(cfg["threads"])
import labeling
from core.flops import count_flops
from storage.lake import Lake
from storage.writes import write_models
from zoo.datasets import load_dataset
from labeling.suite import SUITES, label_family

models = torch.load(cfg["models"], weights_only=False)
rec = models[0][0]
load_dataset(rec.dataset, int(rec.train_config.get("data_seed", 0)))
count_flops(torch.nn.Linear(2, 2), torch.zeros(1, 2))  # the FLOP counter's one-off import
suite = SUITES.get("benchmark")
if cfg["label_params"] is not None:
    suite = dataclasses.replace(suite, label_params=tuple((p, tuple(map(tuple, kv))) for p, kv in cfg["label_params"]))
with Lake.open(os.path.join(cfg["dir"], "warm"), create=True) as lake:  # first calls (vmap, autograd) warm up
    write_models(lake, models[:2], "bench warm-up")
    label_family(lake, suite, rec.family, "cpu", 64)
out = {}
for prop in suite.properties:
    with Lake.open(os.path.join(cfg["dir"], prop), create=True) as lake:
        write_models(lake, models, "bench copy")
        t = time.perf_counter()
        n = label_family(lake, dataclasses.replace(suite, properties=(prop,)), rec.family, "cpu", 64)
        out[prop] = (time.perf_counter() - t) / max(1, n)
print("RESULT " + json.dumps(out))
"""


def family_models(lake_path: str | None, family: str, n: int) -> list[tuple[ModelRecord, dict]]:
    """n models of the family: the first n stored in the lake, else untrained members (2 checkpoints each)."""
    if lake_path:
        from storage.lake import Lake
        from storage.writes import read_models, read_weights

        with Lake.open(lake_path, read_only=True) as lake:
            recs = read_models(lake, "family = ?", [family])[:n]
            states = read_weights(lake, [r.model_id for r in recs])
        if len(recs) < n:
            print(f"  {family}: only {len(recs)} models stored in {lake_path}")
        return [(r, states[r.model_id]) for r in recs]
    from zoo.build import checkpoint_id, plan_family, training_run_id
    from zoo.families import FAMILIES
    from zoo.train import init_state

    fam = FAMILIES.get(family)
    out = []
    for p in plan_family(fam, (n + 1) // 2, seed=0):
        b = build(fam.arch, p.arch_config)
        state = init_state(fam.arch, p.arch_config, b.spec, p.train_config, p.seed)
        for epoch in sorted(p.train_config.checkpoints)[:2]:  # two "checkpoints": the init and a shifted copy
            st = state if epoch == min(p.train_config.checkpoints) else {k: v * 1.01 for k, v in state.items()}
            rec = ModelRecord(checkpoint_id(fam.arch, p.arch_config, fam.dataset, p, epoch), family, fam.arch,
                              p.arch_config, fam.dataset, b.spec, p.train_config.identity(), p.seed,
                              run_id=training_run_id(fam.arch, p.arch_config, fam.dataset, p), epoch=epoch,
                              step=0, source="trained")
            out.append((rec, st))
    return out[:n]


def run_worker(root: str, models_file: str, workdir: str, label_params, threads: int) -> dict[str, float]:
    import json
    import subprocess

    cfg = os.path.join(workdir, "cfg.json")
    with open(cfg, "w") as f:
        json.dump({"root": root, "models": models_file, "dir": workdir, "label_params": label_params,
                   "threads": threads}, f)
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", WORKER, cfg], capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"labeling worker ({root}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def baseline_tree(rev: str, dest: str) -> str:
    """The library folders of git revision ``rev`` extracted under ``dest``."""
    import subprocess

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    arch = subprocess.run(["git", "-C", here, "archive", rev, "core", "labeling", "storage", "zoo", "weightnet"],
                          capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=arch, check=True)
    return dest


def families_bench(lake: str | None, n: int, baseline: str | None, only: str | None, quick: bool) -> None:
    from labeling.suite import SUITES

    suite = SUITES.get("benchmark")
    families = only.split(",") if only else ["bench-digits-wild"] if quick else [f for f, _ in suite.families]
    label_params = [["pgd", [["n_examples", 20], ["steps", 2]]]] if quick else None
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    threads = max(1, torch.get_num_threads())
    print(f"labeling the benchmark suite's properties ({', '.join(suite.properties)}) per family, {n} models each, "
          f"{'stored models of ' + lake if lake else 'untrained members'}; {threads} torch thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"current": here}
        if baseline:
            roots = {f"baseline {baseline}": baseline_tree(baseline, os.makedirs(os.path.join(tmp, "base")) or
                                                           os.path.join(tmp, "base")), **roots}
        print(f"{'family':20s} {'tree':18s} {'load':>5s} " + " ".join(f"{p:>12s}" for p in suite.properties)
              + f" {'all s/model':>12s}")
        totals: dict[str, dict[str, float]] = {}
        for fam in families:
            models = family_models(lake, fam, n)
            mfile = os.path.join(tmp, f"{fam}.pt")
            torch.save(models, mfile)
            for name, root in roots.items():
                work = tempfile.mkdtemp(dir=tmp)
                load = os.getloadavg()[0]
                per = run_worker(root, mfile, work, label_params, threads)
                total = sum(per.values())
                totals.setdefault(fam, {})[name] = total
                print(f"{fam:20s} {name:18s} {load:5.1f} " + " ".join(f"{per[p]:12.3f}" for p in suite.properties)
                      + f" {total:12.3f}")
        if baseline:
            base = f"baseline {baseline}"
            print("\nbaseline / current (s/model, all properties):")
            for fam, t in totals.items():
                print(f"  {fam:20s} {t[base]:.3f} / {t['current']:.3f} = {t[base] / t['current']:.1f}x")
        mean = sum(t["current"] for t in totals.values()) / len(totals)
        print(f"current tree: mean {mean:.3f} s/model over the families; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
