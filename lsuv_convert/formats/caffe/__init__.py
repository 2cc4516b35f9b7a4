"""Caffe format plug-in: a ``.prototxt`` (deploy net, train/val net or SOLVER file, current or
V1 format) in, a binary ``.caffemodel`` out (``NAME.prototxt`` -> ``NAME.lsuv.caffemodel``).

No Caffe install is involved: the schema is built at import time (``schema``), the text is
read with line numbers (``textformat``, ``parse``), the TEST-phase net becomes a torch.fx
graph with Caffe's semantics (``build``, ``layers``, ``modules``), and the blobs are written
back by layer name (``write``). ``--weights existing.caffemodel`` starts from trained blobs.
OpenCV's Caffe importer, when installed, re-measures written files (``measure``).

Loading executes nothing from the file: prototxts are data; ``Python`` layers are never run
(one without bottoms is treated as a data layer, any other is an error).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConversionError, ModelFormatError
from ...graph import InputSpec, ModelGraph
from .. import register_format
from ..base import ModelFormat, check_inputs

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

    def load(self, path: Path, *, weights: Path | None = None) -> ModelGraph:
        from .build import target_layers
        from .layers import CONVERTERS
        from .parse import read_model
        from .weights import read_weights

        path = Path(path)
        parsed = read_model(path)
        for entry in parsed.layers:
            if entry.layer.type not in CONVERTERS:
                raise ModelFormatError(f"{parsed.where(entry)}: unknown layer type {entry.layer.type!r}",
                                       path=parsed.path)
        stored = read_weights(Path(weights)) if weights is not None else None
        state = CaffeState(parsed, stored, Path(weights) if weights is not None else None)
        graph = ModelGraph(module=None, targets=target_layers(parsed),
                           inputs=[InputSpec(i.name, i.shape) for i in parsed.inputs],
                           format=self.name, source=path, state=state, notes=list(parsed.notes), engine_path="fx")
        if parsed.path != path:
            graph.notes.insert(0, f"net read from {parsed.path}")
        shapes = {i.name: i.shape for i in parsed.inputs}
        if all(s is not None and all(d is not None for d in s[1:]) for s in shapes.values()):
            _build(graph, shapes)
        else:
            missing = [n for n, s in shapes.items() if s is None or any(d is None for d in s[1:])]
            graph.notes.append(f"no complete shape declared for input(s) {', '.join(missing)}: "
                               "the net is built for the batch's shape")
        return graph

    def prepare(self, graph: ModelGraph, inputs: list[Any]) -> None:
        check_inputs(graph.inputs, inputs, graph.source)
        shapes = {spec.name: (None, *(int(d) for d in t.shape[1:])) for spec, t in zip(graph.inputs, inputs)}
        built = graph.state.built
        if built is None or built.input_shapes != shapes:
            _build(graph, shapes)

    def save(self, graph: ModelGraph, out_path: Path) -> None:
        from .write import write_caffemodel

        state: CaffeState = graph.state
        if state.built is None:
            raise ConversionError("the net was never built (prepare() it with a batch first)", path=graph.source)
        write_caffemodel(Path(out_path), state.parsed.net.name, state.built, graph.module, _passthrough(state))

    def measure(self, model_path: Path, weights_path: Path, inputs: list[Any], names: list[str]):
        from .deploy import deploy_text
        from .parse import read_model
        from .runtime import load_cv2, opencv_forward, opencv_net

        load_cv2()  # before any work: a clear message when OpenCV is missing
        if weights_path is None:
            raise ModelFormatError("measuring needs the written .caffemodel (--weights)", path=model_path)
        parsed = read_model(Path(model_path))
        arrays = [_as_numpy(t) for t in inputs]
        shapes = {i.name: tuple(a.shape) for i, a in zip(parsed.inputs, arrays)}
        text = deploy_text(parsed, shapes, for_opencv=True)
        try:
            blob = Path(weights_path).read_bytes()
        except OSError as exc:
            raise ModelFormatError(f"cannot read weights: {exc.strerror or exc}", path=weights_path) from None
        net = opencv_net(text, blob)
        outs = opencv_forward(net, {i.name: a for i, a in zip(parsed.inputs, arrays)}, list(names))
        stats = {}
        for name, out in zip(names, outs):
            values = out.astype("float64").reshape(-1)
            stats[name] = (float(values.var()), float(values.mean()))
        return stats

    def in_place_output(self, path: Path, weights: Path | None) -> Path:
        """``--in-place`` rewrites the given weights, never the prototxt."""
        return Path(weights) if weights is not None else Path(path).with_suffix(self.output_extension)


def _build(graph: ModelGraph, shapes: dict[str, tuple]) -> None:
    from .build import build_net

    state: CaffeState = graph.state
    built = build_net(state.parsed, shapes, state.weights, state.weights_path)
    state.built = built
    graph.module = built.module
    graph.targets = built.targets
    graph.inputs = [InputSpec(i.name, shapes[i.name]) for i in state.parsed.inputs]
    for note in built.notes:
        if note not in graph.notes:
            graph.notes.append(note)
    for note in _unused_weight_notes(state):
        if note not in graph.notes:
            graph.notes.append(note)


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
