"""Weight files from disk or the hub: safetensors only, checked before anything is allocated.

A safetensors file is ``u64 little-endian header length N | N bytes of JSON header | data``; the header
maps each tensor name to ``{dtype, shape, data_offsets: [begin, end]}`` relative to the data start.
``state_from_safetensors`` checks every declared size against the file's real size and against
``FileLimits`` first, so a truncated file, a corrupt header or an absurd declared shape is refused
with ``BadWeights`` naming the file, and a hostile file cannot make us allocate more than it holds.
safetensors involve no pickle at all. Torch checkpoints (``zoo ingest file``) are pickles: before
torch's weights-only restricted unpickler sees one, ``check_torch_checkpoint`` checks the zip archive's
declared sizes against ``FileLimits`` and refuses the legacy (pre-zip) format, whose storage sizes torch
would allocate from the pickle before reading any data.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct
import zipfile
from dataclasses import dataclass
from typing import Mapping

import torch

from core.errors import BadWeights

# safetensors dtype code -> (torch dtype, bytes per element)
ST_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}


@dataclass(frozen=True)
class FileLimits:
    """Refuse files beyond these before reading their data (override for very large models)."""

    max_header_bytes: int = 100 * 2**20  # safetensors itself caps the header at 100 MB
    max_file_bytes: int = 32 * 2**30  # the file on disk, checked before opening it
    max_tensor_bytes: int = 8 * 2**30  # one tensor
    max_total_bytes: int = 32 * 2**30  # the whole file
    max_tensors: int = 100_000


DEFAULT_LIMITS = FileLimits()


def read_header(path: str | os.PathLike, limits: FileLimits = DEFAULT_LIMITS) -> tuple[dict, int]:
    """(tensor entries by name, data start offset) after checking every size in the header."""
    path = pathlib.Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BadWeights(f"{path}: cannot read weight file ({e.strerror or e})") from None
    if size > limits.max_file_bytes:
        raise BadWeights(f"{path}: {size} bytes exceeds the limit of {limits.max_file_bytes}")
    if size < 8:
        raise BadWeights(f"{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > limits.max_header_bytes:
            raise BadWeights(f"{path}: declared header of {n} bytes exceeds the limit of {limits.max_header_bytes}")
        if 8 + n > size:
            raise BadWeights(f"{path}: truncated (header declares {n} bytes, file has {size - 8} after the length)")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadWeights(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise BadWeights(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise BadWeights(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    if len(header) > limits.max_tensors:
        raise BadWeights(f"{path}: {len(header)} tensors exceed the limit of {limits.max_tensors}")
    data_size = size - 8 - n
    spans = []
    for name, entry in header.items():
        begin, end = _check_entry(path, name, entry, limits)
        if end > data_size:
            raise BadWeights(f"{path}: truncated: tensor {name!r} ends at byte {end} of a {data_size}-byte data section")
        spans.append((begin, end, name))
    total = sum(e - b for b, e, _ in spans)
    if total > limits.max_total_bytes:
        raise BadWeights(f"{path}: {total} bytes of tensors exceed the limit of {limits.max_total_bytes}")
    spans.sort()
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise BadWeights(f"{path}: tensors {n0!r} and {n1!r} overlap in the file")
    return {k: header[k] for k in _order(meta, header)}, 8 + n


ORDER_KEY = "zoo.order"  # metadata entry: the state dict's key order as a JSON list (safetensors sorts)


def _order(meta: dict | None, header: dict) -> list[str]:
    """Tensor names in state-dict order when the file records it, else in file (data offset) order."""
    try:
        order = json.loads((meta or {}).get(ORDER_KEY, "null"))
    except json.JSONDecodeError:
        order = None
    if isinstance(order, list) and sorted(order) == sorted(header):
        return order
    return sorted(header, key=lambda k: header[k]["data_offsets"][0])


def _check_entry(path: pathlib.Path, name: str, entry: object, limits: FileLimits) -> tuple[int, int]:
    if not isinstance(entry, dict):
        raise BadWeights(f"{path}: header entry {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in ST_DTYPES:
        raise BadWeights(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise BadWeights(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            or offsets[1] < offsets[0]):
        raise BadWeights(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    numel = 1
    for s in shape:
        numel *= s
    nbytes = numel * ST_DTYPES[dtype][1]
    if nbytes > limits.max_tensor_bytes:
        raise BadWeights(f"{path}: tensor {name!r} declares shape {tuple(shape)} ({nbytes} bytes), "
                         f"over the limit of {limits.max_tensor_bytes}")
    if offsets[1] - offsets[0] != nbytes:
        raise BadWeights(f"{path}: tensor {name!r} of shape {tuple(shape)} {dtype} needs {nbytes} bytes, "
                         f"the file gives it {offsets[1] - offsets[0]}")
    return offsets[0], offsets[1]


def state_from_safetensors(path: str | os.PathLike, limits: FileLimits = DEFAULT_LIMITS) -> dict[str, torch.Tensor]:
    """A state dict (file order) from a safetensors file, bit-exact; refuses bad files with ``BadWeights``."""
    header, start = read_header(path, limits)
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as fh:
        for name, entry in header.items():
            dt, _ = ST_DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            fh.seek(start + begin)
            buf = bytearray(end - begin)
            if fh.readinto(buf) != len(buf):
                raise BadWeights(f"{path}: truncated while reading tensor {name!r}")
            shape = tuple(entry["shape"])
            out[name] = (torch.frombuffer(buf, dtype=torch.uint8).view(dt).reshape(shape) if buf
                         else torch.empty(shape, dtype=dt))
    return out


def state_to_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                         metadata: Mapping[str, str] | None = None) -> None:
    """Write a state dict as safetensors (written to a temporary name, then renamed: never half a file)."""
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    meta = {**(metadata or {}), ORDER_KEY: json.dumps(list(state))}
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


PICKLE_PROTOCOL_2 = b"\x80"  # the first byte of a pickle (protocol >= 2): legacy torch.save files start so


def check_torch_checkpoint(path: str | os.PathLike, limits: FileLimits = DEFAULT_LIMITS) -> None:
    """Refuse a torch checkpoint whose declared sizes exceed ``limits``, before anything is unpickled.

    A zip checkpoint (torch >= 1.6) lists every storage record with its size in the archive directory:
    the record count bounds the tensor count (tensors share storages, never the reverse), each record the
    bytes of one tensor, their sum the total, and the pickle itself is held to the header limit.
    """
    p = pathlib.Path(path)
    size = p.stat().st_size
    if size > limits.max_file_bytes:
        raise BadWeights(f"{p}: {size} bytes exceeds the file limit of {limits.max_file_bytes}")
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as fh:
            legacy = fh.read(1) == PICKLE_PROTOCOL_2
        raise BadWeights(f"{p}: " + ("a legacy (pre-1.6) torch checkpoint: its sizes cannot be checked before "
                                     "loading; re-save it with torch.save or convert it to safetensors" if legacy
                                     else "not a torch checkpoint (no zip archive)"))
    try:
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise BadWeights(f"{p}: corrupt torch checkpoint archive ({e})") from None
    storages = [i for i in infos if "/data/" in i.filename and not i.filename.endswith("/")]
    pickles = [i for i in infos if i.filename.endswith(".pkl")]
    if not pickles:
        raise BadWeights(f"{p}: not a torch checkpoint (no pickle in the archive)")
    if len(storages) > limits.max_tensors:
        raise BadWeights(f"{p}: {len(storages)} storages exceed the limit of {limits.max_tensors} tensors")
    big = max(storages, key=lambda i: i.file_size, default=None)
    if big is not None and big.file_size > limits.max_tensor_bytes:
        raise BadWeights(f"{p}: record {big.filename!r} declares {big.file_size} bytes, over the per-tensor limit "
                         f"of {limits.max_tensor_bytes}")
    total = sum(i.file_size for i in storages)
    if total > limits.max_total_bytes:
        raise BadWeights(f"{p}: storages declare {total} bytes, over the limit of {limits.max_total_bytes}")
    pkl = max(i.file_size for i in pickles)
    if pkl > limits.max_header_bytes:
        raise BadWeights(f"{p}: its pickle declares {pkl} bytes, over the header limit of {limits.max_header_bytes}")
