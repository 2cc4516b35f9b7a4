"""What every format plug-in shares: naming of outputs and checking a batch against inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError, ModelFormatError
from ..graph import InputSpec, ModelGraph


class ModelFormat:
    """Base class of format plug-ins (see :mod:`lsuv_convert.formats` for the contract)."""

    name: str = ""
    extensions: tuple[str, ...] = ()
    output_extension: str = ""  # "" means: same as the input's

    def sniff(self, path: Path) -> bool:  # pragma: no cover - every format overrides
        raise NotImplementedError

    def load(self, path: Path, *, weights: Path | None = None) -> ModelGraph:  # pragma: no cover
        raise NotImplementedError

    def save(self, graph: ModelGraph, out_path: Path) -> None:  # pragma: no cover
        raise NotImplementedError

    def prepare(self, graph: ModelGraph, inputs: list[Any]) -> None:
        """Check the batch (list of tensors, one per input) fits the model before any work.

        Formats extend this, e.g. ONNX compares its torch graph against onnxruntime here.
        """
        check_inputs(graph.inputs, inputs, graph.source)

    def measure(self, model_path: Path, weights_path: Path, inputs: list[Any], names: list[str]) -> dict[str, tuple[float, float]]:
        """Per target layer (by source name): (variance, mean) of its output, computed by the
        format's own runtime on a written file. Used by ``lsuv-convert verify``."""
        raise NotImplementedError(f"{self.name} has no independent runtime to verify with")

    def in_place_output(self, path: Path, weights: Path | None) -> Path:
        """Where ``--in-place`` writes: over the model file itself."""
        return path

    def written_pair(self, path: Path, weights: Path | None) -> tuple[Path, Path | None]:
        """(model definition, weights file) to verify, given what the user named.

        Formats whose output is a separate weights file (Caffe) accept that file and find
        the definition beside it: ``NAME.lsuv.caffemodel`` -> ``NAME.prototxt``.
        """
        ext = self.output_extension
        if ext and ext not in self.extensions and path.name.lower().endswith(ext):
            stem = path.name[: -len(ext)]
            stem = stem[: -len(".lsuv")] if stem.endswith(".lsuv") else stem
            for model_ext in self.extensions:
                candidate = path.with_name(stem + model_ext)
                if candidate.is_file():
                    return candidate, path
            raise ModelFormatError(f"no model definition ({stem}{self.extensions[0]}) beside the weights file", path=path)
        return path, weights

    def default_output(self, path: Path) -> Path:
        """``NAME.lsuv.EXT`` beside the input."""
        ext = self.output_extension or _matched_extension(path, self.extensions)
        stem = path.name[: len(path.name) - len(ext)] if path.name.lower().endswith(ext) else path.stem
        return path.with_name(f"{stem}.lsuv{ext}")


def _matched_extension(path: Path, extensions: tuple[str, ...]) -> str:
    name = path.name.lower()
    for ext in sorted(extensions, key=len, reverse=True):
        if name.endswith(ext):
            return path.name[len(path.name) - len(ext):]
    return path.suffix


def check_inputs(specs: list[InputSpec], inputs: list[Any], source: Path | None = None) -> None:
    """Raise DataError naming expected vs given when the batch doesn't fit the declared inputs."""
    if len(inputs) != len(specs):
        names = ", ".join(s.name for s in specs)
        raise DataError(f"model has {len(specs)} input(s) ({names}) but {len(inputs)} array(s) were given", path=source)
    for spec, tensor in zip(specs, inputs):
        given = tuple(tensor.shape)
        if spec.shape is None:
            continue
        if len(given) != len(spec.shape):
            raise DataError(
                f"input {spec.name!r} expects rank {len(spec.shape)} {_fmt(spec.shape)}, got rank {len(given)} {given}",
                path=source,
            )
        for axis, (want, got) in enumerate(zip(spec.shape, given)):
            if want is not None and want != got:
                what = {0: "batch size", 1: "channels"}.get(axis, f"size of axis {axis}")
                raise DataError(
                    f"input {spec.name!r}: {what} {got} does not fit the model, which expects {_fmt(spec.shape)}; got {given}",
                    path=source,
                )


def _fmt(shape) -> str:
    return "(" + ", ".join("N" if i == 0 and d is None else ("?" if d is None else str(d)) for i, d in enumerate(shape)) + ")"
