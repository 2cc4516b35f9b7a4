"""What converters and the net builder share: blobs flowing between layers, the records of
parameter blobs the writer needs, and the per-layer context a converter works through.

Its own module so that imports go one way: ``layers`` and ``build`` import this; ``build``
imports ``layers``; nothing here imports either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.fx
from torch import nn

from ...errors import ModelFormatError
from ..model_graph import TargetLayer
from .fillers import FillerError, fill, generator_for
from .weights import StoredLayer, match_blobs


@dataclass
class Blob:
    """A value flowing between layers: its fx node and shape (batch axis None)."""

    node: torch.fx.Node
    shape: tuple
    indexes: tuple | None = None  # a pooling mask: the spatial size of the plane its flat indices point into


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


class LayerContext:
    """What a converter sees: its layer, and helpers to add modules, nodes and parameters."""

    def __init__(self, builder: Any, layer, where: str, module_path: str):  # builder: build.NetBuilder
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
            path = self.builder.unique_name(self.layer.name + "_extra")
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
        if self.builder.shapes_only:
            return [torch.empty(shape, device="meta") for shape in shapes]
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
