"""Caffe format plug-in: a ``.prototxt`` (deploy net, train/val net or SOLVER file, current or
V1 format) in, a binary ``.caffemodel`` out (``NAME.prototxt`` -> ``NAME.lsuv.caffemodel``).

No Caffe install is involved: the schema is built at import time (``schema``), the text is
read with line numbers (``textformat``, ``parse``), the TEST-phase net becomes a torch.fx
graph with Caffe's semantics (``build``, ``layers``, ``modules``), and the blobs are written
back by layer name (``write``). ``--weights existing.caffemodel`` starts from trained blobs.
OpenCV's Caffe importer, when installed, re-measures written files (``measure``).

Only the layers on a path to a target are built and run; the tail (DetectionOutput, PriorBox
branches, ArgMax, losses ...) is left out, so it may hold types this plug-in doesn't know.

Loading executes nothing from the file: prototxts are data; ``Python`` layers are never run
(any layer with tops and no bottoms is a data layer replaced by the batch; other Python layers
are an error).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ModelFormatError
from ..model_graph import InputSpec, ModelGraph
from ..registry import register_format
from ..contract import LoadedModel, LoadRequest, ModelFormat

# A net or solver: a layer / net block anywhere, or a top-level net or solver field at a line start.
_SNIFF = re.compile(rb"(?:^|[\s}])(?:layers?|net_param|train_net_param|test_net_param)\s*:?\s*[{<]|"
                    rb"^\s*(?:input|input_dim|input_shape|net|train_net|test_net|base_lr)\s*:", re.MULTILINE)


@dataclass
class CaffeState:
    """Format-private part of a loaded Caffe model (``ModelGraph.state``)."""

    parsed: Any  # parse.ParsedNet
    weights: dict | None  # layer name -> weights.StoredLayer, from --weights
    weights_path: Path | None
    built: Any = None  # build.BuiltNet, once the input shapes are known
    notes: list[str] = field(default_factory=list)


@register_format
class CaffeFormat(ModelFormat):
    name = "caffe"
    extensions = (".prototxt",)
    output_extension = ".caffemodel"

    def sniff(self, path: Path) -> bool:
        try:
            with open(path, "rb") as fh:
                head = fh.read(65536)
        except OSError:
            return False
        return b"\x00" not in head and _SNIFF.search(head) is not None

    options = frozenset({"weights", "stages"})

    def read(self, path: Path, request: LoadRequest) -> LoadedModel:
        from .build import target_layers
        from .layers import CONVERTERS, unsupported_here
        from .parse import read_model
        from .weights import read_weights

        parsed = read_model(path, tuple(request.stages))
        for entry in parsed.layers:  # the tail may hold types we don't know: it never runs
            if entry.layer.type not in CONVERTERS:
                raise ModelFormatError(f"{parsed.where(entry)}: {unsupported_here(entry.layer.type)}",
                                       path=parsed.path)
        weights = request.weights
        stored = read_weights(Path(weights)) if weights is not None else None
        state = CaffeState(parsed, stored, Path(weights) if weights is not None else None)
        notes = list(parsed.notes)
        if parsed.path != path:
            notes.insert(0, f"net read from {parsed.path}")
        missing = [i.name for i in parsed.inputs if i.shape is None or any(d is None for d in i.shape[1:])]
        if missing:
            notes.append(f"no complete shape declared for input(s) {', '.join(missing)}: "
                         "the net is built for the batch's shape")
        notes.extend(n for n in _unused_weight_notes(state) if n not in notes)
        return LoadedModel(format=self.name, source=path, inputs=[InputSpec(i.name, i.shape) for i in parsed.inputs],
                           state=state, targets=target_layers(parsed), notes=notes)

    def build(self, loaded: LoadedModel, inputs: list[Any], check: bool) -> ModelGraph:
        """The TEST-phase net built for the batch's shapes (Caffe shapes every blob from its inputs)."""
        from .build import build_net

        state: CaffeState = loaded.state
        shapes = {spec.name: (None, *(int(d) for d in t.shape[1:])) for spec, t in zip(loaded.inputs, inputs)}
        if state.built is None or state.built.input_shapes != shapes:
            state.built = build_net(state.parsed, shapes, state.weights, state.weights_path)
        built = state.built
        notes = list(loaded.notes) + [n for n in built.notes if n not in loaded.notes]
        return ModelGraph(module=built.module, targets=built.targets,
                          inputs=[InputSpec(i.name, shapes[i.name]) for i in state.parsed.inputs],
                          format=self.name, source=loaded.source, state=state, notes=notes, engine_path="fx")

    def write(self, graph: ModelGraph, out_path: Path, provenance: dict) -> None:
        from .write import write_caffemodel

        state: CaffeState = graph.state
        write_caffemodel(Path(out_path), state.parsed.net.name, state.built, graph.module, _passthrough(state))

    def written_pair(self, path: Path, weights: Path | None) -> tuple[Path, Path | None]:
        """A written ``NAME.lsuv.caffemodel`` names its net: ``NAME.prototxt`` beside it."""
        if not path.name.lower().endswith(self.output_extension):
            return path, weights
        stem = path.name[: -len(self.output_extension)]
        stem = stem[: -len(".lsuv")] if stem.endswith(".lsuv") else stem
        candidate = path.with_name(stem + self.extensions[0])
        if not candidate.is_file():
            raise ModelFormatError(f"no model definition ({candidate.name}) beside the weights file", path=path)
        return candidate, path

    def measure_all(self, model_path: Path, weights_path: Path | None, inputs: list[Any], request=None):
        from .build import target_layers
        from .deploy import deploy_text
        from ...lsuv.statistics import population_stats
        from .parse import read_model
        from .runtime import load_cv2, opencv_forward, opencv_net

        load_cv2()  # before any work: a clear message when OpenCV is missing
        if weights_path is None:
            raise ModelFormatError("measuring needs the written .caffemodel (--weights)", path=model_path)
        parsed = read_model(Path(model_path), tuple(request.stages) if request is not None else ())  # the net convert built
        arrays = [_as_numpy(t) for t in inputs]
        shapes = {i.name: tuple(a.shape) for i, a in zip(parsed.inputs, arrays)}
        text = deploy_text(parsed, shapes, for_opencv=True)
        try:
            blob = Path(weights_path).read_bytes()
        except OSError as exc:
            raise ModelFormatError(f"cannot read weights: {exc.strerror or exc}", path=weights_path) from None
        net = opencv_net(text, blob)
        names = [t.name for t in target_layers(parsed)]
        outs = opencv_forward(net, {i.name: a for i, a in zip(parsed.inputs, arrays)}, list(names))
        stats = {}
        for name, out in zip(names, outs):
            stats[name] = population_stats(out)
        return stats

    def read_files(self, loaded: LoadedModel) -> list[Path]:
        """The prototxt, the net a solver names, and --weights."""
        files = super().read_files(loaded)
        net = Path(loaded.state.parsed.path)
        return files if net in files else [*files, net]

    def in_place_output(self, path: Path, weights: Path | None) -> Path:
        """``--in-place`` rewrites the given weights, never the prototxt."""
        return Path(weights) if weights is not None else Path(path).with_suffix(self.output_extension)


def _passthrough(state: CaffeState) -> list[tuple]:
    """Trained blobs of layers the prototxt defines but the TEST-phase net doesn't run (e.g.
    TRAIN-only layers): copied unchanged so the written file loses nothing of them."""
    if not state.weights:
        return []
    built = {layer.name for layer in state.built.param_layers}
    declared = [layer.name for layer in state.parsed.net.layer]
    out = []
    for name in dict.fromkeys(declared):
        stored = state.weights.get(name)
        if stored is not None and name not in built:
            out.append((name, stored.type, stored.blobs))
    return out


def _unused_weight_notes(state: CaffeState) -> list[str]:
    if not state.weights:
        return []
    declared = {layer.name for layer in state.parsed.net.layer}
    unused = [name for name in state.weights if name not in declared]
    if not unused:
        return []
    return [f"{len(unused)} layer(s) of the weights file are not in the net and are not written: "
            + ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else "")]


def _as_numpy(value):
    import numpy as np

    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)
