"""The engine's one checked write per weight (issue 18): each weight element is written once,
read once more for the overflow check, and a scale that would overflow it is refused exactly
as a check before every step would refuse it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lsuv_convert import lsuv_init
from lsuv_convert.lsuv import engine
from lsuv_convert.lsuv.engine import output_stats
from lsuv_convert.lsuv.settings import LsuvSettings

FLOAT_MAX = torch.finfo(torch.float32).max
DEFAULT_CHUNK = engine.WRITE_CHUNK
FORWARD_OPS = {"addmm", "mm", "linear", "convolution", "_convolution", "mkldnn_convolution", "conv2d", "t",
               "transpose", "view", "detach", "alias", "reshape", "_unsafe_view", "as_strided", "slice", "expand"}


class WeightTraffic(TorchDispatchMode):
    """Elements of one tensor's storage written by in-place ops, and read by any op that is not
    the layer's own forward computation (or a mere view)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.address = weight.untyped_storage().data_ptr()
        self.written = 0
        self.read = 0
        self.ops: list[str] = []

    def _touches(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() == self.address

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        touched = list({id(t): t for t in tree_flatten((args, kwargs))[0] if self._touches(t)}.values())
        if touched and name not in FORWARD_OPS:
            self.ops.append(name)
            self.read += sum(t.numel() for t in touched)
            if name.endswith("_") and self._touches(args[0]):
                self.written += args[0].numel()
        return func(*args, **(kwargs or {}))


def _wide_linear(out_features=64, in_features=4096, bias=True):
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(0.1)  # default init shrunk: the scale grows, so the overflow check runs
    return layer


@pytest.mark.parametrize("chunk", [DEFAULT_CHUNK, 1000])
def test_each_weight_element_is_written_once_and_read_once_more(monkeypatch, chunk):
    monkeypatch.setattr(engine, "WRITE_CHUNK", chunk)
    layer = _wide_linear()
    batch = torch.randn(4, 4096)
    with WeightTraffic(layer.weight) as traffic:
        report = lsuv_init(layer, batch, pre_init="keep", device="cpu")
    assert report.layers[0].scale > 1.0 and report.layers[0].iterations > 0
    numel = layer.weight.numel()
    assert traffic.written == numel, traffic.ops
    assert traffic.read <= 2 * numel, traffic.ops  # the norm check and the multiply; no aminmax pass
    assert "aminmax" not in traffic.ops


def test_scaling_down_skips_the_check():
    layer = _wide_linear()
    with torch.no_grad():
        layer.weight.mul_(100.0)
    with WeightTraffic(layer.weight) as traffic:
        report = lsuv_init(layer, torch.randn(4, 4096), pre_init="keep", device="cpu")
    assert report.layers[0].scale < 1.0
    assert traffic.read == traffic.written == layer.weight.numel()


def _reference_fit(weight, bias, x, settings):
    """Algorithm 1 step by step: each step multiplies the weight (float32, as the engine writes
    it) and is refused, ending the loop, when that product would hold a non-finite value."""
    w, scales = weight.clone(), []
    scale, iterations, reason = 1.0, 0, None
    var = float(F.linear(x, w, bias).double().var(unbiased=False))
    while not abs(var - settings.target_var) < settings.tol and iterations < settings.max_iter:
        factor = math.sqrt(settings.target_var / var)
        stepped = weight * (scale * factor)
        if not torch.isfinite(stepped).all():
            reason = "scaling would make the weights non-finite"
            break
        scale *= factor
        iterations += 1
        scales.append(scale)
        w = stepped
        var = float(F.linear(x, w, bias).double().var(unbiased=False))
    return w, scale, iterations, reason, scales


def _overflow_case(huge: float, row: int):
    """A biased Linear whose weight holds ``huge`` in a column that meets a zero input: the
    output never sees it, only the weight's range does."""
    gen = torch.Generator().manual_seed(3)
    layer = nn.Linear(8, 4)
    x = torch.randn(16, 8, generator=gen) * 0.05
    x[:, 0] = 0.0
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 8, generator=gen))
        layer.bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.05]))
        layer.weight[row, 0] = huge
    return layer, x


@pytest.mark.parametrize("chunk", [DEFAULT_CHUNK, 8])
@pytest.mark.parametrize("row", [0, 3])
def test_overflow_at_the_first_step_leaves_the_weight_and_reports_it(monkeypatch, chunk, row):
    monkeypatch.setattr(engine, "WRITE_CHUNK", chunk)  # 8: four chunks, the huge one first or last
    layer, x = _overflow_case(FLOAT_MAX / 2, row)
    before = layer.weight.detach().clone()
    report = lsuv_init(layer, x, pre_init="keep", device="cpu")
    fit = report.layers[0]
    assert not fit.converged and fit.reason == "scaling would make the weights non-finite"
    assert fit.iterations == 0 and fit.scale == 1.0 and fit.var_after == fit.var_before
    assert torch.isfinite(layer.weight).all()
    # Chunks written before the failing one are brought back within a few ulp; the rest is exact.
    torch.testing.assert_close(layer.weight.detach(), before, rtol=5e-7, atol=0)
    if row == 0 or chunk == DEFAULT_CHUNK:  # nothing was written before the failing chunk
        assert torch.equal(layer.weight.detach(), before)


@pytest.mark.parametrize("chunk", [DEFAULT_CHUNK, 8])
def test_overflow_at_a_later_step_stops_where_a_check_per_step_would(monkeypatch, chunk):
    monkeypatch.setattr(engine, "WRITE_CHUNK", chunk)
    settings = LsuvSettings(pre_init="keep")
    layer, x = _overflow_case(1.0, 3)
    _, _, _, _, scales = _reference_fit(layer.weight.detach(), layer.bias.detach(), x, settings)
    assert len(scales) >= 2 and scales[1] > scales[0]  # the case needs a second, larger step
    huge = FLOAT_MAX / math.sqrt(scales[0] * scales[1])  # finite after step 1, inf after step 2
    layer, x = _overflow_case(huge, 3)
    want_w, want_scale, want_iterations, want_reason, _ = _reference_fit(
        layer.weight.detach(), layer.bias.detach(), x, settings)
    assert want_iterations == 1 and want_reason is not None

    report = lsuv_init(layer, x, pre_init="keep", device="cpu")
    fit = report.layers[0]
    assert fit.reason == want_reason and fit.iterations == want_iterations and not fit.converged
    assert fit.scale == pytest.approx(want_scale, rel=1e-6)
    assert torch.isfinite(layer.weight).all()
    torch.testing.assert_close(layer.weight.detach(), want_w, rtol=5e-7, atol=0)
    # The variance reported is the one of the output the model now computes.
    with torch.no_grad():
        measured = float(layer(x).double().var(unbiased=False))
    assert fit.var_after == pytest.approx(measured, rel=1e-5)


def test_biased_closed_form_moments_match_the_scaled_outputs():
    gen = torch.Generator().manual_seed(5)
    for bias_scale in (0.5, 100.0):  # the second: the mean dominates the spread
        out = torch.randn(4, 6, 5, 5, generator=gen)
        bias = torch.randn(6, generator=gen) * bias_scale
        out += bias.view(1, -1, 1, 1)
        b = bias.view(1, -1, 1, 1)
        moments = engine._BiasedMoments(out - b, b, 1)
        for s in (0.3, 1.0, 1.7, 25.0):
            got_var, got_mean = moments.at(s)
            want_var, want_mean = torch.var_mean(((out.double() - b) * s + b).reshape(-1), correction=0)
            assert got_var == pytest.approx(float(want_var), rel=1e-5)
            assert got_mean == pytest.approx(float(want_mean), rel=1e-5, abs=1e-6 * math.sqrt(float(want_var)))


@pytest.mark.parametrize("make", [
    lambda: torch.randn(3),
    lambda: torch.randn(70_000) * 2 + 1,  # 1-D, longer than a row
    lambda: torch.randn(2, 70_001),  # a trailing dim longer than a row
    lambda: torch.randn(4, 8, 33, 33).contiguous(memory_format=torch.channels_last),
    lambda: torch.randn(64, 300).t(),  # non-contiguous
    lambda: torch.randn(100_000, 3) + 50,  # short rows; the mean dominates
    lambda: torch.randn(16, 32, 20, 20, dtype=torch.float64) * 1e-3,
])
def test_output_stats_on_every_layout_match_float64(make):
    x = make()
    var, mean = output_stats(x)
    want_var, want_mean = torch.var_mean(x.double().reshape(-1), correction=0)
    assert var == pytest.approx(float(want_var), rel=1e-5)
    assert mean == pytest.approx(float(want_mean), rel=1e-5, abs=1e-6 * math.sqrt(float(want_var)))
