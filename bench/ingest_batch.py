"""Batch file ingest: N weight files one call (and one snapshot) each vs one `ingest_many` call with
``--batch-size`` models per snapshot, both in this process and this run, so the ratio holds on a loaded
machine. A CLI call per file also pays the process start-up (~5-7 s here), which this does not count.

    .venv/bin/python bench/ingest_batch.py [--files 160] [--batch-size 32] [--quick]
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from storage.files import state_to_safetensors  # noqa: E402
from storage.lake import Lake  # noqa: E402
from zoo.archs import build  # noqa: E402
from zoo.ingest import ingest_file  # noqa: E402
from zoo.ingest_batch import collect, ingest_many  # noqa: E402

MLP = {"input_shape": [1, 8, 8], "n_classes": 10, "width": 32, "depth": 2}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--single", type=int, default=20, help="files ingested one call each (extrapolated to --files)")
    ap.add_argument("--quick", action="store_true", help="seconds: 8 files, 4 single calls")
    args = ap.parse_args(argv)
    if args.quick:
        args.files, args.single, args.batch_size = 8, 4, 4
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp) / "models"
        folder.mkdir()
        for i in range(args.files):
            torch.manual_seed(i)
            state_to_safetensors(build("mlp", MLP).module.state_dict(), folder / f"m{i:04d}.safetensors")
        files = sorted(folder.iterdir())
        with Lake.open(pathlib.Path(tmp) / "single", create=True) as lk:
            t = time.perf_counter()
            for f in files[:args.single]:
                ingest_file(lk, f, "mlp", MLP)
            per_file = (time.perf_counter() - t) / args.single
        with Lake.open(pathlib.Path(tmp) / "batch", create=True) as lk:
            t = time.perf_counter()
            report = ingest_many(lk, collect([str(folder)], "mlp", MLP), batch_size=args.batch_size)
            batch = time.perf_counter() - t
        assert len(report.stored) == args.files and not report.failed
    single_total = per_file * args.files
    print(f"{args.files} files of {sum(p.numel() for p in build('mlp', MLP).module.parameters())} parameters")
    print(f"one call per file : {per_file * 1000:8.1f} ms/file -> {single_total:7.2f} s "
          f"(measured on {args.single}, {args.files} snapshots)")
    print(f"ingest_many       : {batch / args.files * 1000:8.1f} ms/file -> {batch:7.2f} s "
          f"({len(report.snapshots)} snapshots of <= {args.batch_size})")
    print(f"speed-up          : {single_total / batch:8.1f}x (same process, same run)")


if __name__ == "__main__":
    main()
