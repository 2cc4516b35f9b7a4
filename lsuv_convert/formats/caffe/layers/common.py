"""Helpers the converters share: Caffe's axis, shape and kernel/stride/pad rules, and the weight + bias
blob layout, per-channel parameter layers.
"""

from __future__ import annotations

from ..context import Blob, LayerContext


def axis_index(ctx: LayerContext, axis: int, ndim: int, what: str = "axis") -> int:
    if not -ndim <= axis < ndim:
        raise ctx.error(f"{what} {axis} is out of range for a {ndim}-D input")
    return axis % ndim


def require_known(ctx: LayerContext, shape: tuple, axes, why: str) -> None:
    if any(shape[a] is None for a in axes):
        raise ctx.error(f"{why} would depend on the batch size, which Caffe leaves free; not supported")


def check_bottoms(ctx: LayerContext, bottoms: list[Blob], count: int | None = None, at_least: int = 1) -> None:
    n = len(bottoms)
    if count is not None and n != count:
        raise ctx.error(f"{ctx.layer.type} takes {count} bottom(s), {n} given")
    if n < at_least:
        raise ctx.error(f"{ctx.layer.type} needs at least {at_least} bottom(s)")


def check_same_shapes(ctx: LayerContext, bottoms: list[Blob]) -> None:
    first = bottoms[0].shape
    for name, b in zip(ctx.layer.bottom[1:], bottoms[1:]):
        if b.shape != first:
            raise ctx.error(f"bottom {name!r} has shape {shape_text(b.shape)}, {ctx.layer.bottom[0]!r} has {shape_text(first)}")


def shape_text(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def filler_or(field_owner, name: str, constant: float):
    return getattr(field_owner, name) if field_owner.HasField(name) else constant


def spatial_values(ctx: LayerContext, p, n: int, name: str, default: int | None, repeated: bool = True) -> list[int]:
    """Caffe's kernel/stride/pad: ``name_h``/``name_w`` (2-D only) or one value per axis (or one for all)."""
    field_name = "kernel_size" if name == "kernel" else name
    h, w = f"{name}_h", f"{name}_w"
    given = len(getattr(p, field_name)) > 0 if repeated else p.HasField(field_name)
    if p.HasField(h) or p.HasField(w):
        if given:
            raise ctx.error(f"give either {field_name} or {h}/{w}, not both")
        if n != 2:
            raise ctx.error(f"{h}/{w} are for 2-D inputs only")
        if name == "kernel" and not (p.HasField(h) and p.HasField(w)):
            raise ctx.error("give both kernel_h and kernel_w")
        fallback = 1 if name == "stride" else 0
        return [int(getattr(p, a)) if p.HasField(a) else fallback for a in (h, w)]
    if not given:
        if default is None:
            raise ctx.error(f"{field_name} is required")
        return [default] * n
    values = [int(v) for v in getattr(p, field_name)] if repeated else [int(getattr(p, field_name))]
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ctx.error(f"{field_name} has {len(values)} values for {n} spatial axes")
    return values


def blob_and_bias(p, role: str, shape: tuple, filler, attr: str, bias_shape: tuple):
    """(roles, shapes, fillers, module attributes) of a layer's first blob and, with ``p.bias_term``,
    of its bias blob (Caffe's ``bias_filler``, zero by default)."""
    roles, shapes, fillers, attrs = [role], [shape], [filler], [attr]
    if p.bias_term:
        roles.append("bias")
        shapes.append(bias_shape)
        fillers.append(filler_or(p, "bias_filler", 0.0))
        attrs.append("bias")
    return roles, shapes, fillers, attrs


def channel_parameter(ctx, bottoms, kind: str, shared: bool, build, role: str, attr: str, filler) -> list[Blob]:
    """A layer of one input with channels and one learned blob: a value per channel, or one
    ``shared`` by all (PReLU's slope, Normalize's scale). ``build(channels, blob shape)`` makes
    the module; the blob becomes its ``attr``."""
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    if len(x.shape) < 2:
        raise ctx.error(f"{kind} needs an input with channels, got {shape_text(x.shape)}")
    require_known(ctx, x.shape, (1,), "the channel count")
    shape = () if shared else (x.shape[1],)
    module = build(x.shape[1], shape)
    values = ctx.initial_blobs([role], [shape], [filler])
    path = ctx.add_module(module)
    ctx.attach(module, path, [attr], values, [shape])
    return [Blob(ctx.call_module(path, x.node), x.shape)]
