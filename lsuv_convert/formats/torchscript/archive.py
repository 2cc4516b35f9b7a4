"""Look inside a ``.pt`` zip before torch touches it.

A TorchScript archive (``torch.jit.save``) is a zip holding ``<name>/code/...``,
``<name>/constants.pkl`` and ``<name>/data.pkl``; a checkpoint written by ``torch.save``
holds ``data.pkl`` but no code. Checkpoints are refused here, never unpickled: loading
one would mean running arbitrary pickle code (``weights_only=False``) and it has no graph
to initialize anyway. The archive's directory and, unless the user trusts the file, every
pickle in it pass :mod:`..shared.archive_guard` (names as torch resolves them, sizes,
weights-only pickle rules plus the archive's own ``__torch__`` classes); its code is parsed
(never run) and its operators judged by :mod:`..shared.operator_policy` (:mod:`.codecheck`).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ModelFormatError

MAX_EXTRA_BYTES = 64 << 20  # extra files are kept in memory and written back with the output

_EXPORT_HINT = (
    "export the model with torch.jit.script(model) or torch.jit.trace(model, example) and torch.jit.save(...)"
)


@dataclass
class ArchiveInfo:
    prefix: str  # the archive's top folder
    version: int | None  # the file format version the writer recorded
    extra_files: list[str] = field(default_factory=list)  # names saved with _extra_files
    uses_torchvision_ops: bool = False  # its code calls ops.torchvision.* (registered by importing torchvision)


def is_torchscript(path: Path) -> bool:
    """Cheap sniff: a zip with a ``code/`` folder and ``constants.pkl``."""
    try:
        with zipfile.ZipFile(path) as zf:
            return _layout(zf.namelist())[1]
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def inspect_archive(path: Path, *, check_code: bool = True) -> ArchiveInfo:
    """The archive's layout, or ModelFormatError saying what the file is instead. With
    ``check_code`` (no --trust-code), its pickles must pass the weights-only rules and its code
    may call only operators the policy allows."""
    from ..shared.archive_guard import check_archive_pickles, open_archive
    from .codecheck import check_archive_code, read_sources

    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except IsADirectoryError:
        raise ModelFormatError("is a folder, not a TorchScript file", path=path) from None
    except OSError as exc:
        raise ModelFormatError(f"cannot read: {exc.strerror or exc}", path=path) from exc
    if head[:1] == b"\x80":
        raise ModelFormatError(
            "is a pickled torch.save checkpoint (legacy format), not TorchScript; lsuv-convert does not "
            f"unpickle checkpoints: {_EXPORT_HINT}",
            path=path,
        )
    if head[:2] != b"PK":
        raise ModelFormatError(f"is not a TorchScript archive (not a zip file, or truncated): {_EXPORT_HINT}", path=path)
    archive = open_archive(path)
    with archive.zf:
        names = list(archive.members)  # as torch compares them: without case
        prefix, scripted = _layout(names)
        if not scripted:
            if prefix is not None and f"{prefix}/data.pkl" in names:
                raise ModelFormatError(
                    "is a torch.save checkpoint (state_dict or pickled model), not a TorchScript archive; "
                    f"lsuv-convert does not unpickle checkpoints: {_EXPORT_HINT}",
                    path=path,
                )
            raise ModelFormatError(f"is a zip file but not a TorchScript archive (no code/ folder): {_EXPORT_HINT}", path=path)
        version = _read_version(archive, prefix)
        _check_extra_size(archive, prefix, path)
        _check_root_object(archive, prefix, path)
        sources = read_sources(archive, prefix, path)
        if check_code:
            check_archive_pickles(archive, torchscript=True)
            check_archive_code(sources, path)
        real_prefix = archive.find(f"{prefix}/data.pkl").filename.split("/", 1)[0]
        extra = sorted(info.filename[len(real_prefix) + len("/extra/"):] for key, info in archive.members.items()
                       if key.startswith(f"{prefix}/extra/") and not info.is_dir())
        torchvision = any("ops.torchvision." in text for text in sources.values())
    return ArchiveInfo(real_prefix, version, extra, torchvision)


def register_library_ops(info: ArchiveInfo) -> None:
    """torchvision's operators (nms, roi_align) exist once torchvision is imported."""
    if info.uses_torchvision_ops:
        try:
            import torchvision.ops  # noqa: F401 - imported to register its operators with torch
        except ImportError:
            pass


def _check_root_object(archive, prefix: str, path: Path) -> None:
    """A TorchScript archive's data.pkl starts by naming its module class (``__torch__.…``); a
    ``torch.save`` pickle put into a TorchScript-shaped zip starts otherwise. Read with
    :mod:`pickletools` (opcodes only, nothing is unpickled)."""
    import io
    import pickletools

    info = archive.find(f"{prefix}/data.pkl")
    if info is None:
        raise ModelFormatError(f"is not a complete TorchScript archive (no data.pkl): {_EXPORT_HINT}", path=path)
    with archive.zf.open(info) as fh:
        head = fh.read(512)
    first = None
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(head)):
            if op.name in ("PROTO", "FRAME"):
                continue
            first = (op.name, arg)
            break
    except (ValueError, EOFError):
        pass
    if first is None or first[0] not in ("GLOBAL", "STACK_GLOBAL") or not str(first[1] or "").startswith("__torch__"):
        raise ModelFormatError(
            "holds a TorchScript-like layout but its data.pkl is an ordinary pickle (a torch.save checkpoint), "
            f"not a TorchScript module; refused without unpickling it: {_EXPORT_HINT}",
            path=path,
        )


def _check_extra_size(archive, prefix: str, path: Path) -> None:
    extra_total = sum(info.file_size for key, info in archive.members.items() if key.startswith(f"{prefix}/extra/"))
    if extra_total > MAX_EXTRA_BYTES:
        raise ModelFormatError(f"its extra files hold {extra_total} bytes, more than the {MAX_EXTRA_BYTES >> 20} MiB "
                               "lsuv-convert carries over to the output; refused", path=path)


def _layout(names: list[str]) -> tuple[str | None, bool]:
    """(root folder, whether it is TorchScript), names compared without case as torch does."""
    from ..shared.archive_guard import torch_key

    keys = [torch_key(n) for n in names]
    prefixes = {n.split("/", 1)[0] for n in keys if "/" in n}
    if len(prefixes) != 1:
        return None, False
    (prefix,) = prefixes
    has_code = any(n.startswith(f"{prefix}/code/") for n in keys)
    return prefix, has_code and f"{prefix}/constants.pkl" in keys


def _read_version(archive, prefix: str) -> int | None:
    for name in (f"{prefix}/.data/version", f"{prefix}/version"):
        if archive.find(name) is not None:
            try:
                return int(archive.read(name, limit=64).decode("ascii").strip())
            except (ValueError, UnicodeDecodeError, ModelFormatError):
                return None
    return None
