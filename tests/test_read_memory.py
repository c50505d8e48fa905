"""Reading a big model back needs less than 2x its size in extra memory (issue 19 §5): tensors are
preallocated and filled straight from streamed record batches. The figure itself is printed by
bench/storage.py; this guards the mechanism with the same measurement (process RSS, sampled)."""
from __future__ import annotations

import torch

from bench.storage import measure, nbytes, random_state, resnet18_spec
from storage.lake import Lake
from storage.writes import ModelRecord, read_weights, write_models


def test_reading_a_resnet18_sized_model_stays_under_twice_its_size(lake_dir):
    spec = resnet18_spec()
    state = random_state(spec, torch.Generator().manual_seed(0))
    size = nbytes(state)
    with Lake.open(lake_dir, create=True) as lk:
        write_models(lk, [(ModelRecord("big", "bench", "resnet18-shapes", {}, "none", spec), state)], "big")
    with Lake.open(lake_dir, read_only=True) as lk:
        with measure() as m:
            back = read_weights(lk, ["big"])["big"]
    assert all(torch.equal(back[k].view(torch.uint8).reshape(-1), v.view(torch.uint8).reshape(-1))
               for k, v in state.items() if v.dim())
    assert m["peak_mb"] * 2**20 < 2 * size, f"read peaked at +{m['peak_mb']:.0f} MB for a {size / 2**20:.0f} MB model"
