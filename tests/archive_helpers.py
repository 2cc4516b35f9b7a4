"""Hostile archives for the trust-boundary tests: payload pickles and rewritten zips.

Every payload creates a marker file when unpickled in full (``open(marker, "w")``), so a test
proves nothing ran by the marker's absence; :func:`payload_pickle` is what an attacker writes.
"""

from __future__ import annotations

import io
import pickle
import stat
import zipfile
from pathlib import Path

import torch


class Payload:
    """Unpickled in full, it creates ``marker`` (pickle calls ``open(marker, "w")``)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payload_pickle(marker: Path, protocol: int = 2) -> bytes:
    return pickle.dumps({"x": Payload(marker)}, protocol=protocol)


def payload_torch_save(marker: Path, *, legacy: bool = False, **tensors) -> bytes:
    buf = io.BytesIO()
    torch.save({"payload": Payload(marker), **tensors}, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def rewrite_zip(source: Path | bytes, dest: Path, *, replace: dict | None = None, add: dict | None = None,
                rename: dict | None = None, drop: tuple = (), symlinks: tuple = ()) -> Path:
    """A copy of the zip ``source`` with members replaced ({name: bytes}), renamed ({old: new}),
    dropped, or added ({name: bytes}, appended in order); ``symlinks`` are added names marked as
    symbolic links."""
    replace, add, rename = replace or {}, add or {}, rename or {}
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            content = replace.get(info.filename, zin.read(info.filename))
            zout.writestr(rename.get(info.filename, info.filename), content)
        for name, content in add.items():
            info = zipfile.ZipInfo(name)
            if name in symlinks:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zout.writestr(info, content)
    return dest


def member(source: Path | bytes, suffix: str) -> str:
    """The one member name of the zip ending with ``suffix``."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        found = [n for n in zf.namelist() if n.endswith(suffix)]
    assert len(found) == 1, (suffix, found)
    return found[0]


def read_member(source: Path | bytes, name: str) -> bytes:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return zf.read(name)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lsuv-convert: error:")]


def assert_refused(proc, marker: Path, *words: str) -> str:
    """Exit 1, exactly one error line and nothing else on stderr, naming ``words``; no marker."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and error_lines(proc.stderr) == lines, proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert not marker.exists(), "the payload ran"
    return lines[0]
