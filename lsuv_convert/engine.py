"""The LSUV engine (Algorithm 1 of Mishkin & Matas, made exact in docs/design.md).

Linear cost: the model's own forward runs once, with a forward hook on every target layer.
When execution reaches a target layer for the first time, the layers before it are final, so
its weight is scaled on the layer's own input until ``|Var(out) - target| < tol`` (or
``max_iter``), and the hook hands the scaled output on to the rest of the forward pass. For conv / linear layers the output is linear in the
weight, so a rescaled output is computed as ``f * (out - b) + b`` instead of re-running the
layer; other target modules are re-run. The result equals the naive algorithm (one full
forward pass per iteration) to float tolerance, at about the cost of one forward pass.

One walker (:func:`lsuv_walk`) serves every module: for a ``torch.fx.GraphModule`` the
forward is the graph's generated code, which frees activations after their last use. The
per-layer fit is :func:`fit_layer`. Nothing here knows about files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .settings import LsuvSettings

TARGET_TYPES: tuple[type, ...] = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass
class LayerReport:
    index: int
    name: str
    op: str
    weight_shape: list[int]
    var_before: float
    var_after: float
    mean_after: float
    iterations: int
    scale: float
    converged: bool
    reason: str | None = None
    uses: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["reason"] is None:
            del d["reason"]
        return d


@dataclass
class LsuvReport:
    layers: list[LayerReport] = field(default_factory=list)
    settings: LsuvSettings = field(default_factory=LsuvSettings)
    device: str = "cpu"
    walker: str = "fx"
    seconds: dict[str, float] = field(default_factory=dict)

    account: list = field(default_factory=list)  # ParamAccount per parameter tensor (see account.py)

    @property
    def unconverged(self) -> list[LayerReport]:
        return [layer for layer in self.layers if not layer.converged]

    @property
    def counts(self) -> dict[str, int]:
        """Parameter tensors initialized / unreached / skipped."""
        out = {"initialized": 0, "unreached": 0, "skipped": 0}
        for entry in self.account:
            out[entry.status] += 1
        return out

    @property
    def unreached(self) -> list:
        return [e for e in self.account if e.status == "unreached"]

    @property
    def skipped(self) -> list:
        return [e for e in self.account if e.status == "skipped"]


def is_target(module: nn.Module) -> bool:
    """Conv / deconv / linear layers, or any module that opts in with ``lsuv_target = True``."""
    if getattr(module, "lsuv_target", False):
        return True
    return isinstance(module, TARGET_TYPES) and isinstance(getattr(module, "weight", None), torch.Tensor)


def output_stats(out: torch.Tensor) -> tuple[float, float]:
    """Population variance and mean over all elements.

    Sums and norms are taken over rows of 4096 elements in the tensor's precision and
    accumulated across rows in float64: a quarter of ``torch.var_mean``'s cost, which
    matters because it runs once per layer over the layer's output. Where the mean
    dominates the spread (mean^2 > 16 var), E[x^2] - mean^2 would cancel, so the moments
    are taken again about the mean, a few rows at a time (no copy of the whole output).
    """
    flat = out.detach().reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.to(torch.float32)
    n = flat.numel()
    if n == 0:
        return float("nan"), float("nan")
    if n <= _SMALL:  # a float64 copy is cheap here, and few ops beat the row scheme's fixed cost
        centred = flat.to(torch.float64, copy=True)
        mean = float(centred.sum()) / n
        centred.sub_(mean)
        return float(torch.dot(centred, centred)) / n, mean
    rows = n // _STATS_ROW
    body, tail = flat[: rows * _STATS_ROW].view(rows, _STATS_ROW), flat[rows * _STATS_ROW :]
    total, squares = _moments(body, tail, 0.0)
    mean = total / n
    var = max(squares / n - mean * mean, 0.0)
    if mean * mean > 16.0 * var:
        shift = mean
        total, squares = 0.0, 0.0
        for start in range(0, max(rows, 1), _SHIFTED_ROWS):
            part_total, part_squares = _moments(body[start : start + _SHIFTED_ROWS], tail if start == 0 else tail[:0], shift)
            total, squares = total + part_total, squares + part_squares
        offset = total / n
        var = max(squares / n - offset * offset, 0.0)
        mean = shift + offset
    if not math.isfinite(var):
        return _rescaled_stats(flat, var, mean)
    return var, mean


def _rescaled_stats(flat: torch.Tensor, var: float, mean: float) -> tuple[float, float]:
    """Statistics of finite values whose squares overflow the tensor's precision (|x| ~ 1e20 in
    float32): taken again on x / max|x| and scaled back in float64. Only reached when the fast
    pass overflowed; values that are themselves infinite or NaN keep the non-finite result."""
    scale = float(flat.abs().max())
    if not math.isfinite(scale) or scale == 0.0:
        return var, mean
    scaled_var, scaled_mean = output_stats(flat / scale)
    return scaled_var * scale * scale, scaled_mean * scale


_STATS_ROW = 4096
_SMALL = 1 << 14  # elements: a float64 scratch copy of at most 128 KiB
_SHIFTED_ROWS = 256  # 1 M elements per chunk of the shifted pass


def _moments(body: torch.Tensor, tail: torch.Tensor, shift: float) -> tuple[float, float]:
    """Sum and sum of squares of ``x - shift`` over ``body`` (rows) and ``tail``, in float64.

    vector_norm is one vectorised pass; squaring its row norms in float64 keeps the
    relative error at the tensor's rounding.
    """
    if shift:
        body = body - shift
    total = float(body.sum(1).double().sum())
    squares = float(torch.linalg.vector_norm(body, dim=1).double().square().sum())
    if tail.numel():
        tail = tail.double() - shift
        total += float(tail.sum())
        squares += float(tail.square().sum())
    return total, squares


def _channel_dim(module: nn.Module, out: torch.Tensor) -> int | None:
    """Dim of the output that the bias broadcasts along, for modules linear in their weight."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return 1 if out.dim() > 1 else 0
    if isinstance(module, nn.Linear):
        return out.dim() - 1
    dim = getattr(module, "lsuv_channel_dim", None)
    return dim % max(out.dim(), 1) if dim is not None else None


@dataclass
class LinearMap:
    """One linear map held in (a slice of) a parameter: q, k or v of a packed attention weight.

    ``weight`` and ``bias`` are views of the parameters, so scaling them in place scales the
    model's own tensors. ``out_axis`` is the weight axis that indexes output features (0 for
    nn.Linear's (out, in), 1 for an (in, out) layout such as transformers' Conv1D).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    lsuv_op: str = "Linear"
    lsuv_channel_dim: int = -1
    out_axis: int = 0

    def lsuv_grouped_view(self) -> torch.Tensor:
        w = self.weight if self.out_axis == 0 else self.weight.transpose(0, 1)
        return w.reshape(1, w.shape[0], -1) if w.is_contiguous() else w.unsqueeze(0)


def parts_of(module) -> int:
    """How many separate linear maps a target's weight holds along its outputs (q/k/v: 3)."""
    parts = int(getattr(module, "lsuv_parts", 1) or 1)
    return parts if parts > 1 else 1


PART_NAMES = {3: ("q", "k", "v"), 2: ("k", "v")}


def part_name(name: str, index: int, parts: int) -> str:
    labels = PART_NAMES.get(parts)
    return f"{name}[{labels[index] if labels else index}]"


def _bias_like(module: nn.Module, out: torch.Tensor, dim: int) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    if not isinstance(bias, torch.Tensor):
        return None
    shape = [1] * out.dim()
    shape[dim] = -1
    return bias.detach().to(out.dtype).view(shape)


def fit_layer(
    module: nn.Module,
    run: Callable[[], torch.Tensor],
    settings: LsuvSettings,
    first_out: torch.Tensor | None = None,
):
    """Scale ``module.weight`` until its output variance is within tol of the target.

    ``run`` evaluates the layer alone on its cached input; ``first_out``, when given, is its
    output with the current weights (saves one evaluation). Returns ``(fields, out)`` where
    ``out`` is the layer output with the final weights.
    """
    if torch.is_grad_enabled():  # the walk already runs under no_grad: no context per layer there
        with torch.no_grad():
            return _fit_layer(module, run, settings, first_out)
    return _fit_layer(module, run, settings, first_out)


def _fit_layer(module, run, settings, first_out):
    weight = module.weight
    bias = getattr(module, "bias", None)
    has_bias = isinstance(bias, torch.Tensor)
    out = run() if first_out is None else first_out
    var, mean = output_stats(out)
    var_before = var
    dim = _channel_dim(module, out)
    if settings.center and has_bias and math.isfinite(mean):
        reduce_dims = [d for d in range(out.dim()) if d != (dim if dim is not None else 1)]
        channel_mean = out.detach().to(torch.float64).mean(dim=reduce_dims)
        bias.sub_(channel_mean.to(bias.dtype))
        out = None
        out = run()
        var, mean = output_stats(out)
    # In centre mode weight and bias scale together, so the output scales exactly.
    scales_bias = settings.center and has_bias
    linear = dim is not None
    bias_b = None if scales_bias or not linear else _bias_like(module, out, dim)
    if bias_b is not None and not bias_b.any():
        bias_b = None
    # Scaling a layer whose output is proportional to its weight needs no re-evaluation.
    homogeneous = linear and bias_b is None
    # A layer linear in its weight never needs the scaled weight to compute its scaled output,
    # so its weight (and, in centre mode, bias) is written once, after the loop: one pass over
    # the weight instead of a multiply (and for biased layers a copy kept for undo) per step.
    deferred = linear
    scale, iterations, reason = 1.0, 0, None
    weight_absmax = None
    # Written as `not <` so that a NaN variance enters the loop and is reported.
    while not abs(var - settings.target_var) < settings.tol and iterations < settings.max_iter:
        if not math.isfinite(var):
            reason = "output variance is not finite"
            break
        if var <= 0.0:
            reason = "output variance is zero"
            break
        factor = math.sqrt(settings.target_var / var)
        if deferred:
            # Rounding is monotone, so max|fl(w * s)| == fl(max|w| * s): one scalar product says
            # whether the scaled weight would hold an inf, without a pass over a big weight; and
            # scaling down cannot overflow, so the one pass for max|w| is only made to scale up.
            if scale * factor > 1.0:
                if weight_absmax is None:
                    weight_absmax = _abs_max(weight)
                if not math.isfinite(float(weight_absmax * (scale * factor))):
                    reason = "scaling would make the weights non-finite"
                    break
        else:
            if weight_absmax is None:
                weight_absmax = _abs_max(weight)
            new_absmax = weight_absmax * factor
            if not math.isfinite(float(new_absmax)):
                reason = "scaling would make the weights non-finite"
                break
            weight_absmax = new_absmax
        # The old parameters of a re-run layer are kept so that an undone step restores them
        # bit for bit; the output is not kept (it is recomputed on undo, which is rare).
        previous_weight = weight.clone() if not deferred else None
        previous_bias = bias.clone() if scales_bias and not deferred else None
        previous_stats = (var, mean)
        if not deferred:
            weight.mul_(factor)
            if scales_bias:
                bias.mul_(factor)
        scale *= factor
        iterations += 1
        if homogeneous:  # out is proportional to the weight: its statistics follow exactly
            var, mean = var * factor * factor, mean * factor
            continue
        # In place, so that no second output-sized tensor is alive besides the layer's input.
        if linear:
            out.sub_(bias_b).mul_(factor).add_(bias_b)
        else:
            out = None
            out = run()
        var, mean = output_stats(out)
        if abs(var - settings.target_var) >= abs(previous_stats[0] - settings.target_var) * (1 - 1e-6):
            # The variance doesn't respond to the weight (e.g. a constant input): undo the step.
            scale /= factor
            iterations -= 1
            if deferred:
                _scale_params(weight, bias if scales_bias else None, scale)
                deferred = False  # written: nothing left to do after the loop
            else:
                weight.copy_(previous_weight)
                if previous_bias is not None:
                    bias.copy_(previous_bias)
            out = None
            out = run()
            var, mean = previous_stats
            reason = "output variance does not respond to scaling the weight (constant input?)"
            break
    if deferred:
        _scale_params(weight, bias if scales_bias else None, scale)
    if homogeneous and scale != 1.0:
        out = out.mul_(scale) if not out.requires_grad else out * scale
    converged = abs(var - settings.target_var) < settings.tol and math.isfinite(var)
    if not converged and reason is None:
        reason = f"not within tol after {iterations} iterations"
    fields = dict(
        op=getattr(module, "lsuv_op", None) or type(module).__name__,
        weight_shape=list(weight.shape),
        var_before=var_before,
        var_after=var,
        mean_after=mean,
        iterations=iterations,
        scale=scale,
        converged=converged,
        reason=None if converged else reason,
    )
    return fields, out


def _scale_params(weight: torch.Tensor, bias: torch.Tensor | None, scale: float) -> None:
    """Multiply the weight (and bias) by the accumulated ``scale``: the one write of a deferred fit."""
    if scale != 1.0:
        weight.mul_(scale)
        if bias is not None:
            bias.mul_(scale)


def _abs_max(weight: torch.Tensor) -> torch.Tensor:
    """max |w| as a 0-dim tensor of the weight's dtype (NaN if any element is NaN)."""
    if weight.numel() == 0:
        return weight.new_zeros(())
    low, high = torch.aminmax(weight.detach())  # no |w| temporary the size of the weight
    return torch.maximum(low.abs(), high.abs())


class _Tracker:
    """Bookkeeping of one walk: order, first use and shared parameters."""

    def __init__(self, targets: dict[str, nn.Module], settings: LsuvSettings, on_layer):
        self.targets = targets
        self.settings = settings
        self.on_layer = on_layer
        self.reports: list[LayerReport] = []
        self.by_weight: dict[int, LayerReport] = {}

    def first_use(self, name: str, key: torch.Tensor | None = None) -> bool:
        if key is None:
            key = self.targets[name].weight
        report = self.by_weight.get(id(key))
        if report is None:
            return True
        report.uses += 1
        return False

    def record(self, name: str, fields: dict, key: torch.Tensor) -> LayerReport:
        report = LayerReport(index=len(self.reports), name=name, **fields)
        self.reports.append(report)
        self.by_weight.setdefault(id(key), report)
        if self.on_layer is not None:
            self.on_layer(report)
        return report

    def fit_map(self, name: str, linear_map, run: Callable[[], torch.Tensor], first_out: torch.Tensor,
                key: torch.Tensor) -> torch.Tensor:
        fields, out = fit_layer(linear_map, run, self.settings, first_out)
        self.record(name, fields, key)
        return out

    def fit(self, name: str, run: Callable[[], torch.Tensor], first_out: torch.Tensor) -> torch.Tensor:
        module = self.targets[name]
        parts = parts_of(module)
        dim = _channel_dim(module, first_out)
        if parts > 1 and dim is not None and first_out.shape[dim] % parts == 0:
            return self._fit_parts(name, module, parts, dim, run, first_out)
        fields, out = fit_layer(module, run, self.settings, first_out)
        self.record(name, fields, module.weight)
        return out

    def _fit_parts(self, name, module, parts, dim, run, out) -> torch.Tensor:
        """Each of ``parts`` equal slices of the output (q, k, v) scaled to unit variance on its own."""
        weight, bias = module.weight, getattr(module, "bias", None)
        axis = getattr(module, "lsuv_out_axis", 0)
        size = out.shape[dim] // parts
        op = getattr(module, "lsuv_op", None) or type(module).__name__
        for i in range(parts):
            part = LinearMap(
                weight.narrow(axis, i * size, size),
                bias.narrow(0, i * size, size) if isinstance(bias, torch.Tensor) else None,
                lsuv_op=op, lsuv_channel_dim=dim,
            )
            view = out.narrow(dim, i * size, size)
            fields, part_out = fit_layer(part, lambda i=i: run().narrow(dim, i * size, size), self.settings, view)
            fields["weight_shape"] = list(part.weight.shape)
            if part_out.data_ptr() != view.data_ptr():
                view.copy_(part_out)
            self.record(part_name(name, i, parts), fields, weight)  # the parameter: a view's id is not stable
        return out


def lsuv_walk(module: nn.Module, args: tuple, targets: dict[str, nn.Module], settings: LsuvSettings, on_layer=None,
              kwargs: dict | None = None, special_hooks: Callable | None = None):
    """LSUV in one forward pass of ``module``, fitting each target at its first call.

    A forward hook on every target receives the layer's input and its output with the
    current weights, scales the weight re-running only that layer, and hands the scaled
    output on, so everything downstream sees the initialised layer. The pass itself is the
    module's own code: for a ``torch.fx.GraphModule`` that is the graph's generated Python,
    which drops every activation after its last use, so the peak stays that of a plain
    forward pass plus the working copies of the current layer, with no per-node
    interpretation overhead. ``special_hooks(name, module, tracker)``, when given, may register
    a target's hooks itself and return their handles (None: the plain hook), as attention
    modules do (:mod:`.attention`: q, k, v fitted on the module's inputs, out_proj on the
    attention output). torch's fused attention fast paths are off during the walk, so that
    every hook sees its call.
    """
    tracker = _Tracker(targets, settings, on_layer)
    handles = []

    def make_hook(name: str):
        def hook(mod, inputs, kwargs, output):
            if not isinstance(output, torch.Tensor) or not tracker.first_use(name):
                return None
            return tracker.fit(name, lambda: mod.forward(*inputs, **kwargs), output)

        return hook

    try:
        for name, mod in targets.items():
            special = special_hooks(name, mod, tracker) if special_hooks is not None else None
            if special is not None:
                handles.extend(special)
            else:
                handles.append(mod.register_forward_hook(make_hook(name), with_kwargs=True))
        with torch.no_grad(), _fast_path_off():
            module(*args, **(kwargs or {}))
    finally:
        for h in handles:
            h.remove()
    return tracker.reports


class _fast_path_off:
    """torch's fused MultiheadAttention / TransformerEncoderLayer kernels skip submodule calls."""

    def __enter__(self):
        mha = getattr(torch.backends, "mha", None)
        self.previous = mha.get_fastpath_enabled() if mha is not None else None
        if mha is not None:
            mha.set_fastpath_enabled(False)

    def __exit__(self, *exc):
        if self.previous is not None:
            torch.backends.mha.set_fastpath_enabled(self.previous)
