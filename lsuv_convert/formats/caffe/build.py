"""The TEST-phase net as a ``torch.fx.GraphModule``: one converter per layer type (layers.py)
emits nodes; this module keeps the blob table, the parameter blobs (from ``--weights``, else
Caffe's fillers), shared parameters (``param { name }``) and what ``save`` needs.

Only the layers on a path to a target run (``ParsedNet.layers``). Layers of the tail that hold
parameters (a BatchNorm after the last conv, ...) are built too, for their blobs alone, so the
written .caffemodel is complete; their nodes are removed before the graph is compiled.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.fx
from torch import nn

from ...errors import ModelFormatError
from ..model_graph import TargetLayer
from .context import Blob, LayerContext, ParamLayer
from .layers import CONVERTERS, unsupported_here
from .parse import TARGET_TYPES, ParsedNet
from .weights import StoredLayer


@dataclass
class BuiltNet:
    module: torch.fx.GraphModule
    targets: list[TargetLayer]
    param_layers: list[ParamLayer]
    input_shapes: dict[str, tuple]
    output_names: list[str]
    notes: list[str] = field(default_factory=list)


class NetBuilder:
    def __init__(self, parsed: ParsedNet, input_shapes: dict[str, tuple], weights: dict[str, StoredLayer] | None,
                 weights_path: Path | None, shapes_only: bool = False):
        self.parsed = parsed
        self.shapes_only = shapes_only  # parameters on the meta device: shapes without values or memory
        self.input_shapes = input_shapes
        self.weights = weights
        self.weights_path = weights_path
        self.graph = torch.fx.Graph()
        self.root = nn.Module()
        self.blobs: dict[str, Blob] = {}
        self.targets: list[TargetLayer] = []
        self.param_layers: list[ParamLayer] = []
        self.shared: dict[str, tuple] = {}
        self.notes: list[str] = []
        self.loaded: list[str] = []
        self.unloaded: list[str] = []
        self.taken_names: set[str] = set()
        self.layer_paths = reserve_module_names(parsed, self.taken_names)
        self.tail_paths = [unique_module_name(e.layer.name, self.taken_names) for e in parsed.tail]
        self._seen_param_layers: dict[str, str] = {}

    def unique_name(self, layer_name: str) -> str:
        return unique_module_name(layer_name, self.taken_names)

    def build(self) -> BuiltNet:
        for inp in self.parsed.inputs:
            shape = self.input_shapes[inp.name]
            node = self.graph.placeholder(_identifier(inp.name, "input"))
            self.blobs[inp.name] = Blob(node, tuple(shape))
        for entry, path in zip(self.parsed.layers, self.layer_paths):
            where = self.parsed.where(entry)
            convert = CONVERTERS.get(entry.layer.type)
            if convert is None:
                raise ModelFormatError(f"{where}: {unsupported_here(entry.layer.type)}", path=self.parsed.path)
            self._convert(entry, where, path, convert)
        outputs = [self.blobs[name].node for name in self.parsed.outputs]
        self._tail_blobs()
        self.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
        # Built with the tail's nodes, so the GraphModule keeps the tail's modules (their blobs are
        # written), then compiled without them: nothing after the last target runs.
        module = torch.fx.GraphModule(self.root, self.graph, class_name=_identifier(self.parsed.net.name or "CaffeNet", "net"))
        module.graph.eliminate_dead_code()
        module.recompile()
        module.eval()
        notes = list(self.notes)
        if self.weights is not None:
            notes.extend(self._weights_notes())
        return BuiltNet(module, self.targets, self.param_layers, dict(self.input_shapes), list(self.parsed.outputs), notes)

    def _convert(self, entry, where: str, path: str, convert) -> None:
        layer = entry.layer
        bottoms = [self.blobs[b] for b in layer.bottom]
        ctx = LayerContext(self, layer, where, path)
        count = len(self.param_layers)
        tops = convert(ctx, bottoms)
        if len(self.param_layers) > count:
            if layer.name in self._seen_param_layers:
                raise ModelFormatError(f"{where}: another layer with parameters is also named {layer.name!r} "
                                       "(Caffe matches weights by layer name)", path=self.parsed.path)
            self._seen_param_layers[layer.name] = where
        if len(tops) != len(layer.top):
            raise ModelFormatError(f"{where}: {layer.type} makes {len(tops)} output(s) but {len(layer.top)} "
                                   "top(s) are named", path=self.parsed.path)
        for name, blob in zip(layer.top, tops):
            self.blobs[name] = blob

    def _tail_blobs(self) -> None:
        """Build the tail's layers (never run) for the blobs of those with parameters; a tail
        layer that can't be built (unknown type, a bottom it lacks) is left out with what needs it."""
        skipped: list[str] = []
        for entry, path in zip(self.parsed.tail, self.tail_paths):
            layer = entry.layer
            convert = CONVERTERS.get(layer.type)
            if convert is None or any(b not in self.blobs for b in layer.bottom):
                for top in layer.top:
                    self.blobs.pop(top, None)
                skipped.append(layer.name)
                continue
            saved = (len(self.param_layers), len(self.loaded), len(self.unloaded), dict(self.shared),
                     set(self.root._modules), dict(self.blobs), list(self.graph.nodes))
            try:
                self._convert(entry, self.parsed.where(entry), path, convert)
            except ModelFormatError:
                count, loaded, unloaded, shared, modules, blobs, nodes = saved
                before = set(nodes)
                for node in reversed([n for n in self.graph.nodes if n not in before]):
                    self.graph.erase_node(node)
                del self.param_layers[count:], self.loaded[loaded:], self.unloaded[unloaded:]
                self.shared = shared
                for name in set(self.root._modules) - modules:
                    delattr(self.root, name)
                self.blobs = blobs
                for top in layer.top:
                    self.blobs.pop(top, None)
                skipped.append(layer.name)
        with_blobs = [p.name for p in self.param_layers if p.name in {e.layer.name for e in self.parsed.tail}]
        if with_blobs:
            self.notes.append("blobs of layer(s) after the last target written from their fillers / weights, "
                              "never run: " + ", ".join(with_blobs[:5]) + (" ..." if len(with_blobs) > 5 else ""))

    def _weights_notes(self) -> list[str]:
        notes = [f"loaded blobs of {len(self.loaded)} layer(s) from {self.weights_path}"]
        if self.unloaded:
            notes.append(f"{len(self.unloaded)} layer(s) with parameters are not in the weights file and start from "
                         "their fillers: " + ", ".join(self.unloaded[:5]) + (" ..." if len(self.unloaded) > 5 else ""))
        return notes


def unique_module_name(layer_name: str, taken: set[str]) -> str:
    """A submodule name for a Caffe layer name (which may hold '/', '.', '-' ...), unique in ``taken``."""
    base = _identifier(layer_name, "layer")
    if hasattr(nn.Module, base) or base in ("training",):
        base = f"layer_{base}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def _identifier(text: str, prefix: str) -> str:
    name = re.sub(r"\W", "_", text)
    if not name or not name.isidentifier() or keyword.iskeyword(name):
        name = f"{prefix}_{name}"
    return name


def reserve_module_names(parsed: ParsedNet, taken: set[str]) -> list[str]:
    """One submodule name per layer, in layer order, so that a build and :func:`target_layers`
    agree on every path."""
    return [unique_module_name(entry.layer.name, taken) for entry in parsed.layers]


def target_layers(parsed: ParsedNet) -> list[TargetLayer]:
    """The targets a build will produce (same names and module paths), without building:
    for nets whose input shape is only known once the batch is."""
    paths = reserve_module_names(parsed, set())
    shared: set[str] = set()
    targets = []
    for entry, path in zip(parsed.layers, paths):
        layer = entry.layer
        if layer.type not in TARGET_TYPES:
            continue
        weight_name = layer.param[0].name if len(layer.param) else ""
        if weight_name and weight_name in shared:
            continue
        if weight_name:
            shared.add(weight_name)
        targets.append(TargetLayer(layer.name, layer.type, path, binding=layer.name))
    return targets


def build_net(parsed: ParsedNet, input_shapes: dict[str, tuple], weights=None, weights_path=None) -> BuiltNet:
    return NetBuilder(parsed, input_shapes, weights, weights_path).build()


def build_for_batch(parsed: ParsedNet, input_shapes: dict[str, tuple], weights=None, weights_path=None) -> BuiltNet:
    """The net built at the batch's shapes, which replace the declared ones as Caffe's
    ``net.blobs[...].reshape`` + ``net.reshape()`` and OpenCV's ``setInput`` do (fully
    convolutional deploy nets declare one size and run at any). A net that can't run at the
    batch's size is refused at the first layer that can't take it: one whose blobs would get
    other shapes than at the declared size (an InnerProduct after the spatial axes, ...), or one
    whose converter refuses the shapes it now gets."""
    declared = {i.name: i.shape for i in parsed.inputs}
    resized = {name: shape for name, shape in input_shapes.items()
               if declared.get(name) is not None and None not in declared[name][1:]
               and tuple(declared[name][1:]) != tuple(shape[1:])}
    if resized:
        _check_runs_resized(parsed, input_shapes, declared, resized)
    return build_net(parsed, input_shapes, weights, weights_path)


def _check_runs_resized(parsed: ParsedNet, input_shapes: dict, declared: dict, resized: dict) -> None:
    """Both sizes built for shapes alone (meta parameters: no memory, no fillers), compared layer by layer."""
    sizes = "; ".join(f"{name!r} {_dims(shape)} instead of the declared {_dims(declared[name])}"
                      for name, shape in resized.items())
    context = f"at the batch's input size ({sizes}), which replaces the declared one as Caffe's reshape does"
    at_declared = {name: (declared[name] if name in resized else shape) for name, shape in input_shapes.items()}
    reference = NetBuilder(parsed, at_declared, None, None, shapes_only=True)
    declared_failure = None
    try:
        reference.build()
    except Exception as exc:  # noqa: BLE001 - best effort: layers built before the failure still give their shapes
        declared_failure = exc
    expected = {p.name: [b.caffe_shape for b in p.blobs] for p in reference.param_layers}
    trial = NetBuilder(parsed, input_shapes, None, None, shapes_only=True)
    failure = None
    try:
        trial.build()
    except ModelFormatError as exc:
        failure = exc
    except Exception:  # noqa: BLE001 - not about the size: the real build reports it
        return
    where = {entry.layer.name: parsed.where(entry) for entry in [*parsed.layers, *parsed.tail]}
    for layer in trial.param_layers:
        before = expected.get(layer.name)
        after = [b.caffe_shape for b in layer.blobs]
        if before is not None and before != after:
            k = next(i for i, (a, b) in enumerate(zip(before, after)) if a != b) if len(before) == len(after) else 0
            raise ModelFormatError(
                f"{where.get(layer.name, repr(layer.name))}: {layer.type} can't take the batch's input size: its blob "
                f"{k} would have shape {tuple(after[k])} but has {tuple(before[k])} at the declared size ({sizes}); "
                "feed data of the declared size", path=parsed.path)
    if failure is not None:
        if declared_failure is not None and str(declared_failure) == str(failure):
            raise failure  # the net fails at its declared size too: not a matter of size
        raise ModelFormatError(f"{failure.args[0]} ({context})", path=failure.path) from None


def _dims(shape) -> str:
    """A blob shape without its batch axis: 3×500×500."""
    return "×".join(str(d) for d in shape[1:])
