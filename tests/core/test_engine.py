"""The engine against the naive algorithm (oracle) and against independent hook measurements."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lsuv_convert import lsuv_init
from lsuv_convert.lsuv.engine import output_stats
from live_bytes import LiveBytes
from naive_lsuv import hook_variances, naive_lsuv

TOL = 0.02


class Chain(nn.Module):
    def __init__(self, depth=30, width=16, act=nn.Tanh):
        super().__init__()
        layers = [nn.Conv2d(3, width, 3, padding=1), act()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), act()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.b(torch.relu(self.a(x)))
        return self.fc(torch.relu(x).mean((2, 3)))


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.left = nn.Conv2d(8, 4, 3, padding=1)
        self.right = nn.Conv2d(8, 6, 5, padding=2, groups=2)
        self.merge = nn.Conv2d(10, 8, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.merge(torch.cat([torch.relu(self.right(x)), torch.relu(self.left(x))], 1))


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.up(torch.relu(self.bn2(self.c2(torch.relu(self.bn1(self.c1(x)))))))


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.tanh(self.stem(x))
        x = torch.tanh(self.shared(x))
        x = torch.tanh(self.shared(x))  # second use: already final
        return self.fc(x.mean((2, 3)))


NETS = {"chain30_tanh": lambda: Chain(30), "residual": Residual, "branches": Branches,
        "batchnorm": WithBatchNorm, "called_twice": CalledTwice}


def targets_of(model):
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]


@pytest.mark.parametrize("walker", ["fx", "hooks"])
@pytest.mark.parametrize("name", sorted(NETS))
def test_engine_equals_naive_oracle(name, walker):
    torch.manual_seed(1)
    model = NETS[name]().eval()
    batch = torch.randn(8, 3, 16, 16) * 2 + 0.5
    ours = copy.deepcopy(model)
    report = lsuv_init(ours, batch, pre_init="keep", walker=walker, device="cpu")
    assert report.walker == walker
    oracle = copy.deepcopy(model)
    order = naive_lsuv(oracle, batch, targets_of(model), tol=TOL)
    assert [layer.name for layer in report.layers] == order
    for name_, p in ours.named_parameters():
        torch.testing.assert_close(p, dict(oracle.named_parameters())[name_], rtol=1e-4, atol=1e-6)
    # some layers must actually have been scaled, else the comparison proves nothing
    assert any(layer.iterations > 0 for layer in report.layers)


def test_execution_order_not_registration_order():
    model = Branches().eval()  # right is registered after left but runs first
    report = lsuv_init(model, torch.randn(4, 3, 8, 8), seed=0, device="cpu")
    assert [layer.name for layer in report.layers] == ["stem", "right", "left", "merge"]


def test_module_called_twice_is_scaled_once():
    model = CalledTwice()
    report = lsuv_init(model, torch.randn(8, 3, 8, 8), seed=0, device="cpu")
    shared = [layer for layer in report.layers if layer.name == "shared"]
    assert len(shared) == 1 and shared[0].uses == 2


def test_center_sets_zero_mean_where_bias_exists():
    model = Chain(6, act=nn.ReLU)
    batch = torch.rand(8, 3, 12, 12) + 1.0
    report = lsuv_init(model, batch, seed=0, center=True, device="cpu")
    for layer in report.layers:
        assert abs(layer.mean_after) < 1e-4
    measured = hook_variances(model.eval(), batch, targets_of(model))
    for layer in report.layers:
        assert abs(measured[layer.name] - 1.0) < TOL


def test_zero_variance_layer_is_left_unscaled_and_reported():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))
    with torch.no_grad():
        model[0].weight.fill_(-1.0)  # ReLU of a negative map is all zeros: next layer's output is 0
        model[0].bias.zero_()
        model[2].bias.zero_()
    report = lsuv_init(model, torch.rand(4, 3, 5, 5), pre_init="keep", device="cpu")
    dead = report.layers[1]
    assert not dead.converged and "zero" in dead.reason and dead.scale == 1.0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_layer_whose_variance_ignores_its_weight_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.zero_()
        model[2].bias.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))  # output = bias: variance 1.25 whatever W is
    before = model[2].weight.clone()
    report = lsuv_init(model, torch.rand(4, 3, 5, 5), pre_init="keep", device="cpu")
    stuck = report.layers[1]
    assert not stuck.converged and "respond" in stuck.reason
    assert torch.equal(model[2].weight, before)


def test_non_finite_output_is_reported_not_written():
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    with torch.no_grad():
        model[0].weight.fill_(float("inf"))
    report = lsuv_init(model, torch.rand(4, 3, 5, 5), pre_init="keep", device="cpu")
    assert not report.layers[0].converged and "finite" in report.layers[0].reason


def test_module_returns_to_its_device_and_training_mode():
    model = Chain(4).train()
    lsuv_init(model, torch.randn(4, 3, 8, 8), seed=0, device="cpu")
    assert model.training and next(model.parameters()).device.type == "cpu"


def test_seed_makes_it_deterministic():
    a, b = Chain(8), Chain(8)
    batch = torch.randn(4, 3, 8, 8)
    lsuv_init(a, batch, seed=3, device="cpu")
    lsuv_init(b, batch, seed=3, device="cpu")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_untraceable_module_falls_back_to_hooks():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

        def forward(self, x):
            x = self.a(x)
            if x.sum() > 0:  # fx can't trace this
                x = torch.relu(x)
            return self.b(x)

    model = DataDependent()
    batch = torch.randn(4, 3, 10, 10)
    report = lsuv_init(model, batch, seed=0, device="cpu")
    assert report.walker == "hooks"
    measured = hook_variances(model.eval(), batch, ["a", "b"])
    assert all(abs(v - 1) < TOL for v in measured.values())


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (1.0, 3.0), (10.0, 0.3), (-1e3, 1.0)])
def test_output_stats_match_float64_reference(mean, std):
    x = torch.randn(7, 5003) * std + mean
    var, m = output_stats(x)
    ref_var, ref_mean = torch.var_mean(x.double(), correction=0)
    assert var == pytest.approx(float(ref_var), rel=1e-4)
    assert m == pytest.approx(float(ref_mean), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("bad", [dict(tol=-1), dict(tol=0), dict(max_iter=0), dict(target_var=0), dict(pre_init="xavier")])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        lsuv_init(Chain(3), torch.randn(2, 3, 8, 8), device="cpu", **bad)


# What the engine may hold beyond activations: row sums, scalars, and the float64 copy
# output_stats makes of outputs up to 16 K elements.
SCRATCH = 144 * 1024


def _largest_target_input(model, batch) -> int:
    sizes, handles = [], []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            handles.append(m.register_forward_hook(lambda mod, i, o: sizes.append(i[0].numel() * i[0].element_size())))
    with torch.no_grad():
        model(batch)
    for h in handles:
        h.remove()
    return max(sizes)


def _biased_chain():
    model = Chain(12)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.uniform_(-1, 1)  # output not proportional to the weight: the re-evaluated path
    return model


def _measure_peaks(model, batch, pre_init):
    """(report, forward meter, engine meter); asserts the engine's peak bound on the way."""
    with LiveBytes() as forward, torch.no_grad():
        model(batch)
    with LiveBytes() as engine:
        report = lsuv_init(model, batch, pre_init=pre_init, device="cpu", seed=0)
    bound = forward.peak + _largest_target_input(model, batch) + SCRATCH
    assert engine.peak <= bound, (engine.peak, forward.peak)
    return report, forward, engine


@pytest.mark.parametrize("name,make,pre_init", [
    ("residual", Residual, "keep"), ("branches", Branches, "keep"), ("called_twice", CalledTwice, "keep"),
    ("biased_chain", _biased_chain, "keep"), ("batchnorm", WithBatchNorm, "orthonormal"),
])
def test_peak_memory_is_a_forward_pass_plus_the_current_layer_input(name, make, pre_init):
    """Issue 2's bound: activations are freed after their last use; the engine adds at most one
    cached layer input to a plain forward pass's peak (measured with LiveBytes, not RSS)."""
    torch.manual_seed(0)
    model = make().eval()
    report, forward, engine = _measure_peaks(model, torch.randn(8, 3, 32, 32) * 2 + 0.5, pre_init)
    assert any(layer.iterations > 0 for layer in report.layers)
    assert engine.current <= 16 * 1024  # nothing the engine made is left behind


def test_peak_memory_of_a_torchvision_model():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    # LSUV only: the pre-init's working memory is weight-sized, not activations
    report, _, _ = _measure_peaks(model, torch.randn(4, 3, 64, 64), "keep")
    assert sum(layer.iterations for layer in report.layers) > 10
