"""Bit-exact tensor <-> bytes codec (float32/float16/bfloat16 and integer buffers).

``pack`` moves many tensors at once into one Arrow ``large_binary`` column whose data buffer is a single
allocation (no per-tensor Python bytes); ``fill`` copies a binary column's rows straight into
preallocated tensors. Together they keep big models within about one copy of their size while they
are written and read.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from core.errors import BadWeights

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}
DTYPE_SIZES = {k: torch.empty((), dtype=v).element_size() for k, v in DTYPES.items()}


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


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _NAMES:
        raise BadWeights(f"unsupported tensor dtype {dtype}")
    return _NAMES[dtype]


def pack(tensors: Sequence[torch.Tensor]) -> pa.LargeBinaryArray:
    """One large_binary array holding each tensor's raw bytes; one copy of the data, no more."""
    sizes = [t.numel() * t.element_size() for t in tensors]
    offsets = np.zeros(len(tensors) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    data = torch.empty(int(offsets[-1]), dtype=torch.uint8)
    for t, begin, n in zip(tensors, offsets[:-1], sizes):
        if n:
            data[int(begin):int(begin) + n] = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(tensors),
                                            [None, pa.py_buffer(offsets), pa.py_buffer(data.numpy())])


def fill(dests: Sequence[torch.Tensor], column: pa.Array, names: Sequence[str]) -> None:
    """Copy row i of a binary / large_binary column straight into ``dests[i]`` (preallocated, contiguous):
    no intermediate tensor, cast or take, so reading needs the destinations plus one batch of bytes."""
    large = pa.types.is_large_binary(column.type)
    _, off_buf, data_buf = column.buffers()
    width = 8 if large else 4
    offsets = np.frombuffer(off_buf, dtype=np.int64 if large else np.int32, count=len(column) + 1,
                            offset=column.offset * width)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    for i, (t, name) in enumerate(zip(dests, names)):
        want = t.numel() * t.element_size()
        begin, end = int(offsets[i]), int(offsets[i + 1])
        if end - begin != want:
            raise BadWeights(f"{name}: {end - begin} bytes stored for shape {tuple(t.shape)} of "
                             f"{dtype_name(t.dtype)} (expected {want})")
        if want:
            t.reshape(-1).view(torch.uint8).numpy()[:] = data[begin:end]


# bit masks of the exponent field: all ones = Inf or NaN (numpy has no bfloat16, so test bits)
_EXP_MASKS = {torch.float16: (torch.int16, 0x7C00), torch.bfloat16: (torch.int16, 0x7F80)}


def all_finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in a floating tensor (integers: always). numpy, single-threaded: much faster than
    torch.isfinite on a loaded machine, and it allocates one byte per element at most."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    t = t.detach().to("cpu").contiguous().reshape(-1)
    if t.dtype in _EXP_MASKS:
        itype, mask = _EXP_MASKS[t.dtype]
        bits = t.view(itype).numpy()
        return not bool(np.any((bits & mask) == mask))
    return bool(np.isfinite(t.numpy()).all())
