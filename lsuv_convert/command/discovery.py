"""Which model files a command line names: files, folders (recursively) and globs.

Kept free of torch/onnx imports: it only looks at names (the registry's extensions; plug-in
modules import their libraries lazily), so that listing a zoo is instant.
"""

from __future__ import annotations

import glob
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ..atomic import is_temporary
from ..errors import LsuvError
from ..formats import directory_format, model_extensions

OUTPUT_MARK = ".lsuv."
OUTPUT_FOLDER_SUFFIX = ".lsuv"  # a folder-format model's output: NAME.lsuv/


@dataclass(frozen=True)
class ModelJob:
    path: Path
    root: Path  # the folder the path was found under (for --output-dir mirroring)

    @property
    def shard_key(self) -> tuple:
        """What ranks this model for ``--shard``, alike on every machine of a job array.

        First its path below the argument that found it; models whose paths there are equal
        (``zooA/ zooB/`` both holding ``m.onnx``; ``a/m.onnx b/m.onnx`` given as files) are told
        apart by their root's folder names read from the innermost out, so a zoo mounted at
        ``/data/zooA`` on one node and ``/mnt/nfs/zooA`` on another ranks alike; the order the shell
        or the file system lists files plays no part. Names are compared in NFC, as a macOS and a
        Linux client of one file server may spell them differently; the path as written comes
        last, only to keep the keys of distinct files distinct.
        """
        try:
            relative = self.path.relative_to(self.root).as_posix()
        except ValueError:
            relative = self.path.as_posix()
        inward = tuple(unicodedata.normalize("NFC", part) for part in reversed(self.root.parts))
        return unicodedata.normalize("NFC", relative), inward, self.path.as_posix()


def is_own_output(path: Path) -> bool:
    """Our outputs (``NAME.lsuv.EXT``, ``NAME.lsuv/``) and our temporary files: never models."""
    return OUTPUT_MARK in path.name or path.name.endswith(OUTPUT_FOLDER_SUFFIX) or is_temporary(path)


def expand(args: list[str]) -> list[ModelJob]:
    """Expand command-line model arguments in order, without duplicates."""
    jobs: list[ModelJob] = []
    seen: set[Path] = set()

    def add(path: Path, root: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            jobs.append(ModelJob(path, root))

    for arg in args:
        path = Path(arg)
        if path.is_dir() and directory_format(path) is not None:
            add(path, path.parent)  # a folder that is one model (Hugging Face)
        elif path.is_dir():
            found = _models_below(path)
            if not found:
                raise LsuvError(f"no model files ({', '.join(sorted(model_extensions()))}) in folder", path=path)
            for p in found:
                add(p, path)
        elif path.exists() or not glob.has_magic(arg):
            add(path, path.parent)  # a missing file is reported by its own job
        else:
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))
            files = [m for m in matches if (m.is_file() or directory_format(m) is not None) and not is_own_output(m)]
            if not files:
                raise LsuvError("pattern matches no model files", path=arg)
            base = _glob_base(arg)
            for m in files:
                add(m, base)
    return jobs


def _glob_base(pattern: str) -> Path:
    """The folders of a pattern before its first wildcard part (``zoo/[ab]/*.onnx`` -> ``zoo``)."""
    parts = Path(pattern).parts
    fixed = next((k for k, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    return Path(*parts[:fixed]) if fixed else Path(".")


def _models_below(folder: Path) -> list[Path]:
    """Model files below ``folder``, and folders that are one model (not searched further)."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or is_own_output(entry):
            continue
        if entry.is_dir():
            if directory_format(entry) is not None:
                found.append(entry)
            elif not entry.is_symlink():  # no walk into linked folders (loops)
                found += _models_below(entry)
        elif _is_model_file(entry):
            found.append(entry)
    return sorted(found)


def _is_model_file(path: Path) -> bool:
    name = path.name.lower()
    return (path.is_file() and name.endswith(model_extensions()) and not is_own_output(path)
            and not path.name.startswith("."))


def mirrored(job: ModelJob, output_dir: Path, output_name: str) -> Path:
    """Output path under ``output_dir`` mirroring the job's place below its root."""
    try:
        rel = job.path.parent.resolve().relative_to(job.root.resolve())
    except ValueError:
        rel = Path()
    return output_dir / rel / output_name
