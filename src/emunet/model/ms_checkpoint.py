"""Import the MindSpore lab's ``.ckpt`` files without MindSpore.

A MindSpore checkpoint is a protobuf ``Checkpoint`` message: repeated ``value`` entries (field 1),
each with a ``tag`` (field 1, the tensor name) and a ``tensor`` (field 2: ``dims`` field 1,
``tensor_type`` field 2 such as "Float32", ``tensor_content`` field 3, raw little-endian bytes).
This module decodes that wire format directly, checking every length against what is left of
the file, so a truncated or oversized field is refused with a clear error instead of read past.
The lab's network tensor names are the project's own (``inc.double_conv.0.weight``, ...), so
the import is a check of names and shapes plus the optimiser state set aside.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from ..errors import CheckpointError
from .unet import UNetConfig

__all__ = ["read_mindspore_checkpoint", "mindspore_network", "OPTIMISER_PREFIXES"]

DTYPES = MappingProxyType({
    "Float16": np.float16, "Float32": np.float32, "Float64": np.float64, "BFloat16": None,
    "Int8": np.int8, "Int16": np.int16, "Int32": np.int32, "Int64": np.int64,
    "UInt8": np.uint8, "UInt16": np.uint16, "UInt32": np.uint32, "UInt64": np.uint64, "Bool": np.bool_,
})
OPTIMISER_PREFIXES = ("moment1.", "moment2.", "accum.", "global_step", "learning_rate", "beta1_power", "beta2_power")
MAX_DIMS = 8


class _Reader:
    """Protobuf wire-format reader over a bytes view, with bounds checks on every read."""

    def __init__(self, data: memoryview, source: Path, what: str) -> None:
        self.data, self.pos, self.source, self.what = data, 0, source, what

    def fail(self, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.source}: not a valid MindSpore checkpoint ({self.what}: {msg})")

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        result, shift = 0, 0
        while True:
            if self.pos >= len(self.data):
                raise self.fail("truncated varint")
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise self.fail("varint longer than 64 bits")

    def bytes_field(self) -> memoryview:
        length = self.varint()
        if length > len(self.data) - self.pos:
            raise self.fail(f"field of {length} bytes runs past the end ({len(self.data) - self.pos} left)")
        out = self.data[self.pos : self.pos + length]
        self.pos += length
        return out

    def skip(self, wire: int) -> None:
        if wire == 0:
            self.varint()
        elif wire == 2:
            self.bytes_field()
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if self.pos + size > len(self.data):
                raise self.fail("truncated fixed-width field")
            self.pos += size
        else:
            raise self.fail(f"unsupported wire type {wire}")

    def fields(self):
        while not self.done():
            key = self.varint()
            yield key >> 3, key & 7


def _tensor(data: memoryview, source: Path, name: str) -> np.ndarray:
    r = _Reader(data, source, f"tensor {name!r}")
    dims: list[int] = []
    dtype_name, content = None, None
    for field, wire in r.fields():
        if field == 1 and wire == 0:
            dims.append(r.varint())
        elif field == 1 and wire == 2:  # packed dims
            packed = _Reader(r.bytes_field(), source, f"tensor {name!r} dims")
            while not packed.done():
                dims.append(packed.varint())
        elif field == 2 and wire == 2:
            dtype_name = bytes(r.bytes_field()).decode("utf-8", "replace")
        elif field == 3 and wire == 2:
            content = r.bytes_field()
        else:
            r.skip(wire)
    if dtype_name is None or content is None:
        raise r.fail("missing tensor_type or tensor_content")
    if dtype_name not in DTYPES or DTYPES[dtype_name] is None:
        raise r.fail(f"unsupported tensor type {dtype_name!r}")
    if len(dims) > MAX_DIMS or any(d > 2**31 for d in dims):
        raise r.fail(f"implausible shape {dims}")
    dtype = np.dtype(DTYPES[dtype_name]).newbyteorder("<")
    count = int(np.prod(dims)) if dims else 1
    if count * dtype.itemsize != len(content):
        raise r.fail(f"{len(content)} bytes of data for shape {dims} of {dtype_name} ({count * dtype.itemsize} expected)")
    return np.frombuffer(content, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def read_mindspore_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """All named tensors of a MindSpore ``.ckpt`` file (network and optimiser state)."""
    path = Path(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) == 0:
        raise CheckpointError(f"{path}: file is empty")
    r = _Reader(data, path, "checkpoint")
    tensors: dict[str, np.ndarray] = {}
    for field, wire in r.fields():
        if field != 1 or wire != 2:
            r.skip(wire)
            continue
        entry = _Reader(r.bytes_field(), path, "value")
        tag, tensor = None, None
        for f2, w2 in entry.fields():
            if f2 == 1 and w2 == 2:
                tag = bytes(entry.bytes_field()).decode("utf-8", "replace")
            elif f2 == 2 and w2 == 2:
                tensor = entry.bytes_field()
            else:
                entry.skip(w2)
        if tag is None or tensor is None:
            raise entry.fail("entry without a name or a tensor")
        if tag in tensors:
            raise entry.fail(f"tensor {tag!r} appears twice")
        tensors[tag] = _tensor(tensor, path, tag)
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found; not a MindSpore checkpoint")
    return tensors


def mindspore_network(path: Path) -> tuple[dict[str, torch.Tensor], UNetConfig, list[str]]:
    """The network tensors of a lab checkpoint (float32), the model config their shapes imply,
    and the names of the optimiser entries set aside. Whether the tensors fit that config is
    checked where they are loaded (``checkpoint.import_mindspore``)."""
    tensors = read_mindspore_checkpoint(path)
    skipped = sorted(k for k in tensors if k.startswith(OPTIMISER_PREFIXES))
    network = {k: v for k, v in tensors.items() if not k.startswith(OPTIMISER_PREFIXES)}
    first, last = network.get("inc.double_conv.0.weight"), network.get("outc.conv.weight")
    if first is None or last is None:
        raise CheckpointError(f"{path}: no inc.double_conv.0.weight / outc.conv.weight; not the lab's unet_medical")
    depth = 0
    while f"down{depth + 1}.maxpool_conv.1.double_conv.0.weight" in network:
        depth += 1
    if depth == 0:
        raise CheckpointError(f"{path}: no down-sampling blocks (down1.*) found")
    cfg = UNetConfig(in_channels=int(first.shape[1]), num_classes=int(last.shape[0]), width=int(first.shape[0]), depth=depth)
    return {k: torch.from_numpy(v.astype(np.float32, copy=False)) for k, v in network.items()}, cfg, skipped
