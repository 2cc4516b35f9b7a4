"""What a model file may make us execute: every archive and pickle is read here before torch is.

torch's readers execute what a file asks for in three places: a pickle's globals (a full
unpickle calls any importable function), TorchScript code (compiled and run at load), and a
``.pt2`` program's operators. This module is the one gate in front of all of them:

* :func:`open_archive` opens a zip (``torch.save``, ``torch.jit.save``, ``torch.export.save``)
  and checks its directory the way torch's reader resolves names: torch finds members
  case-insensitively (ASCII), under one root folder, so names that collide when compared that
  way, that leave the root (``..``, absolute paths, backslashes, ``./``), symbolic links,
  encrypted or exotically compressed members and members that expand far more than data does
  (zip bombs) are refused;
* :func:`check_pickle` reads a pickle's opcodes with :mod:`pickletools` (nothing is
  unpickled) under the rules of torch's weights-only unpickler: only the opcodes it accepts,
  and every ``GLOBAL`` / ``REDUCE`` / ``NEWOBJ`` / ``BUILD`` on a global it allows
  (``torch._weights_only_unpickler``'s list plus ``torch.serialization.get_safe_globals()``);
  TorchScript pickles may also name the archive's own ``__torch__`` classes (their code is
  checked by the TorchScript plug-in), never ``torch.classes``;
* :func:`check_torch_save_member` / :func:`check_torch_save_file` apply both to a ``torch.save``
  file, zip or legacy pickle, nested in another archive or not;
* :func:`unpickling_refused` is the second line while torch reads a vetted archive: any full
  unpickle torch would fall back to (``torch.export.load`` does for sample inputs, pickled
  weights and opaque objects) is refused instead.

A refusal is one line naming the member and what it wants; ``--trust-code`` is the only way
past the code checks (never past the structural ones: a zip bomb is no code to trust).
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickletools
import stat
import threading
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ...errors import ModelFormatError

MAX_MEMBERS = 200_000  # a model's archive holds one member per tensor and code file
MAX_DIRECTORY_BYTES = 256 << 20  # the zip's central directory, read whole by zipfile
MAX_EXPANSION = 100  # a compressed member may expand this much (torch's writers store, they don't compress)
MAX_PICKLE_BYTES = 256 << 20  # a data.pkl holds structure, the tensors live in other members
TRUST_HINT = "pass --trust-code to load it anyway"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def torch_key(name: str) -> str:
    """A member name as torch's zip reader (miniz, case-insensitive) compares it."""
    return name.translate(_ASCII_LOWER)


@dataclass
class Archive:
    """A zip whose directory passed the checks; members read by torch's case-insensitive names."""

    zf: zipfile.ZipFile
    where: object  # what messages name: the file's path
    root: str  # the one top folder every member is in
    members: dict[str, zipfile.ZipInfo]  # torch_key(name) -> info

    def find(self, name: str) -> zipfile.ZipInfo | None:
        return self.members.get(torch_key(name))

    def read(self, name: str, limit: int = MAX_PICKLE_BYTES) -> bytes:
        info = self.find(name)
        if info is None:
            raise ModelFormatError(f"archive member {name} is missing", path=self.where)
        return self.read_info(info, limit)

    def read_info(self, info: zipfile.ZipInfo, limit: int = MAX_PICKLE_BYTES) -> bytes:
        if info.file_size > limit:
            raise ModelFormatError(f"archive member {info.filename} is {info.file_size} bytes, more than the "
                                   f"{limit >> 20} MiB such a member may hold; refused", path=self.where)
        try:
            with self.zf.open(info) as fh:
                data = fh.read(limit + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise ModelFormatError(f"archive member {info.filename} cannot be read ({exc}); refused",
                                   path=self.where) from None
        if len(data) > limit:
            raise ModelFormatError(f"archive member {info.filename} expands past its declared size; refused",
                                   path=self.where)
        return data


def open_archive(source: Path | IO[bytes], where: object = None) -> Archive:
    """The zip at ``source`` with its directory checked, or ModelFormatError saying what is wrong."""
    where = where if where is not None else source
    _check_directory_size(source, where)
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ModelFormatError(f"is not a readable zip archive ({exc})", path=where) from None
    except OSError as exc:
        raise ModelFormatError(f"cannot read: {exc.strerror or exc}", path=where) from None
    infos = zf.infolist()
    if not infos:
        raise ModelFormatError("is an empty zip archive", path=where)
    if len(infos) > MAX_MEMBERS:
        raise ModelFormatError(f"is a zip archive of {len(infos)} members (more than {MAX_MEMBERS}); refused",
                               path=where)
    root = torch_key(infos[0].filename).split("/", 1)[0]  # torch takes the first member's folder as the root
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        _check_member(info, root, where)
        key = torch_key(info.filename)
        if key in members:
            other = members[key].filename
            same = "twice" if other == info.filename else f"as {other!r} and {info.filename!r}"
            raise ModelFormatError(f"its zip holds the member {info.filename!r} {same} (torch compares names "
                                   "without case, so which one it reads is undefined); refused", path=where)
        members[key] = info
    return Archive(zf, where, root, members)


def _check_directory_size(source, where: object) -> None:
    """The member count and directory size the zip declares, read from its end record before
    :class:`zipfile.ZipFile` parses (and holds in memory) the whole directory."""
    try:
        with contextlib.ExitStack() as stack:
            fh = source if hasattr(source, "seek") else stack.enter_context(open(source, "rb"))
            end = zipfile._EndRecData(fh)
            if hasattr(source, "seek"):
                source.seek(0)
    except (OSError, AttributeError):
        return  # zipfile says what is wrong with it
    if not end:
        return
    count, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
    if count > MAX_MEMBERS or size > MAX_DIRECTORY_BYTES:
        raise ModelFormatError(f"is a zip archive of {count} members ({size} bytes of directory), more than the "
                               f"{MAX_MEMBERS} members a model archive may hold; refused", path=where)


def _check_member(info: zipfile.ZipInfo, root: str, where: object) -> None:
    name = info.filename
    parts = name.split("/")
    if info.is_dir():
        parts = parts[:-1]
    bad = None
    if "\\" in name or "\0" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        bad = "an absolute or Windows-style path"
    elif any(p in ("", ".", "..") for p in parts):
        bad = "a path with '.', '..' or an empty folder name"
    elif len(parts) < 2 and not info.is_dir() or torch_key(parts[0]) != root:
        bad = f"outside the archive's root folder {root!r}"
    elif stat.S_ISLNK(info.external_attr >> 16):
        bad = "a symbolic link"
    elif info.flag_bits & 0x1:
        bad = "encrypted"
    elif info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        bad = f"compressed with method {info.compress_type}, which torch cannot read"
    elif info.file_size > (1 << 20) and info.file_size > MAX_EXPANSION * max(info.compress_size, 1):
        raise ModelFormatError(f"archive member {name} expands from {info.compress_size} to {info.file_size} "
                               "bytes (a zip bomb?); refused", path=where)
    if bad:
        raise ModelFormatError(f"archive member {name!r} is {bad}; refused", path=where)


# ---------------------------------------------------------------------------------------------
# pickles

@dataclass(frozen=True)
class _Global:
    name: str


@dataclass(frozen=True)
class _Made:
    name: str  # the allowed global that built it


@dataclass(frozen=True)
class _Text:
    value: str


@dataclass(frozen=True)
class _Tuple:
    items: tuple


_OTHER = object()

# exactly what torch._weights_only_unpickler.Unpickler.load accepts
_WEIGHTS_ONLY_OPCODES = frozenset("""
GLOBAL NEWOBJ REDUCE BUILD APPEND APPENDS SETITEM SETITEMS MARK TUPLE TUPLE1 TUPLE2 TUPLE3 NONE NEWFALSE NEWTRUE
EMPTY_TUPLE EMPTY_LIST EMPTY_DICT EMPTY_SET BININT BININT1 BININT2 BINFLOAT BINUNICODE SHORT_BINSTRING BINPERSID
BINGET LONG_BINGET BINPUT LONG_BINPUT LONG1 PROTO STOP
""".split())


# TorchScript pickles are read by torch's own C++ unpickler, which resolves no Python global: data
# opcodes beyond the weights-only set are harmless there (globals and calls stay checked)
_TORCHSCRIPT_DATA_OPCODES = frozenset("""
SHORT_BINUNICODE BINUNICODE8 SHORT_BINBYTES BINBYTES BINBYTES8 BINSTRING FRAME MEMOIZE LONG4 ADDITEMS
""".split())


class PickleRefused(Exception):
    """What a pickle wants that the rules refuse (the text names it)."""


def allowed_globals() -> frozenset[str]:
    """The globals torch's weights-only unpickler builds (and the process's safe globals)."""
    from torch import _weights_only_unpickler as wo

    return frozenset(wo._get_allowed_globals()) | frozenset(wo._get_user_allowed_globals())


def _global_allowed(name: str, allowed: frozenset[str], torchscript: bool) -> bool:
    if name in allowed:
        return True
    if torchscript:
        # TorchScript's own (C++) unpickler: the archive's classes, whose code is checked with the
        # archive, and its typed-container helpers; never a custom C++ class
        if name.startswith("__torch__.") and not name.startswith("__torch__.torch.classes."):
            return True
        return name.startswith("torch.jit._pickle.")
    return False


def scan_pickle(data: bytes, *, torchscript: bool = False, stream: IO[bytes] | None = None) -> None:
    """Raise :class:`PickleRefused` unless the pickle (``data``, or the next one of ``stream``)
    would be built by torch's weights-only unpickler calling only allowed globals."""
    from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

    allowed = allowed_globals()
    stack: list = []
    marks: list[list] = []
    memo: dict[int, object] = {}

    def pop():
        if not stack:
            raise PickleRefused("a malformed pickle (stack underflow)")
        return stack.pop()

    def pop_mark() -> list:
        nonlocal stack
        if not marks:
            raise PickleRefused("a malformed pickle (no MARK)")
        items, stack = stack, marks.pop()
        return items

    source = stream if stream is not None else io.BytesIO(data)
    try:
        for opcode, arg, _ in pickletools.genops(source):
            op = opcode.name
            if op not in _WEIGHTS_ONLY_OPCODES and not (torchscript and op in _TORCHSCRIPT_DATA_OPCODES):
                raise PickleRefused(f"pickle opcode {op}, which torch's weights-only unpickler does not accept")
            if op == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                if (module, name) in NAME_MAPPING:
                    module, name = NAME_MAPPING[(module, name)]
                elif module in IMPORT_MAPPING:
                    module = IMPORT_MAPPING[module]
                full = f"{module}.{name}"
                if not _global_allowed(full, allowed, torchscript):
                    raise PickleRefused(f"the global {full}")
                stack.append(_Global(full))
            elif op in ("REDUCE", "NEWOBJ"):
                pop()  # the arguments
                func = pop()
                if not isinstance(func, _Global):
                    raise PickleRefused(f"{op} on a value that is not an allowed global")
                stack.append(_Made(func.name))
            elif op == "BUILD":
                pop()
                if not stack or not isinstance(stack[-1], _Made):
                    raise PickleRefused("BUILD on an object that no allowed global made")
            elif op in ("APPEND", "SETITEM"):
                pop()
                if op == "SETITEM":
                    pop()
                if not stack:
                    raise PickleRefused("a malformed pickle (stack underflow)")
            elif op in ("APPENDS", "SETITEMS"):
                pop_mark()
                if not stack:
                    raise PickleRefused("a malformed pickle (stack underflow)")
            elif op == "MARK":
                marks.append(stack)
                stack = []
            elif op == "TUPLE":
                items = pop_mark()  # rebinds ``stack``: take the items before appending
                stack.append(_Tuple(tuple(items)))
            elif op in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(op[-1])
                items = [pop() for _ in range(n)][::-1]
                stack.append(_Tuple(tuple(items)))
            elif op == "MEMOIZE":
                if not stack:
                    raise PickleRefused("a malformed pickle (stack underflow)")
                memo[len(memo)] = stack[-1]
            elif op == "FRAME":
                continue
            elif op == "ADDITEMS":
                pop_mark()
                if not stack:
                    raise PickleRefused("a malformed pickle (stack underflow)")
            elif op in ("BINUNICODE", "SHORT_BINSTRING", "SHORT_BINUNICODE", "BINUNICODE8", "BINSTRING"):
                value = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
                stack.append(_Text(value))
            elif op == "BINPERSID":
                pid = pop()
                if not (isinstance(pid, _Tuple) and pid.items and pid.items[0] == _Text("storage")):
                    raise PickleRefused("a persistent id that is not a storage")
                stack.append(_OTHER)
            elif op in ("BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise PickleRefused("a malformed pickle (memo key missing)")
                stack.append(memo[arg])
            elif op in ("BINPUT", "LONG_BINPUT"):
                if not stack:
                    raise PickleRefused("a malformed pickle (stack underflow)")
                memo[arg] = stack[-1]
            elif op in ("PROTO",):
                continue
            elif op == "STOP":
                return
            else:  # NONE, booleans, numbers, empty containers
                stack.append(_OTHER)
    except PickleRefused:
        raise
    except (ValueError, EOFError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise PickleRefused(f"a malformed pickle ({exc})") from None
    raise PickleRefused("a truncated pickle (no STOP)")


def check_pickle(data: bytes, member: str, where: object, *, torchscript: bool = False) -> None:
    """ModelFormatError naming ``member`` and what its pickle wants, unless the rules allow it."""
    try:
        scan_pickle(data, torchscript=torchscript)
    except PickleRefused as exc:
        raise ModelFormatError(_pickle_refusal(member, str(exc)), path=where) from None


def _pickle_refusal(member: str, what: str) -> str:
    return (f"its pickle {member} wants {what}; torch's weights-only rules refuse it, and lsuv-convert "
            f"never unpickles it in full (it could run any code): refused, nothing ran ({TRUST_HINT})")


def pickle_members(archive: Archive) -> list[zipfile.ZipInfo]:
    """Members that torch reads as pickles: ``*.pkl`` (``data.pkl``, ``constants.pkl``, debug info)."""
    return [info for key, info in archive.members.items()
            if not info.is_dir() and (key.endswith(".pkl") or key.endswith(".debug_pkl"))]


def check_archive_pickles(archive: Archive, *, torchscript: bool = False) -> None:
    """Every pickle of a checked archive, under the weights-only rules."""
    for info in pickle_members(archive):
        check_pickle(archive.read_info(info), info.filename, archive.where, torchscript=torchscript)


_LEGACY_PICKLES = 5  # magic number, protocol version, system info, the object, its storage keys


def check_torch_save_member(archive: Archive, info: zipfile.ZipInfo) -> None:
    """A ``torch.save`` payload stored as a member of ``archive`` (a ``.pt2``'s sample inputs,
    pickled weights, legacy weight files), read in place: only its pickles are read, however
    large its tensors are."""
    try:
        with archive.zf.open(info) as fh:
            check_torch_save_stream(fh, info.filename, archive.where)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise ModelFormatError(f"archive member {info.filename} cannot be read ({exc}); refused",
                               path=archive.where) from None


def check_torch_save_stream(fh: IO[bytes], member: str, where: object) -> None:
    head = fh.read(2)
    fh.seek(0)
    if head == b"PK":
        nested = open_archive(fh, where=where)
        with nested.zf:
            for info in pickle_members(nested):
                check_pickle(nested.read_info(info), f"{member}:{info.filename}", where)
        return
    if head[:1] == b"\x80":
        _check_legacy(fh, member, where)
        return
    raise ModelFormatError(f"its member {member} is neither a torch.save zip nor a pickle; refused", path=where)


def _check_legacy(stream: IO[bytes], member: str, where: object) -> None:
    """torch.save's legacy format: five pickles in a row, then raw storage bytes."""
    for _ in range(_LEGACY_PICKLES):
        try:
            scan_pickle(b"", stream=stream)
        except PickleRefused as exc:
            raise ModelFormatError(_pickle_refusal(member, str(exc)), path=where) from None


def check_torch_save_file(path: Path, *, trust_code: bool = False) -> None:
    """Gate for a ``torch.save`` file (``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``, e.g. a Hugging Face
    ``pytorch_model.bin`` shard) before ``torch.load``: its zip directory, and unless
    ``trust_code`` every pickle in it under the weights-only rules."""
    with open(path, "rb") as fh:
        head = fh.read(2)
        if head[:1] == b"\x80":
            if not trust_code:
                fh.seek(0)
                _check_legacy(fh, path.name, path)
            return
    archive = open_archive(path)
    try:
        if not trust_code:
            for info in pickle_members(archive):
                check_pickle(archive.read_info(info), info.filename, path)
    finally:
        archive.zf.close()


# ---------------------------------------------------------------------------------------------
# while torch reads a vetted archive

_PATCH_LOCK = threading.RLock()


class UnvettedUnpickle(Exception):
    """torch was about to unpickle something in full."""


@contextlib.contextmanager
def unpickling_refused(what: str):
    """While torch reads an archive this module vetted: ``torch.load`` runs with
    ``weights_only=True`` whatever its caller asks, and the full unpicklers ``torch.export``
    falls back to (``pickle.loads``, ``torch._C._pickle_load_obj``) refuse; torch's own log
    lines (a logged traceback of the refused fallback) are kept off stderr."""
    import torch

    real_load = torch.load

    def refuse(*_args, **_kwargs):
        raise UnvettedUnpickle(f"torch would unpickle {what} in full")

    def weights_only_load(*args, **kwargs):
        asked = kwargs.get("weights_only")
        kwargs["weights_only"] = True
        try:
            return real_load(*args, **kwargs)
        except Exception:  # torch's own refusal, or a damaged payload
            if asked is True:
                raise  # the caller's own weights-only attempt: it falls back, which is refused below
            refuse()

    patches = [(torch, "load", weights_only_load), (torch._C, "_pickle_load_obj", refuse)]
    try:
        from torch.export.pt2_archive import _package

        patches.append((_package, "pickle", _NoPickle(refuse)))
    except ImportError:
        pass
    with _PATCH_LOCK, quiet_torch_logs():
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches if hasattr(owner, name)]
        try:
            for owner, name, value in patches:
                setattr(owner, name, value)
            yield
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)


class _NoPickle:
    """Stands for the :mod:`pickle` module inside torch's archive reader: no ``loads``."""

    def __init__(self, refuse):
        self.loads = refuse
        self.load = refuse

    def __getattr__(self, name):
        import pickle

        return getattr(pickle, name)


@contextlib.contextmanager
def quiet_torch_logs():
    """No log record and no Python warning is emitted while inside: torch's loggers (a logged
    traceback of a refused fallback) and warnings would put their lines beside our one error line."""
    saved = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(saved)
