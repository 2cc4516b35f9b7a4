"""Which model files a command line names: files, folders (recursively) and globs.

Kept free of torch/onnx imports: it only looks at names (the registry's extensions; plug-in
modules import their libraries lazily), so that listing a zoo is instant.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from .atomic import is_temporary
from .errors import LsuvError
from .formats import model_extensions

OUTPUT_MARK = ".lsuv."


@dataclass(frozen=True)
class ModelJob:
    path: Path
    root: Path  # the folder the path was found under (for --output-dir mirroring)


def is_own_output(path: Path) -> bool:
    """Our outputs (``NAME.lsuv.EXT``) and our temporary files: never models."""
    return OUTPUT_MARK in path.name or is_temporary(path)


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
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_model_file(p))
            if not found:
                raise LsuvError(f"no model files ({', '.join(sorted(model_extensions()))}) in folder", path=path)
            for p in found:
                add(p, path)
        elif path.exists() or not glob.has_magic(arg):
            add(path, path.parent)  # a missing file is reported by its own job
        else:
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))
            files = [m for m in matches if m.is_file() and not is_own_output(m) and not is_temporary(m)]
            if not files:
                raise LsuvError("pattern matches no model files", path=arg)
            base = Path(arg.split("*")[0].rsplit("/", 1)[0] if "/" in arg.split("*")[0] else ".")
            for m in files:
                add(m, base)
    return jobs


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
