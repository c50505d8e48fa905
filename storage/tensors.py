"""Bit-exact tensor <-> bytes codec (float32/float16/bfloat16 and integer buffers)."""
from __future__ import annotations

import torch

from core.errors import BadWeights

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}


def encode(t: torch.Tensor) -> tuple[str, list[int], bytes]:
    """(dtype name, shape, raw little-endian bytes). bfloat16 goes through a uint8 view: no rounding."""
    if t.dtype not in _NAMES:
        raise BadWeights(f"unsupported tensor dtype {t.dtype}")
    t = t.detach().to("cpu").contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return _NAMES[t.dtype], list(t.shape), raw


def decode(dtype: str, shape: list[int] | tuple[int, ...], raw: bytes, name: str = "tensor") -> torch.Tensor:
    if dtype not in DTYPES:
        raise BadWeights(f"{name}: unknown dtype {dtype!r}")
    dt = DTYPES[dtype]
    n = 1
    for s in shape:
        n *= int(s)
    itemsize = torch.empty((), dtype=dt).element_size()
    if len(raw) != n * itemsize:
        raise BadWeights(f"{name}: {len(raw)} bytes stored for shape {tuple(shape)} of {dtype} (expected {n * itemsize})")
    if n == 0:
        return torch.empty(tuple(int(s) for s in shape), dtype=dt)
    buf = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return buf.view(dt).reshape(tuple(int(s) for s in shape))
