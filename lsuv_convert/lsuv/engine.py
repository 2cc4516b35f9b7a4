"""The LSUV engine (Algorithm 1 of Mishkin & Matas, made exact in docs/design.md).

Linear cost: the model's own forward runs once, with a forward hook on every target layer.
When execution reaches a target layer for the first time, the layers before it are final, so
its weight is scaled on the layer's own input until ``|Var(out) - target| < tol`` (or
``max_iter``), and the hook hands the scaled output on to the rest of the forward pass. For
conv / linear layers the output is linear in the weight: with scale ``s`` it is ``s * z + b``
(``z`` the weight's part), whose variance is closed-form in ``s``, so the loop runs on scalars;
then the output is updated once in place and the weight written once, checked for overflow in
the same pass (:func:`_write_scaled`). Other target modules are re-run. The result equals the
naive algorithm (one full forward pass per iteration) to float tolerance, at about the cost of
one forward pass; at small sizes what remains is per layer: two reductions over the output,
one multiply of it, one pass over the weight, a dozen ops in all (benchmarks/README.md).

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
    notes: list[str] = field(default_factory=list)  # targets left out and why

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


def declared(module, name: str):
    """``getattr(module, name, None)`` for a flag a module may declare on its class or instance.

    Most modules declare nothing, and for them ``getattr`` with a default goes through
    ``nn.Module.__getattr__``, which raises and catches an AttributeError: ~1.4 us a call,
    several calls per module of a model for every scan. Looking in the instance and class
    dicts first costs a fraction of that.
    """
    if name in getattr(module, "__dict__", ()) or hasattr(type(module), name):
        return getattr(module, name)
    return None


def output_stats(out: torch.Tensor) -> tuple[float, float]:
    """Population variance and mean over all elements.

    Two reductions: torch's sum (cascade summation, error ~ log(n) ulp of sum |x|) and a
    BLAS dot of the output with itself (relative error < 1e-6 up to 1 M elements); beyond
    that, or for a non-contiguous output, the norms of rows of at most 64 K elements and the
    float64 norm of those (one norm over all elements would accumulate error linearly in n,
    and so, more slowly, would one dot). This runs once per layer, and on the many small
    outputs of a net each op's fixed cost (a few us, more right after a large kernel has left
    the caches cold) counts as much as its pass over the data; both are far below
    ``torch.var_mean``'s Welford loop. Where the mean dominates the
    spread (mean^2 > 16 var), E[x^2] - mean^2 would cancel, so the moments are taken again
    about the mean in float64, a chunk at a time (no copy of the whole output).
    """
    x = out.detach() if out.requires_grad else out
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    n = x.numel()
    if n == 0:
        return float("nan"), float("nan")
    total = float(x.sum())
    if n <= _DOT_MAX and x.is_contiguous():  # BLAS dot: one fast op, relative error < 1e-6 here
        flat = x.view(-1)
        squares = float(torch.dot(flat, flat))
    else:
        squares = float(torch.linalg.vector_norm(_row_norms(x), dtype=torch.float64)) ** 2
    mean = total / n
    var = max(squares / n - mean * mean, 0.0)
    if mean * mean > 16.0 * var:
        var, mean = _shifted_stats(x, mean)
    if not math.isfinite(var):
        return _rescaled_stats(x, var, mean)
    return var, mean


_DOT_MAX = 1 << 20  # elements up to which one dot gives the sum of squares
_ROW_MAX = 1 << 16  # elements per row of the norm: its rounding error stays ~1e-7 of the result
_ROW_MIN = 256  # shorter rows make a slow reduction; then fixed rows of 4096 are taken instead
_STATS_ROW = 4096
_SHIFTED_CHUNK = 1 << 17  # elements per float64 chunk of the shifted pass (1 MiB)


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    """The norms of ``x`` cut into rows of at most ``_ROW_MAX`` elements (a 1-D tensor).

    Where ``x`` is contiguous the row is the product of its trailing dims that fits (one
    view, no copy: (batch, channels * H * W) or (batch * channels, H * W) for a conv
    output). Otherwise the flat tensor is cut into rows of 4096 plus one shorter row.
    """
    n = x.numel()
    if x.is_contiguous():
        row = 1
        for size in reversed(x.shape):
            if row * size > _ROW_MAX:
                break
            row *= size
        if row >= min(n, _ROW_MIN):
            return torch.linalg.vector_norm(x.view(n // row, row), dim=1)
    flat = x.reshape(-1)  # a copy only for a non-contiguous output, as a fast reduction needs
    full = n // _STATS_ROW * _STATS_ROW
    norms = torch.linalg.vector_norm(flat[:full].view(-1, _STATS_ROW), dim=1)
    if full < n:
        norms = torch.cat((norms, torch.linalg.vector_norm(flat[full:]).reshape(1)))
    return norms


def _shifted_stats(x: torch.Tensor, shift: float) -> tuple[float, float]:
    """Variance and mean from the moments of ``x - shift`` in float64, chunk by chunk."""
    flat = x.reshape(-1)
    n = flat.numel()
    total, squares = 0.0, 0.0
    for start in range(0, n, _SHIFTED_CHUNK):
        part = flat[start : start + _SHIFTED_CHUNK].to(torch.float64).sub_(shift)
        total += float(part.sum())
        squares += float(torch.dot(part, part))
    offset = total / n
    return max(squares / n - offset * offset, 0.0), shift + offset


def _rescaled_stats(x: torch.Tensor, var: float, mean: float) -> tuple[float, float]:
    """Statistics of finite values whose squares overflow the tensor's precision (|x| ~ 1e20 in
    float32): taken again on x / max|x| and scaled back in float64. Only reached when the fast
    pass overflowed; values that are themselves infinite or NaN keep the non-finite result."""
    scale = float(x.abs().max())
    if not math.isfinite(scale) or scale == 0.0:
        return var, mean
    scaled_var, scaled_mean = output_stats(x / scale)
    return scaled_var * scale * scale, scaled_mean * scale


def _channel_dim(module: nn.Module, out: torch.Tensor) -> int | None:
    """Dim of the output that the bias broadcasts along, for modules linear in their weight."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return 1 if out.dim() > 1 else 0
    if isinstance(module, nn.Linear):
        return out.dim() - 1
    dim = declared(module, "lsuv_channel_dim")
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
    parts = int(declared(module, "lsuv_parts") or 1)
    return parts if parts > 1 else 1


PART_NAMES = {3: ("q", "k", "v"), 2: ("k", "v")}


def part_name(name: str, index: int, parts: int) -> str:
    labels = PART_NAMES.get(parts)
    return f"{name}[{labels[index] if labels else index}]"


def _bias_like(module: nn.Module, out: torch.Tensor, dim: int) -> torch.Tensor | None:
    """The bias shaped to broadcast over ``out`` along ``dim``; None without one or if all zero."""
    bias = getattr(module, "bias", None)
    if not isinstance(bias, torch.Tensor) or not bias.any():
        return None
    shape = [1] * out.dim()
    shape[dim] = -1
    bias = bias.detach() if bias.requires_grad else bias
    return (bias if bias.dtype == out.dtype else bias.to(out.dtype)).view(shape)


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
    bias = getattr(module, "bias", None) if settings.center else None
    has_bias = isinstance(bias, torch.Tensor)
    out = run() if first_out is None else first_out
    var, mean = output_stats(out)
    var_before = var
    dim = _channel_dim(module, out)
    if has_bias and math.isfinite(mean):
        reduce_dims = [d for d in range(out.dim()) if d != (dim if dim is not None else 1)]
        channel_mean = out.detach().to(torch.float64).mean(dim=reduce_dims)
        bias.sub_(channel_mean.to(bias.dtype))
        out = None
        out = run()
        var, mean = output_stats(out)
    # In centre mode weight and bias scale together, so the output scales exactly.
    scales_bias = has_bias
    fit = _fit_linear if dim is not None else _fit_rerun
    out, var, mean, iterations, scale, reason = fit(module, run, settings, out, var, mean, dim, scales_bias)
    # a variance that is zero or not finite after scaling (the weights underflowed: --target-var
    # 1e-300) is never "converged", even when it is within tol of a tiny target
    converged = math.isfinite(var) and var > 0 and abs(var - settings.target_var) < settings.tol
    if not converged and reason is None and math.isfinite(var) and var <= 0:
        reason = "output variance is zero after scaling (the weights underflowed)"
    if not converged and reason is None:
        reason = f"not within tol after {iterations} iterations"
    fields = dict(
        op=declared(module, "lsuv_op") or type(module).__name__,
        weight_shape=list(module.weight.shape),
        var_before=var_before,
        var_after=var,
        mean_after=mean,
        iterations=iterations,
        scale=scale,
        converged=converged,
        reason=None if converged else reason,
    )
    return fields, out


_OVERFLOW = "scaling would make the weights non-finite"
_NO_RESPONSE = "output variance does not respond to scaling the weight (constant input?)"


def _stop_reason(var: float) -> str | None:
    """Why a variance can't be scaled to the target (None: it can)."""
    if not math.isfinite(var):
        return "output variance is not finite"
    if var <= 0.0:
        return "output variance is zero"
    return None


def _fit_linear(module, run, settings, out, var, mean, dim, scales_bias):
    """A layer linear in its weight (conv, linear): the loop runs on scalars alone.

    With weight scale ``s`` the output is ``s * out`` (no bias, or centre mode where the bias
    scales too) or ``s * (out - b) + b``. The variance and mean of either are closed-form in
    ``s`` given moments taken once (:class:`_BiasedMoments`), so no step touches the output
    or the weight. After the loop the output is updated once, in place, and the weight (with,
    in centre mode, the bias) is written once by :func:`_write_scaled`, which makes the
    overflow check in the same pass. If that check
    fails (a weight that the scale would turn into inf), the loop is replayed on the
    recorded steps to the last one the weight could take, exactly as if each step had been
    checked before it was taken.
    """
    bias_b = None if scales_bias else _bias_like(module, out, dim)
    target, tol, max_iter = settings.target_var, settings.tol, settings.max_iter
    scale, iterations, reason = 1.0, 0, None
    moments = None
    steps: list[tuple[float, tuple]] = []  # (scale asked for, state before that step)
    # Written as `not <` so that a NaN variance enters the loop and is reported.
    while not abs(var - target) < tol and iterations < max_iter:
        reason = _stop_reason(var)
        if reason is not None:
            break
        factor = math.sqrt(target / var)
        before = (scale, var, mean, iterations)
        scale *= factor
        iterations += 1
        steps.append((scale, before))
        if bias_b is None:  # out is proportional to the weight: its statistics follow exactly
            var, mean = var * factor * factor, mean * factor
            continue
        if moments is None:  # out becomes z = out - b (in place unless autograd tracks it)
            out = out - bias_b if out.requires_grad else out.sub_(bias_b)
            moments = _BiasedMoments(out, bias_b, dim)
        var, mean = moments.at(scale)
        if abs(var - target) >= abs(before[1] - target) * (1 - 1e-6):
            # The variance doesn't respond to the weight (e.g. a constant input): undo the step.
            scale, var, mean, iterations = before
            reason = _NO_RESPONSE
            break
    weight = module.weight
    bias = module.bias if scales_bias else None
    stopped = _write_scaled(weight, bias, scale, max(s for s, _ in steps) if steps else 1.0)
    if stopped is not None:
        # The write met an element that the largest step would overflow, before writing it:
        # stop at the first step that would, as a check before every step would have.
        done, rest_absmax = stopped
        first = next((i for i, (s, _) in enumerate(steps) if not _finite_scaled(rest_absmax, s, weight.dtype)), 0)
        good, var, mean, iterations = steps[first][1]
        _rewrite_scaled(weight, bias, scale, good, done)
        scale, reason = good, _OVERFLOW
    if moments is not None:  # out holds z: the output is s * z + b, written in place
        out = out * scale + bias_b if out.requires_grad else out.mul_(scale).add_(bias_b)
    elif scale != 1.0:
        out = out * scale if out.requires_grad else out.mul_(scale)
    return out, var, mean, iterations, scale, reason


class _BiasedMoments:
    """Variance and mean of ``s * z + b`` as functions of ``s``, for a layer output ``z + b``
    with a per-channel bias ``b``: ``z``, the part proportional to the weight, is taken from
    the output once (in place, so that no second output-sized tensor exists) and measured.

    With ``e = z - mean(z)``, ``d_c = b_c - mean(b)`` and ``m`` elements per channel,
    ``n Var = s^2 sum(e^2) + 2 s sum_c d_c E_c + m sum_c d_c^2`` where ``E_c`` is channel c's
    sum of ``e``, and ``mean = s mean(z) + mean(b)``. ``sum(e^2)`` comes from
    :func:`output_stats` of ``z`` itself, so no term cancels that the scaled output's own
    variance would not.
    """

    def __init__(self, z: torch.Tensor, bias_b: torch.Tensor, dim: int):
        n = z.numel()
        var, mean = output_stats(z)
        others = [d for d in range(z.dim()) if d != dim]
        channel_sums = (z.sum(others) if others else z).double()
        per_channel = n // channel_sums.numel()
        b = bias_b.reshape(-1).double()
        self.bias_mean = float(b.mean())
        d = b - self.bias_mean
        self.n, self.mean = n, mean
        self.squares = n * var  # sum(e^2)
        self.cross = float(torch.dot(d, channel_sums.sub_(per_channel * mean)))  # sum_c d_c E_c
        self.bias_squares = per_channel * float(torch.dot(d, d))  # m sum_c d_c^2

    def at(self, s: float) -> tuple[float, float]:
        var = (s * s * self.squares + 2.0 * s * self.cross + self.bias_squares) / self.n
        return max(var, 0.0), s * self.mean + self.bias_mean


def _fit_rerun(module, run, settings, out, var, mean, dim, scales_bias):
    """A target whose output is not linear in its weight (no channel dim declared): the
    weight is scaled at each step and the layer re-run on its input."""
    weight = module.weight
    bias = module.bias if scales_bias else None
    target, tol = settings.target_var, settings.tol
    scale, iterations, reason = 1.0, 0, None
    weight_absmax = None
    while not abs(var - target) < tol and iterations < settings.max_iter:
        reason = _stop_reason(var)
        if reason is not None:
            break
        factor = math.sqrt(target / var)
        if weight_absmax is None:
            weight_absmax = _abs_max(weight)
        new_absmax = weight_absmax * factor  # max |w| after this step's multiply, in the weight's dtype
        if not math.isfinite(float(new_absmax)):
            reason = _OVERFLOW
            break
        weight_absmax = new_absmax
        # The old parameters are kept so that an undone step restores them bit for bit; the
        # output is not kept (it is recomputed on undo, which is rare).
        previous_weight = weight.clone()
        previous_bias = bias.clone() if bias is not None else None
        previous_stats = (var, mean)
        weight.mul_(factor)
        if bias is not None:
            bias.mul_(factor)
        scale *= factor
        iterations += 1
        out = None
        out = run()
        var, mean = output_stats(out)
        if abs(var - target) >= abs(previous_stats[0] - target) * (1 - 1e-6):
            scale /= factor
            iterations -= 1
            weight.copy_(previous_weight)
            if previous_bias is not None:
                bias.copy_(previous_bias)
            out = None
            out = run()
            var, mean = previous_stats
            reason = _NO_RESPONSE
            break
    return out, var, mean, iterations, scale, reason


def _finite_scaled(absmax: float, scale: float, dtype: torch.dtype) -> bool:
    """Whether ``fl(absmax * scale)`` in ``dtype`` (what ``mul_`` writes for the largest
    element) is finite. Rounding is monotone, so the largest element decides for all."""
    if not math.isfinite(absmax):
        return False
    limit = torch.finfo(dtype).max
    product = absmax * scale
    if product < 0.5 * limit:
        return True
    if product > 2.0 * limit:
        return False
    # Near the limit: the same multiply as the write, in the weight's dtype.
    return bool(torch.isfinite(torch.full((), absmax, dtype=dtype).mul_(scale)))


_SAFE_NORM = {dtype: 0.25 * torch.finfo(dtype).max for dtype in (torch.float32, torch.float64)}

# Elements per chunk of the checked write: 512 KiB of float32, so that the write reads the
# chunk back from the core's L2 cache right after the check read it from memory.
WRITE_CHUNK = 1 << 17


def _write_scaled(weight: torch.Tensor, bias: torch.Tensor | None, scale: float,
                  peak: float) -> tuple[int, float] | None:
    """Multiply the weight (and bias) by ``scale``: the one write of a fit.

    When some step scaled up (``peak > 1``), every element must stay finite at ``peak``
    (the largest scale the loop asked for). On CPU each chunk is checked just before it is
    written, so that the write finds it in cache: a sum of squares bounds its largest
    element (``max|w| <= ||w||``, one BLAS dot), and only a chunk too close to overflow for
    that bound gets its exact ``max|w|``. The weight is thus read and written once, as by a
    plain multiply. Returns None when all is written; else ``(done, absmax)``: the number
    of elements already written (the flat prefix, at ``scale``) and the max |w| of the rest,
    which still holds the original values (see :func:`_rewrite_scaled`); the bias is then
    not written.
    """
    if peak <= 1.0:  # scaling down can't overflow
        _scale_params(weight, bias, scale)
        return None
    dtype = weight.dtype
    n = weight.numel()
    if (weight.device.type != "cpu" or dtype not in _SAFE_NORM
            or (n > WRITE_CHUNK and not weight.is_contiguous())):
        absmax = float(_abs_max(weight))  # one read pass, then the write: fine where memory is fast
        if not _finite_scaled(absmax, peak, dtype):
            return 0, absmax
        _scale_params(weight, bias, scale)
        return None
    # A chunk whose norm times peak stays below a quarter of the dtype's largest value can't
    # overflow: max|w| <= ||w||, and the quarter covers the norm's rounding many times over.
    safe = _SAFE_NORM[dtype]
    if n <= WRITE_CHUNK:  # one chunk: two ops
        flat = weight.view(-1) if weight.is_contiguous() else weight.reshape(-1)  # read only (under no_grad)
        if not math.sqrt(float(torch.dot(flat, flat))) * peak < safe:  # inf / NaN sums land here too
            absmax = float(_abs_max(weight))
            if not _finite_scaled(absmax, peak, dtype):
                return 0, absmax
        _scale_params(weight, bias, scale)
        return None
    flat = weight.detach().view(-1)
    for start in range(0, flat.numel(), WRITE_CHUNK):
        part = flat[start : start + WRITE_CHUNK]
        if not math.sqrt(float(torch.dot(part, part))) * peak < safe:  # inf / NaN sums land here too
            absmax = float(_abs_max(part))
            if not _finite_scaled(absmax, peak, dtype):
                return start, max(absmax, float(_abs_max(flat[start:])))
        if scale != 1.0:
            part.mul_(scale)
    if bias is not None and scale != 1.0:
        bias.mul_(scale)
    return None


def _rewrite_scaled(weight: torch.Tensor, bias: torch.Tensor | None, written: float, good: float, done: int) -> None:
    """After a write that stopped at an overflowing chunk: bring the weight to scale ``good``.

    The first ``done`` elements hold ``w * written``; they are multiplied by ``good / written``,
    which lands within about one unit in the last place of ``w * good`` (their original values
    are gone). The rest holds ``w`` and is multiplied by ``good`` exactly. Only reached for a
    weight that some step would overflow.
    """
    if done:
        flat = weight.detach().view(-1)  # done > 0 only for a contiguous weight
        flat[:done].mul_(good / written)
        if good != 1.0:
            flat[done:].mul_(good)
    elif good != 1.0:
        weight.mul_(good)
    if bias is not None and good != 1.0:
        bias.mul_(good)


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

    def __init__(self, targets: dict[str, nn.Module], settings: LsuvSettings, on_layer, identity=id):
        self.targets = targets
        self.settings = settings
        self.on_layer = on_layer
        self.identity = identity  # a weight's identity (its id; a streaming run re-creates tensors: their name)
        self.reports: list[LayerReport] = []
        self.by_weight: dict = {}

    def first_use(self, name: str, key: torch.Tensor | None = None) -> bool:
        if key is None:
            key = self.targets[name].weight
        report = self.by_weight.get(self.identity(key))
        if report is None:
            return True
        report.uses += 1
        return False

    def record(self, name: str, fields: dict, key: torch.Tensor) -> LayerReport:
        report = LayerReport(index=len(self.reports), name=name, **fields)
        self.reports.append(report)
        self.by_weight.setdefault(self.identity(key), report)
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
        if parts > 1:
            dim = _channel_dim(module, first_out)
            if dim is not None and first_out.shape[dim] % parts == 0:
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
              kwargs: dict | None = None, special_hooks: Callable | None = None, streaming=None):
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
    every hook sees its call. ``streaming`` (a :class:`~lsuv_convert.lsuv.streaming.Materializer`)
    puts each module's tensors in place right before it runs and writes and frees them after
    its fit: its hooks are registered around the fitting ones.
    """
    tracker = _Tracker(targets, settings, on_layer, identity=streaming.identity if streaming is not None else id)
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
        if streaming is not None:  # after the fitting hooks: its post-hooks run after theirs
            handles.extend(streaming.register())
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
