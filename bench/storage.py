"""Store benchmark (issue 2 §5): 1,000 models of ~5k parameters and one ResNet-18-sized model (~11.7M).

Prints models/s, MB/s and peak extra memory (process RSS sampled every 5 ms, minus the RSS just before
the step) next to the targets, plus a baseline measured in the same run (the same bytes written to
and read from a plain file) so figures taken on a loaded machine can be compared as ratios.

    .venv/bin/python bench/storage.py [--quick] [--small 1000] [--lake DIR]

``--quick`` (seconds): 50 small models; the ResNet-18-sized model is kept, since its read-memory
figure (< 2x its size: reads stream in bounded groups straight into preallocated tensors) is the point.
"""
from __future__ import annotations

import argparse
import gc
import os
import pathlib
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import psutil
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from core.spec import ParamSpec, WeightSpec  # noqa: E402
from storage.lake import Lake  # noqa: E402
from storage.writes import ModelRecord, read_weights, write_models  # noqa: E402
from zoo.archs import build  # noqa: E402

TARGET_SMALL_S = 10.0  # 1,000 small models written in under 10 s
TARGET_BIG_S = 3.0  # the 11M model written, and read back, in under 3 s each
TARGET_BIG_MEM = 2.0  # with less than 2x its size in extra memory


@contextmanager
def measure() -> Iterator[dict]:
    """{'s': seconds, 'peak_mb': peak RSS above the RSS at entry} of the block."""
    proc, out, stop = psutil.Process(), {}, threading.Event()
    gc.collect()
    base = proc.memory_info().rss
    peak = [base]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t0
        stop.set()
        th.join()
        out["peak_mb"] = (max(peak[0], proc.memory_info().rss) - base) / 2**20


def resnet18_spec() -> WeightSpec:
    """ResNet-18's state-dict shapes (torchvision naming), without torchvision."""
    params: list[ParamSpec] = []

    def conv(name: str, o: int, i: int, k: int, layer: int) -> None:
        params.append(ParamSpec(f"{name}.weight", (o, i, k, k), "conv", "weight", layer, (None,) * 4))

    def bn(name: str, c: int, layer: int) -> None:
        for p, role in (("weight", "weight"), ("bias", "bias"), ("running_mean", "buffer"), ("running_var", "buffer")):
            params.append(ParamSpec(f"{name}.{p}", (c,), "norm", role, layer, (None,)))
        params.append(ParamSpec(f"{name}.num_batches_tracked", (), "buffer", "buffer", layer, ()))

    conv("conv1", 64, 3, 7, 0)
    bn("bn1", 64, 0)
    depth, cin = 1, 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            pre, stride_in = f"layer{stage}.{block}", cin if block == 0 else cout
            conv(f"{pre}.conv1", cout, stride_in, 3, depth)
            bn(f"{pre}.bn1", cout, depth)
            conv(f"{pre}.conv2", cout, cout, 3, depth + 1)
            bn(f"{pre}.bn2", cout, depth + 1)
            if block == 0 and stage > 1:
                conv(f"{pre}.downsample.0", cout, stride_in, 1, depth)
                bn(f"{pre}.downsample.1", cout, depth)
            depth += 2
        cin = cout
    params.append(ParamSpec("fc.weight", (1000, 512), "linear", "weight", depth, (None, None)))
    params.append(ParamSpec("fc.bias", (1000,), "linear", "bias", depth, (None,)))
    return WeightSpec(tuple(params))


def random_state(spec: WeightSpec, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {p.name: (torch.randn(p.shape, generator=g) if p.shape else torch.tensor(0, dtype=torch.int64))
            for p in spec.params}


def nbytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def baseline(states: list[dict[str, torch.Tensor]], folder: pathlib.Path) -> tuple[float, float]:
    """Seconds to write and read the same raw bytes as one plain file (fsync'd): the disk's own speed."""
    path = folder / "baseline.bin"
    with measure() as w:
        with open(path, "wb") as fh:
            for s in states:
                for t in s.values():
                    fh.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            fh.flush()
            os.fsync(fh.fileno())
    with measure() as r:
        path.read_bytes()
    path.unlink()
    return w["s"], r["s"]


def row(what: str, seconds: float, mb: float, count: int, target: str, ok: bool, extra: str = "") -> None:
    print(f"{what:<34} {seconds:8.2f} s {count / seconds:10.1f} models/s {mb / seconds:9.1f} MB/s  "
          f"target {target:<22} {'OK' if ok else 'MISSED'} {extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1000, help="how many ~5k-parameter models")
    ap.add_argument("--lake", default=None, help="lake location (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="50 small models (seconds)")
    args = ap.parse_args()
    if args.quick:
        args.small = min(args.small, 50)
    torch.set_num_threads(2)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    location = args.lake or str(tmp / "lake")
    g = torch.Generator().manual_seed(0)
    print(f"store benchmark: lake {location}, {os.cpu_count()} CPUs (shared: figures are measured under load)")

    # --- 1,000 small models: the cnn architecture's shapes (4,970 parameters) ------------------------
    cfg = {"input_shape": [1, 8, 8], "n_classes": 10}
    spec = build("cnn", cfg).spec
    small = [(ModelRecord(f"bench-small-{i:05d}", "bench", "cnn", cfg, "digits", spec, seed=i), random_state(spec, g))
             for i in range(args.small)]
    small_mb = sum(nbytes(s) for _, s in small) / 2**20
    base_w, base_r = baseline([s for _, s in small], tmp)
    with Lake.open(location, create=True) as lk:
        with measure() as w:
            write_models(lk, small, "bench: small models")
        with measure() as r:
            back = read_weights(lk, [rec.model_id for rec, _ in small])
        assert all(torch.equal(back[rec.model_id][k], v) for rec, s in small[:20] for k, v in s.items())
        del back
        with measure() as w100:  # the same volume in batches of 100 (ten snapshots), as a build would
            for b in range(0, len(small), 100):
                write_models(lk, [(ModelRecord(r.model_id + "-b", r.family, r.arch, r.arch_config, r.dataset, r.spec,
                                               seed=r.seed), s) for r, s in small[b:b + 100]], f"bench: batch {b}")
    print(f"\n{len(small)} models x {spec.n_params} parameters ({small_mb:.1f} MB); "
          f"baseline plain file: write {base_w:.3f} s, read {base_r:.3f} s")
    row("write (one batch)", w["s"], small_mb, len(small), f"< {TARGET_SMALL_S:g} s", w["s"] < TARGET_SMALL_S,
        f"x{w['s'] / base_w:.1f} baseline, peak +{w['peak_mb']:.0f} MB")
    row("write (batches of 100)", w100["s"], small_mb, len(small), f"< {TARGET_SMALL_S:g} s",
        w100["s"] < TARGET_SMALL_S, f"x{w100['s'] / base_w:.1f} baseline")
    row("read back", r["s"], small_mb, len(small), "(none)", True, f"x{r['s'] / base_r:.1f} baseline")
    del small
    gc.collect()

    # --- one ResNet-18-sized model ---------------------------------------------------------------------
    rspec = resnet18_spec()
    state = random_state(rspec, g)
    size_mb = nbytes(state) / 2**20
    rec = ModelRecord("bench-resnet18", "bench", "resnet18-shapes", {"input_shape": [3, 224, 224], "n_classes": 1000},
                      "none", rspec)
    base_w, base_r = baseline([state], tmp)
    with Lake.open(location) as lk:
        with measure() as w:
            write_models(lk, [(rec, state)], "bench: resnet18-sized model")
        with measure() as r:
            back = read_weights(lk, [rec.model_id])[rec.model_id]
    assert all(torch.equal(back[k], v) for k, v in state.items())
    print(f"\nResNet-18-sized model: {rspec.n_params:,} parameters, {size_mb:.1f} MB; "
          f"baseline plain file: write {base_w:.3f} s, read {base_r:.3f} s")
    for what, m, base in (("write", w, base_w), ("read back", r, base_r)):
        ok_t, ok_m = m["s"] < TARGET_BIG_S, m["peak_mb"] < TARGET_BIG_MEM * size_mb
        row(what, m["s"], size_mb, 1, f"< {TARGET_BIG_S:g} s, < {TARGET_BIG_MEM:g}x mem", ok_t and ok_m,
            f"x{m['s'] / base:.1f} baseline, peak +{m['peak_mb']:.0f} MB = {m['peak_mb'] / size_mb:.2f}x its size")


if __name__ == "__main__":
    main()
