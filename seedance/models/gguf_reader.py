"""A GGUF file's metadata and tensor index, read in one pass with `struct` over the memory-mapped file.

`gguf.GGUFReader` builds a numpy view for every part of every metadata value: SmolLM2's 49,152 token strings
and 48,900 merges made it ~9 s of a ~15 s Q8_0 load on the 2-core box (docs/benchmarks.md). This reads the same
layout (GGUF v2/v3, little-endian; anything else goes to `gguf.GGUFReader`) in well under a second, and offers
the part of its interface the loader uses: `fields[name].contents()` and `tensors` with `name`, `shape` (GGUF
order), `tensor_type` and `data` (a read-only view of the file, shaped as `GGUFReader` shapes it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

MAGIC = b"GGUF"
VERSIONS = (2, 3)
# GGUF value types: 8 is a string, 9 an array; the rest are little-endian scalars.
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32, 7: np.bool_,
         10: np.uint64, 11: np.int64, 12: np.float64}
STRING, ARRAY = 8, 9
# Tensor types numpy holds as themselves (as GGUFReader does); every other one is raw blocks of bytes.
NATIVE = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
          GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8, GGMLQuantizationType.I16: np.int16,
          GGMLQuantizationType.I32: np.int32, GGMLQuantizationType.I64: np.int64}


@dataclass(slots=True)
class Field:
    name: str
    value: object  # int / float / bool / str, or a list of them

    def contents(self) -> object:
        return self.value


@dataclass(slots=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # GGUF order: the innermost (row length) first
    tensor_type: GGMLQuantizationType
    data: np.ndarray  # numpy order (rows first); quantized types as uint8 [rows, bytes per row]


class Reader:
    """The parsed header; tensors' data stay in the memory map."""

    def __init__(self, path: str | Path) -> None:
        self.memmap = np.memmap(path, mode="r")
        buf = memoryview(self.memmap)
        if bytes(buf[:4]) != MAGIC:
            raise ValueError("GGUF magic invalid")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in VERSIONS:
            raise NotImplementedError(f"GGUF version {version}")  # or big-endian: left to gguf.GGUFReader
        self._buf, self._off = buf, 24
        self.fields: dict[str, Field] = {}
        for _ in range(n_kv):
            name = self._string()
            (kind,) = self._unpack("<I")
            self.fields[name] = Field(name, self._value(kind))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            (n_dims,) = self._unpack("<I")
            dims = self._unpack(f"<{n_dims}Q")
            kind, offset = self._unpack("<IQ")
            infos.append((name, dims, GGMLQuantizationType(kind), offset))
        align = self.fields.get("general.alignment")
        align = 32 if align is None else int(align.value)
        if align <= 0 or align & (align - 1):
            raise ValueError(f"invalid alignment {align}")
        start = -(-self._off // align) * align
        self.tensors: list[Tensor] = []
        seen: set[str] = set()
        for name, dims, kind, offset in infos:
            if name in seen:
                raise ValueError(f"duplicated tensor {name!r}")
            seen.add(name)
            np_shape = tuple(reversed(dims))
            if kind in NATIVE:
                dtype, count = np.dtype(NATIVE[kind]), int(np.prod(dims))
            else:
                block, size = GGML_QUANT_SIZES[kind]
                if dims[0] % block:
                    raise ValueError(f"tensor {name!r}: row of {dims[0]} is not whole {kind.name} blocks")
                np_shape = (*np_shape[:-1], dims[0] // block * size)
                dtype, count = np.dtype(np.uint8), int(np.prod(np_shape))
            begin = start + offset
            if begin + count * dtype.itemsize > len(self.memmap):
                raise ValueError(f"tensor {name!r} runs past the end of the file")
            data = np.frombuffer(self.memmap, dtype, count, begin).reshape(np_shape)
            self.tensors.append(Tensor(name, tuple(dims), kind, data))
        del self._buf

    def _unpack(self, fmt: str) -> tuple:
        out = struct.unpack_from(fmt, self._buf, self._off)
        self._off += struct.calcsize(fmt)
        return out

    def _string(self) -> str:
        (n,) = struct.unpack_from("<Q", self._buf, self._off)
        start = self._off + 8
        self._off = start + n
        if self._off > len(self._buf):
            raise ValueError("string runs past the end of the file")
        return str(self._buf[start : self._off], "utf-8")

    def _value(self, kind: int) -> object:
        if kind == STRING:
            return self._string()
        if kind == ARRAY:
            item, count = self._unpack("<IQ")
            if item == STRING:
                return [self._string() for _ in range(count)]
            if item in NUMPY:  # numbers: one numpy read for the whole array
                dtype = np.dtype(NUMPY[item]).newbyteorder("<")
                values = np.frombuffer(self._buf, dtype, count, self._off)
                self._off += count * dtype.itemsize
                return values.tolist()
            return [self._value(item) for _ in range(count)]  # arrays of arrays
        fmt = SCALARS.get(kind)
        if fmt is None:
            raise ValueError(f"unknown GGUF value type {kind}")
        return self._unpack("<" + fmt)[0]


def read_gguf(path: str | Path) -> object:
    """Our reader, or `gguf.GGUFReader` for what ours does not read (other versions, big-endian files)."""
    try:
        return Reader(path)
    except NotImplementedError:
        from gguf import GGUFReader

        return GGUFReader(str(path))
