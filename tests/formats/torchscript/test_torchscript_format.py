"""The TorchScript plug-in in process: both engine paths against the naive oracle, layer
families, shared weights, what the written file keeps, and refusals."""

import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lsuv_convert import lsuv_init
from lsuv_convert.errors import ConversionError, ModelFormatError
from lsuv_convert.formats import find_format, get_format
from lsuv_convert.formats.torchscript.read import graph_of
from lsuv_convert.formats.contract import LoadedModel
from lsuv_convert.formats.torchscript.interpreter import ProgramModule
from naive_lsuv import naive_lsuv
from torchscript_helpers import ControlFlowNet, FitNet4Like, eager_with_weights, first_use_stats, layer_names, naive_lsuv_dynamic

warnings.filterwarnings("ignore", category=FutureWarning)
TS = get_format("torchscript")
TOL = 0.02


def save_script(model: nn.Module, path: Path, mode="script", example=None, **save_kw) -> Path:
    module = torch.jit.script(model) if mode == "script" else torch.jit.trace(model, example, check_trace=False)
    torch.jit.save(module, str(path), **save_kw)
    return path


def ts_graph(path: Path):
    """The ModelGraph of a TorchScript file: complete at load (TorchScript's graph doesn't depend on
    the batch), unchecked until prepared."""
    return graph_of(TS.load(path))


def as_loaded(graph) -> LoadedModel:
    return LoadedModel(format="torchscript", source=graph.source, inputs=graph.inputs, state=graph.state,
                       targets=list(graph.targets), notes=list(graph.notes))


def run_lsuv(graph, batch, **kw):
    """LSUV on ``graph`` after the plug-in's checks on ``batch``; the graph prepare() makes wraps the
    same translated module, so its verdict is the verdict on ``graph`` (which the test saves)."""
    prepared = TS.prepare(as_loaded(graph), [batch])
    assert prepared.module is graph.module
    graph.checked = prepared.checked
    return lsuv_init(graph.module, (batch,), targets=[t.module_path for t in graph.targets],
                     walker=graph.engine_path, device="cpu", **kw)


def script_params(graph) -> dict[str, torch.Tensor]:
    return dict(graph.state.module.named_parameters())


def assert_params_match(expected: dict, actual: dict):
    assert set(expected) == set(actual)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-4, atol=1e-6, msg=name)


# -- exactness: both engine paths equal the naive algorithm ---------------------------------


def test_control_flow_interpreter_equals_naive_oracle(tmp_path):
    torch.manual_seed(0)
    model = ControlFlowNet().eval()
    graph = ts_graph(save_script(model, tmp_path / "cf.pt"))
    assert graph.engine_path == "hooks"
    batch = torch.randn(8, 3, 16, 16)
    report = run_lsuv(graph, batch, pre_init="keep")  # start from the same weights as the oracle
    assert [layer.name for layer in report.layers] == ["stem", "gate", "body", "head"]
    assert next(layer for layer in report.layers if layer.name == "body").uses == 3

    oracle = ControlFlowNet().eval()
    oracle.load_state_dict(model.state_dict())
    assert naive_lsuv_dynamic(oracle, batch) == ["stem", "gate", "body", "head"]
    assert_params_match(dict(oracle.named_parameters()), script_params(graph))


def test_fx_path_equals_naive_oracle(tmp_path):
    torch.manual_seed(0)
    model = FitNet4Like().eval()
    graph = ts_graph(save_script(model, tmp_path / "fitnet.pt"))
    assert graph.engine_path == "fx"
    batch = torch.randn(8, 3, 16, 16)
    run_lsuv(graph, batch, pre_init="keep")
    oracle = FitNet4Like().eval()
    oracle.load_state_dict(model.state_dict())
    naive_lsuv(oracle, batch, layer_names(oracle))
    assert_params_match(dict(oracle.named_parameters()), script_params(graph))


@pytest.mark.slow
def test_fx_and_interpreter_paths_agree_on_resnet18(tmp_path):
    path = save_script(torchvision.models.resnet18(weights=None).eval(), tmp_path / "r18.pt")
    batch = torch.randn(4, 3, 32, 32)
    fx_graph = ts_graph(path)
    assert fx_graph.engine_path == "fx"
    fx_report = run_lsuv(fx_graph, batch, seed=3)
    exact = ts_graph(path)  # the same program, run by the interpreter with hooks instead of fx
    exact.module = exact.state.translated = ProgramModule(exact.state.program)
    exact.engine_path = exact.state.engine_path = "hooks"
    exact_report = run_lsuv(exact, batch, seed=3)
    assert [layer.name for layer in fx_report.layers] == [layer.name for layer in exact_report.layers]
    assert_params_match(script_params(fx_graph), script_params(exact))


# -- layer families, shared weights --------------------------------------------------------


class SharedWeights(nn.Module):
    """A conv applied twice, one weight used by two calls with different strides, and a
    layer weight also read by another op."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.w = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.tanh(self.conv(x))
        x = self.mid(torch.tanh(self.mid(x)))
        x = F.conv2d(x, self.w, padding=1)
        x = F.conv2d(torch.tanh(x), self.w, stride=2, padding=1)
        y = self.fc(x.mean((2, 3)))
        return y * self.fc.weight.abs().mean()


class LayerZoo(nn.Module):
    """Grouped, depthwise, transposed, 1-D and 3-D convs; addmm with beta != 1; a linear
    whose bias is computed; a linear without bias."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(3, 12, 3, padding=1, groups=3)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.up = nn.ConvTranspose2d(12, 6, 2, stride=2)
        self.volume = nn.Conv3d(6, 4, (1, 3, 3))
        self.seq = nn.Conv1d(4, 4, 3)
        self.W = nn.Parameter(torch.randn(16, 4) * 0.3)
        self.b = nn.Parameter(torch.randn(16) * 0.1)
        self.W2 = nn.Parameter(torch.randn(8, 16) * 0.3)
        self.b2 = nn.Parameter(torch.randn(8) * 0.1)
        self.last = nn.Linear(8, 5, bias=False)

    def forward(self, x):
        x = torch.relu(self.depthwise(torch.relu(self.grouped(x))))
        x = torch.relu(self.up(x))
        x = self.volume(x.unsqueeze(2)).squeeze(2)
        x = self.seq(x.flatten(2)).mean(2)
        h = torch.tanh(torch.addmm(self.b, x, self.W.t(), beta=0.5))
        h = torch.tanh(F.linear(h, self.W2, self.b2 * 2.0))
        return self.last(h)


ZOO_LAYERS = ["grouped", "depthwise", "up", "volume", "seq", "W", "W2", "last"]


@pytest.mark.parametrize("mode", ["script", "trace"])
def test_layer_families_reach_unit_variance(tmp_path, mode):
    torch.manual_seed(0)
    batch = torch.randn(8, 3, 16, 16)
    graph = ts_graph(save_script(LayerZoo().eval(), tmp_path / "zoo.pt", mode, batch[:1]))
    assert [t.name for t in graph.targets] == ZOO_LAYERS
    report = run_lsuv(graph, batch, seed=0)
    assert all(layer.converged for layer in report.layers)
    TS.save(graph, tmp_path / "out.pt")
    measured = TS.measure(tmp_path / "out.pt", None, [batch], None)  # torch.jit's own run
    assert list(measured) == ZOO_LAYERS
    assert all(abs(v - 1) < TOL + 1e-4 for v, _ in measured.values()), measured


def test_shared_weight_is_one_layer_scaled_once_at_first_use(tmp_path):
    torch.manual_seed(0)
    graph = ts_graph(save_script(SharedWeights().eval(), tmp_path / "shared.pt"))
    assert graph.engine_path == "fx"
    assert [t.name for t in graph.targets] == ["conv", "mid", "w", "fc"]
    batch = torch.randn(8, 3, 16, 16)
    report = run_lsuv(graph, batch, seed=0)
    assert {layer.name: layer.uses for layer in report.layers} == {"conv": 1, "mid": 2, "w": 2, "fc": 1}
    TS.save(graph, tmp_path / "out.pt")
    measured = TS.measure(tmp_path / "out.pt", None, [batch], None)
    assert all(abs(v - 1) < TOL + 1e-4 for v, _ in measured.values()), measured
    eager = eager_with_weights(SharedWeights(), torch.jit.load(str(tmp_path / "out.pt")))
    hooked = first_use_stats(eager, batch)
    for name in ("conv", "mid", "fc"):  # module layers: hooks agree with torch.jit's probes
        assert hooked[name][0] == pytest.approx(measured[name][0], rel=1e-5)


# -- what the written file keeps -----------------------------------------------------------


class Stateful(nn.Module):
    """Forward writes a buffer in place; with ``count_calls`` it also assigns an int attribute."""

    def __init__(self, count_calls: bool):
        super().__init__()
        self.count_calls = count_calls
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("seen", torch.zeros(()))
        self.calls = 0

    def forward(self, x):
        self.seen.add_(1.0)
        if self.count_calls:
            self.calls += 1
        return self.conv(x) + self.seen * 0


@pytest.mark.parametrize("count_calls, path_kind", [(False, "fx"), (True, "hooks")])
def test_running_the_model_changes_no_saved_state(tmp_path, count_calls, path_kind):
    graph = ts_graph(save_script(Stateful(count_calls), tmp_path / "s.pt"))
    assert graph.engine_path == path_kind
    run_lsuv(graph, torch.randn(4, 3, 8, 8), seed=0)
    TS.save(graph, tmp_path / "out.pt")
    written = torch.jit.load(str(tmp_path / "out.pt"))
    assert float(written.seen) == 0.0 and written.calls == 0


def test_code_structure_buffers_extra_files_and_training_flags_are_kept(tmp_path):
    model = torchvision.models.resnet18(weights=None)  # saved in training mode, as people do
    model.layer1.eval()
    source = save_script(model, tmp_path / "r18.pt", _extra_files={"meta.json": b'{"classes": 1000}'})
    graph = ts_graph(source)
    run_lsuv(graph, torch.randn(4, 3, 32, 32), seed=0)
    TS.save(graph, tmp_path / "out.pt")
    extra = {"meta.json": ""}
    written = torch.jit.load(str(tmp_path / "out.pt"), _extra_files=extra)
    original = torch.jit.load(str(source))
    assert extra["meta.json"] == b'{"classes": 1000}'
    assert written.code == original.code
    assert [(n, m.original_name, m.training) for n, m in written.named_modules()] == [
        (n, m.original_name, m.training) for n, m in original.named_modules()
    ]
    for (name, before), (_, after) in zip(original.named_buffers(), written.named_buffers(), strict=True):
        assert torch.equal(before, after), name
    changed = [n for (n, a), (_, b) in zip(original.named_parameters(), written.named_parameters()) if not torch.equal(a, b)]
    assert set(changed) >= {f"{t.name}.weight" for t in graph.targets}


def test_weights_moved_off_shared_storage_are_still_written(tmp_path):
    """As after an engine run on another device: the layers no longer share the ScriptModule's storage."""
    graph = ts_graph(save_script(ControlFlowNet().eval(), tmp_path / "cf.pt"))
    run_lsuv(graph, torch.randn(4, 3, 16, 16), seed=0)
    for target in graph.targets:
        layer = graph.module.get_submodule(target.module_path)
        layer.weight.data = layer.weight.data.clone() * 2
    TS.save(graph, tmp_path / "out.pt")
    written = dict(torch.jit.load(str(tmp_path / "out.pt")).named_parameters())
    for target in graph.targets:
        torch.testing.assert_close(written[f"{target.name}.weight"], graph.module.get_submodule(target.module_path).weight)


def test_output_loads_without_lsuv_convert(tmp_path):
    graph = ts_graph(save_script(ControlFlowNet().eval(), tmp_path / "cf.pt"))
    run_lsuv(graph, torch.randn(4, 3, 16, 16), seed=0)
    TS.save(graph, tmp_path / "out.pt")
    code = (
        "import sys, torch; m = torch.jit.load(sys.argv[1]); y = m(torch.randn(2, 3, 16, 16)); "
        "assert y.shape == (2, 10) and torch.isfinite(y).all(); assert 'lsuv_convert' not in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.pt")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.stdout.strip() == "ok", result.stderr


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    graph = ts_graph(save_script(ControlFlowNet().eval(), tmp_path / "cf.pt"))
    graph = TS.prepare(as_loaded(graph), [torch.randn(4, 3, 16, 16)])

    def broken_save(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch.jit, "save", broken_save)
    with pytest.raises(Exception) as info:
        TS.save(graph, tmp_path / "out.pt")
    assert "failed" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cf.pt"]


# -- independent measurement, refusals -------------------------------------------------------


def test_measure_uses_torch_jit_and_matches_eager_hooks(tmp_path):
    torch.manual_seed(0)
    model = ControlFlowNet().eval()
    graph = ts_graph(save_script(model, tmp_path / "cf.pt"))
    batch = torch.randn(8, 3, 16, 16)
    run_lsuv(graph, batch, seed=0)
    TS.save(graph, tmp_path / "out.pt")
    measured = TS.measure(tmp_path / "out.pt", None, [batch], ["stem", "gate", "body", "head"])
    hooked = first_use_stats(eager_with_weights(ControlFlowNet(), torch.jit.load(str(tmp_path / "out.pt"))), batch)
    assert list(measured) == list(hooked)
    for name, (var, mean) in hooked.items():
        assert measured[name][0] == pytest.approx(var, rel=1e-5)
        assert measured[name][1] == pytest.approx(mean, rel=1e-4, abs=1e-6)


def test_translation_that_disagrees_with_torchscript_is_refused(tmp_path):
    graph = ts_graph(save_script(torchvision.models.resnet18(weights=None).eval(), tmp_path / "r.pt"))
    state = graph.module.get_submodule("_ts_state")
    name = next(n for n, _ in state.named_buffers() if n.endswith("running_var"))
    setattr(state, name, getattr(state, name) * 4)  # a wrong copy in the translation only
    with pytest.raises(ConversionError, match="disagrees with TorchScript"):
        graph = TS.prepare(as_loaded(graph), [torch.randn(2, 3, 32, 32)])


def test_frozen_module_is_refused(tmp_path):
    frozen = torch.jit.freeze(torch.jit.script(ControlFlowNet().eval()))
    torch.jit.save(frozen, str(tmp_path / "frozen.pt"))
    with pytest.raises(ModelFormatError, match="freeze"):
        TS.load(tmp_path / "frozen.pt")


def test_checkpoints_are_refused_without_unpickling(tmp_path, monkeypatch):
    torch.save(ControlFlowNet().state_dict(), tmp_path / "sd.pt")
    torch.save(ControlFlowNet(), tmp_path / "whole.pth")
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    for name in ("sd.pt", "whole.pth", "legacy.pt"):
        path = tmp_path / name
        assert find_format(path).name == "state_dict"  # torch.save files belong to the state_dict plug-in
        assert not TS.sniff(path)
        with pytest.raises(ModelFormatError, match="checkpoint"):
            TS.load(path)
        with pytest.raises(ModelFormatError, match="--arch"):
            find_format(path).load(path)


def test_forward_with_a_non_tensor_argument_is_refused(tmp_path):
    class TakesInt(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x, times: int):
            return self.conv(x) * times

    with pytest.raises(ModelFormatError, match="times"):
        TS.load(save_script(TakesInt(), tmp_path / "int.pt"))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(5, 4)

    def forward(self, image, vector, scale: float = 2.0):
        return self.conv(image).mean((2, 3)) + self.fc(vector) * scale


def test_several_inputs_and_a_defaulted_argument(tmp_path):
    graph = ts_graph(save_script(TwoInputs(), tmp_path / "two.pt"))
    assert [(i.name, i.shape) for i in graph.inputs] == [("image", None), ("vector", None)]
    batch = [torch.randn(8, 3, 8, 8), torch.randn(8, 5)]
    graph = TS.prepare(as_loaded(graph), batch)
    report = lsuv_init(graph.module, tuple(batch), targets=[t.module_path for t in graph.targets],
                       walker=graph.engine_path, device="cpu", seed=0)
    assert [layer.name for layer in report.layers] == ["conv", "fc"]
    TS.save(graph, tmp_path / "out.pt")
    measured = TS.measure(tmp_path / "out.pt", None, batch, ["conv", "fc"])
    assert all(abs(v - 1) < TOL for v, _ in measured.values()), measured
