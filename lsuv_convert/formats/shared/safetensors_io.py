"""safetensors files in and out, with the tool's provenance in their ``__metadata__``.

Shared by the state_dict and Hugging Face plug-ins (plug-ins import no other plug-in).
safetensors holds only tensors and a string-to-string metadata map: reading one runs no code.
The provenance entries (``lsuv_convert.*`` keys) sit beside the file's own metadata, which is
kept as it was; they change nothing a loader computes with.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from ...errors import ModelFormatError

PROVENANCE_PREFIX = "lsuv_convert."


def is_safetensors(path: Path) -> bool:
    """8-byte little-endian header size, then a JSON object."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] < 100_000_000


def read_safetensors(path: Path, where: Path | None = None) -> tuple[dict, dict[str, str]]:
    """(tensors by key in file order, metadata); ``where`` is the path errors name."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        name = "" if where is None else f"{path.name} "
        raise ModelFormatError(f"{name}is not a readable safetensors file: {exc}", path=where or path) from None
    return tensors, metadata


def write_safetensors(tensors: dict, path: Path, metadata: dict[str, str], provenance: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=with_provenance(metadata, provenance))
    _sort_metadata(path)


def _sort_metadata(path: Path) -> None:
    """Rewrite the header with ``__metadata__`` in sorted order, in the same number of bytes:
    safetensors writes that map in a random order per process (a Rust HashMap), which would make
    two runs of the same conversion differ in bytes."""
    with open(path, "r+b") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        raw = fh.read(size)
        header = json.loads(raw)
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict) or len(metadata) < 2:
            return
        ordered = {"__metadata__": dict(sorted(metadata.items()))}
        ordered.update((k, v) for k, v in header.items() if k != "__metadata__")
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size and json.loads(text) == header:
            fh.seek(8)
            fh.write(text + b" " * (size - len(text)))


def with_provenance(metadata: dict[str, str], provenance: dict) -> dict[str, str]:
    """The file's metadata with the tool's provenance entries (string values) replaced."""
    out = {k: v for k, v in metadata.items() if not k.startswith(PROVENANCE_PREFIX)}
    for key, value in provenance.items():
        out[PROVENANCE_PREFIX + key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


def provenance_of(metadata: dict[str, str]) -> dict:
    """The provenance entries of safetensors metadata, JSON values decoded."""
    out = {}
    for key, value in metadata.items():
        if key.startswith(PROVENANCE_PREFIX):
            try:
                out[key[len(PROVENANCE_PREFIX):]] = json.loads(value)
            except (ValueError, RecursionError):  # not ours, or nested past any reason: kept as text
                out[key[len(PROVENANCE_PREFIX):]] = value
    return out


# ---- streaming: one tensor at a time in, the source's layout out ----------------------------------

DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
          "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
          "F8_E5M2": "float8_e5m2"}
_COPY_CHUNK = 64 << 20  # bytes per read/write when a tensor's bytes are copied as they are


def read_header(path: Path) -> tuple[dict, int]:
    """(the safetensors header: ``{key: {dtype, shape, data_offsets}}`` plus ``__metadata__``, the
    offset where the data starts). Reads only the header's bytes."""
    try:
        with open(path, "rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelFormatError(f"{path.name} is not a readable safetensors file: {exc}", path=path) from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path.name} is not a readable safetensors file: its header is not an object", path=path)
    return header, 8 + size


class SafetensorsSource:
    """Tensors read one at a time from safetensors files with ``safe_open``, memory-mapped: a
    tensor's pages are read when it is used. The file is opened for each tensor and closed right
    away, so that the mapping lives exactly as long as the tensor: a handle kept open would keep
    every page ever read resident (and counted in the process's memory) until it closed.
    ``where`` maps a name the caller uses (a model entry) to (file, key in the file)."""

    def __init__(self, where: dict[str, tuple[Path, str]]):
        self.where = where

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def read(self, name: str):
        from safetensors import safe_open

        path, key = self.where[name]
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return handle.get_tensor(key)


class StreamingSafetensorsWriter:
    """A safetensors file written tensor by tensor in the layout of ``source``: the same keys,
    dtypes, shapes and data offsets, so the header is written first, from what is known up front
    (``source``'s header, its metadata with the tool's provenance). Tensors given to :meth:`write`
    land at their offset, in the file's dtype; :meth:`copy_rest` copies every other tensor's bytes
    from ``source`` as they are. ``path`` is a temporary of the caller's (atomic writes)."""

    def __init__(self, source: Path, path: Path, provenance: dict):
        self.source, self.path = source, path
        header, self._source_start = read_header(source)
        metadata = header.pop("__metadata__", None) or {}
        self.entries = header
        out = {"__metadata__": with_provenance(dict(metadata), provenance)} if (metadata or provenance) else {}
        out.update(header)
        raw = json.dumps(out, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self.start = 8 + len(raw)
        end = max((e["data_offsets"][1] for e in header.values()), default=0)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self._fd, struct.pack("<Q", len(raw)) + raw, 0)
        os.ftruncate(self._fd, self.start + end)
        self.written: set[str] = set()

    def _entry(self, key: str) -> dict:
        entry = self.entries.get(key)
        if entry is None:
            raise KeyError(f"{key} is not a tensor of {self.source.name}")
        return entry

    def write(self, key: str, tensor) -> None:
        """``tensor``'s values at ``key``'s place, converted to the file's dtype."""
        import torch

        entry = self._entry(key)
        dtype = getattr(torch, DTYPES[entry["dtype"]])
        if list(tensor.shape) != list(entry["shape"]):
            raise ValueError(f"{key}: shape {tuple(tensor.shape)}, the file has {tuple(entry['shape'])}")
        data = tensor.detach().to(device="cpu", dtype=dtype).contiguous().reshape(-1).view(torch.uint8).numpy()
        begin, end = entry["data_offsets"]
        if data.nbytes != end - begin:
            raise ValueError(f"{key}: {data.nbytes} bytes, the file has {end - begin}")
        _pwrite_all(self._fd, memoryview(data), self.start + begin)
        self.written.add(key)

    def read_back(self, key: str):
        import torch

        entry = self._entry(key)
        begin, end = entry["data_offsets"]
        raw = bytearray(os.pread(self._fd, end - begin, self.start + begin))
        dtype = getattr(torch, DTYPES[entry["dtype"]])
        return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(entry["shape"]) if raw else \
            torch.empty(entry["shape"], dtype=dtype)

    def copy_rest(self) -> None:
        """Every tensor not written, copied byte for byte from the source."""
        with open(self.source, "rb") as src:
            for key, entry in self.entries.items():
                if key in self.written:
                    continue
                begin, end = entry["data_offsets"]
                for at in range(begin, end, _COPY_CHUNK):
                    size = min(_COPY_CHUNK, end - at)
                    chunk = os.pread(src.fileno(), size, self._source_start + at)
                    if len(chunk) != size:
                        raise ModelFormatError(f"{self.source.name} ends inside tensor {key}", path=self.source)
                    _pwrite_all(self._fd, memoryview(chunk), self.start + at)

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    data = data.cast("B")
    while data:
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


class SafetensorsStream:
    """A model stored in safetensors files, streamed: the engine's :class:`TensorSource` (by model
    entry) and, once :meth:`open`, its sink, which writes every file of the output in its source's
    layout (:class:`StreamingSafetensorsWriter`).

    ``files``: file name -> source path; ``where``: model entry -> the (file name, key) places it is
    stored at (a tied tensor may be stored under several keys; the first is read). ``staging(out)``
    is a context manager that yields ``{file name: temporary path}`` and, on a clean exit, puts the
    output in place (a plug-in's atomic write); on an exception it removes the temporaries.
    """

    def __init__(self, files: dict[str, Path], where: dict[str, list[tuple[str, str]]], staging):
        self.files, self.where, self.staging = files, where, staging
        self.source = SafetensorsSource({name: (files[places[0][0]], places[0][1]) for name, places in where.items()})
        self._staged = None
        self.writers: dict[str, StreamingSafetensorsWriter] = {}

    def open(self, out: Path, provenance: dict) -> "SafetensorsStream":
        """Start the output ``out``: headers written, tensors to come. Returns the sink (itself)."""
        self._staged = self.staging(out)
        paths = self._staged.__enter__()
        for name, source in self.files.items():
            self.writers[name] = StreamingSafetensorsWriter(source, paths[name], provenance)
        return self

    def write(self, name: str, tensor) -> None:
        for file, key in self.where.get(name, []):
            self.writers[file].write(key, tensor)

    def read_back(self, name: str):
        file, key = self.where[name][0]
        return self.writers[file].read_back(key)

    def commit(self) -> None:
        """The tensors not written copied from the sources, the files synced, the output put in place."""
        if self._staged is None:
            raise RuntimeError("the streamed output was never opened")
        for writer in self.writers.values():
            writer.copy_rest()
            writer.close()
        staged, self._staged = self._staged, None
        staged.__exit__(None, None, None)

    def discard(self) -> None:
        """Drop an output not committed (a refused or failed run): its temporaries go."""
        for writer in self.writers.values():
            writer.discard()
        staged, self._staged = self._staged, None
        if staged is not None:
            staged.__exit__(_Discarded, _Discarded(), None)


class _Discarded(Exception):
    """Thrown into a staging context to make it remove its temporaries."""
