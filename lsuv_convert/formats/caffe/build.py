"""The TEST-phase net as a ``torch.fx.GraphModule``: one converter per layer type (layers.py)
emits nodes; this module keeps the blob table, the parameter blobs (from ``--weights``, else
Caffe's fillers), shared parameters (``param { name }``) and what ``save`` needs.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.fx
from torch import nn

from ...errors import ModelFormatError
from ...graph import TargetLayer
from .fillers import FillerError, fill, generator_for
from .parse import ParsedNet
from .weights import StoredLayer, match_blobs

TARGET_TYPES = ("Convolution", "Deconvolution", "InnerProduct")


@dataclass
class Blob:
    """A value flowing between layers: its fx node and shape (batch axis None)."""

    node: torch.fx.Node
    shape: tuple


@dataclass
class BlobRef:
    """Where one Caffe blob of a layer lives in the module, and how to lay it out for Caffe."""

    module_path: str
    attribute: str
    caffe_shape: tuple[int, ...]
    layout: str = "same"  # "same" | "transpose" (InnerProduct with transpose: true)


@dataclass
class ParamLayer:
    """A layer with blobs, as the written .caffemodel lists it."""

    name: str
    type: str
    bottom: list[str]
    top: list[str]
    blobs: list[BlobRef]


@dataclass
class BuiltNet:
    module: torch.fx.GraphModule
    targets: list[TargetLayer]
    param_layers: list[ParamLayer]
    input_shapes: dict[str, tuple]
    output_names: list[str]
    notes: list[str] = field(default_factory=list)


class LayerContext:
    """What a converter sees: its layer, and helpers to add modules, nodes and parameters."""

    def __init__(self, builder: "NetBuilder", layer, where: str, module_path: str):
        self.builder = builder
        self.layer = layer
        self.where = where
        self.module_path = module_path  # reserved for this layer's module
        self._used = False

    def error(self, message: str) -> ModelFormatError:
        return ModelFormatError(f"{self.where}: {message}", path=self.builder.parsed.path)

    # -- graph -----------------------------------------------------------------------------
    def add_module(self, module: nn.Module) -> str:
        if not self._used:
            self._used = True
            path = self.module_path
        else:
            path = unique_module_name(self.layer.name + "_extra", self.builder.taken_names)
        self.builder.root.add_module(path, module)
        return path

    def call_module(self, path: str, *args) -> torch.fx.Node:
        return self.builder.graph.call_module(path, args)

    def call(self, fn: Callable, *args, **kwargs) -> torch.fx.Node:
        return self.builder.graph.call_function(fn, args, kwargs)

    # -- parameters ------------------------------------------------------------------------
    def initial_blobs(self, roles: list[str], shapes: list[tuple[int, ...]], fillers: list) -> list[torch.Tensor]:
        """Values of the layer's blobs in Caffe layout: from ``--weights`` if it has the layer,
        else from ``blobs`` written in the prototxt itself (which Caffe also honours), else from
        the fillers (a FillerParameter, or a float for a constant)."""
        stored: StoredLayer | None = self.builder.weights.get(self.layer.name) if self.builder.weights else None
        source = Path(self.builder.weights_path).name if stored is not None else "the prototxt"
        if stored is None and len(self.layer.blobs):
            stored = StoredLayer(self.layer.name, self.layer.type, list(self.layer.blobs))
        if stored is not None:
            arrays = match_blobs(stored, shapes, roles, self.where, self.builder.parsed.path, source)
            if source != "the prototxt":
                self.builder.loaded.append(self.layer.name)
            return [torch.from_numpy(a.copy()) for a in arrays]
        self.builder.unloaded.append(self.layer.name)
        values = []
        for i, (shape, filler) in enumerate(zip(shapes, fillers)):
            if isinstance(filler, (int, float)):
                values.append(torch.full(shape, float(filler)))
                continue
            try:
                values.append(fill(filler, shape, generator_for(self.layer.name, i)))
            except FillerError as exc:
                raise self.error(str(exc)) from None
        return values

    def attach(self, module: nn.Module, path: str, attributes: list[str], values: list[torch.Tensor],
               shapes: list[tuple[int, ...]], layouts: list[str] | None = None) -> list[bool]:
        """Put ``values`` (module layout) into ``module``'s attributes, honouring shared
        parameters (``param { name: ... }``), and record the blobs for saving.

        Returns, per attribute, whether it is shared with an earlier layer.
        """
        layouts = layouts or ["same"] * len(attributes)
        shared_flags = []
        refs = []
        for i, (attr, value, shape, layout) in enumerate(zip(attributes, values, shapes, layouts)):
            spec_name = self.layer.param[i].name if i < len(self.layer.param) else ""
            owner = self.builder.shared.get(spec_name) if spec_name else None
            if owner is not None:
                param, owner_shape, owner_layer = owner
                if tuple(owner_shape) != tuple(shape):  # PERMISSIVE sharing of a reshaped blob: not supported
                    raise self.error(f"shares parameter {spec_name!r} with layer {owner_layer!r}, whose shape "
                                     f"{tuple(owner_shape)} differs from the {tuple(shape)} this layer needs")
                setattr(module, attr, param)
                shared_flags.append(True)
                self.builder.notes.append(f"layer {self.layer.name!r} shares {attr} {spec_name!r} with "
                                          f"layer {owner_layer!r}: scaled once, with {owner_layer!r}")
            else:
                current = getattr(module, attr)  # may live on the meta device: replaced, not filled
                value = value.reshape(current.shape).to(torch.float32).contiguous()
                if isinstance(current, nn.Parameter):
                    value = nn.Parameter(value, requires_grad=current.requires_grad)
                setattr(module, attr, value)
                current = getattr(module, attr)
                if spec_name:
                    self.builder.shared[spec_name] = (current, tuple(shape), self.layer.name)
                shared_flags.append(False)
            refs.append(BlobRef(path, attr, tuple(shape), layout))
        self.builder.param_layers.append(ParamLayer(self.layer.name, self.layer.type, list(self.layer.bottom),
                                                    list(self.layer.top), refs))
        return shared_flags

    def target(self, path: str, shared: bool) -> None:
        if shared:
            return  # scaled with the layer that owns the weight
        self.builder.targets.append(TargetLayer(self.layer.name, self.layer.type, path, binding=self.layer.name))


class NetBuilder:
    def __init__(self, parsed: ParsedNet, input_shapes: dict[str, tuple], weights: dict[str, StoredLayer] | None,
                 weights_path: Path | None):
        self.parsed = parsed
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

    def build(self) -> BuiltNet:
        from .layers import CONVERTERS

        for inp in self.parsed.inputs:
            shape = self.input_shapes[inp.name]
            node = self.graph.placeholder(_identifier(inp.name, "input"))
            self.blobs[inp.name] = Blob(node, tuple(shape))
        seen_param_layers: dict[str, str] = {}
        for entry, path in zip(self.parsed.layers, self.layer_paths):
            layer = entry.layer
            where = self.parsed.where(entry)
            convert = CONVERTERS.get(layer.type)
            if convert is None:
                raise ModelFormatError(f"{where}: unknown layer type {layer.type!r}", path=self.parsed.path)
            bottoms = [self.blobs[b] for b in layer.bottom]
            ctx = LayerContext(self, layer, where, path)
            count = len(self.param_layers)
            tops = convert(ctx, bottoms)
            if len(self.param_layers) > count:
                if layer.name in seen_param_layers:
                    raise ModelFormatError(f"{where}: another layer with parameters is also named {layer.name!r} "
                                           "(Caffe matches weights by layer name)", path=self.parsed.path)
                seen_param_layers[layer.name] = where
            if len(tops) != len(layer.top):
                raise ModelFormatError(f"{where}: {layer.type} makes {len(tops)} output(s) but {len(layer.top)} "
                                       "top(s) are named", path=self.parsed.path)
            for name, blob in zip(layer.top, tops):
                self.blobs[name] = blob
        outputs = [self.blobs[name].node for name in self.parsed.outputs]
        self.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
        module = torch.fx.GraphModule(self.root, self.graph, class_name=_identifier(self.parsed.net.name or "CaffeNet", "net"))
        module.eval()
        notes = list(self.notes)
        if self.weights is not None:
            notes.extend(self._weights_notes())
        return BuiltNet(module, self.targets, self.param_layers, dict(self.input_shapes), list(self.parsed.outputs), notes)

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
