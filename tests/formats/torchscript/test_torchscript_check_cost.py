"""What the TorchScript plug-in does once per file, done once and cheaply: the fidelity check of a
straight-line graph on the batch's first samples (the whole batch where that could prove less),
batch errors of the engine's pass as DataErrors, and the code check cached by content."""

from __future__ import annotations

import ast
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import invoke
from lsuv_convert import lsuv_init
from lsuv_convert.errors import ConversionError
from lsuv_convert.formats import get_format
from lsuv_convert.formats.torchscript import codecheck, loader
from torchscript_helpers import ControlFlowNet

warnings.filterwarnings("ignore", category=FutureWarning)
TS = get_format("torchscript")


class SmallNet(nn.Module):
    """conv + batch norm + relu, twice, then a classifier: a straight-line graph once traced."""

    def __init__(self, baked_batch: int | None = None):
        super().__init__()
        self.baked_batch = baked_batch
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        x = self.features(x)
        # a literal batch size, as some exported models have: the trace keeps it
        return self.fc(x.reshape(self.baked_batch, -1) if self.baked_batch else x.flatten(1))


def traced(model: nn.Module, path, batch: int = 1):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    torch.jit.save(torch.jit.trace(model.eval(), torch.randn(batch, 3, 8, 8)), str(path))
    return path


@pytest.fixture
def script_batches(monkeypatch):
    """The batch shapes the real ScriptModule runs on during prepare."""
    seen = []
    real = loader._run_script

    def spy(graph, args):
        seen.append(tuple(args[0].shape))
        return real(graph, args)

    monkeypatch.setattr(loader, "_run_script", spy)
    return seen


def test_straight_line_graph_is_checked_on_its_first_samples(tmp_path, script_batches):
    path = traced(SmallNet(), tmp_path / "net.pt")
    batch = torch.randn(8, 3, 8, 8)
    graph = TS.prepare(TS.load(path), [batch])
    assert script_batches == [(loader.CHECK_SAMPLES, 3, 8, 8)]
    assert any("first 2 samples" in note for note in graph.notes)
    lsuv_init(graph.module, (batch,), targets=[t.module_path for t in graph.targets], walker=graph.engine_path,
              device="cpu", seed=0)
    TS.save(graph, tmp_path / "out.pt")
    reread = torch.jit.load(str(tmp_path / "out.pt"))
    with torch.no_grad():
        assert torch.allclose(reread(batch), graph.module(batch), atol=1e-5)  # the written file is the graph LSUV saw


def test_a_translation_mistake_is_caught_on_the_sub_batch(tmp_path, script_batches):
    loaded = TS.load(traced(SmallNet(), tmp_path / "net.pt"))
    state = loaded.state.translated.get_submodule("_ts_state")
    name = next(n for n, _ in state.named_buffers() if n.endswith("running_var"))
    setattr(state, name, getattr(state, name) * 4)  # a wrong copy in the translation only
    with pytest.raises(ConversionError, match="disagrees with TorchScript"):
        TS.prepare(loaded, [torch.randn(8, 3, 8, 8)])
    assert script_batches == [(loader.CHECK_SAMPLES, 3, 8, 8)]


def test_graph_with_control_flow_is_checked_on_the_whole_batch(tmp_path, script_batches):
    path = tmp_path / "cf.pt"
    torch.jit.save(torch.jit.script(ControlFlowNet().eval()), str(path))
    graph = TS.prepare(TS.load(path), [torch.randn(8, 3, 8, 8)])
    assert script_batches == [(8, 3, 8, 8)]
    assert not any("first 2 samples" in note for note in graph.notes)


def test_batch_size_baked_into_the_trace_falls_back_to_the_whole_batch(tmp_path, script_batches):
    path = traced(SmallNet(baked_batch=8), tmp_path / "baked8.pt", batch=8)
    graph = TS.prepare(TS.load(path), [torch.randn(8, 3, 8, 8)])
    assert script_batches == [(2, 3, 8, 8), (8, 3, 8, 8)]  # TorchScript refused the sub-batch: the batch decides
    assert not any("first 2 samples" in note for note in graph.notes)


def test_batch_only_the_sub_batch_fits_is_a_clean_data_error(tmp_path):
    model = traced(SmallNet(baked_batch=2), tmp_path / "baked2.pt", batch=2)
    np.save(tmp_path / "batch.npy", np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "out.pt"
    result = invoke(model, "--data", tmp_path / "batch.npy", "-o", out, "--device", "cpu")
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot run on the batch of shape (8, 3, 8, 8)" in lines[0], result.stderr
    assert "internal error" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baked2.pt", "batch.npy"]  # nothing written


def test_code_check_reads_each_source_once_per_content(tmp_path, monkeypatch):
    sources = {
        "a/code/__torch__/m.py": "class M(Module):\n  def forward(self, x: Tensor) -> Tensor:\n    return torch.relu(helper(x))\n",
        "a/code/__torch__/h.py": "def helper(x: Tensor) -> Tensor:\n    return torch.tanh(x)\n",
    }
    codecheck._FACTS.clear()
    parsed = []
    real_parse = ast.parse
    monkeypatch.setattr(codecheck.ast, "parse", lambda text, *a, **k: parsed.append(text) or real_parse(text, *a, **k))
    assert codecheck.first_disallowed(sources) is None
    assert len(parsed) == 2
    assert codecheck.first_disallowed(sources) is None  # the same archive again (a zoo of one architecture)
    assert len(parsed) == 2
    # the facts are the file's alone: the verdict still needs the whole archive's definitions
    alone = {"b/code/__torch__/m.py": sources["a/code/__torch__/m.py"]}
    finding = codecheck.first_disallowed(alone)
    assert (finding.name, finding.file, finding.line) == ("helper", "b/code/__torch__/m.py", 3)
    hostile = {"c/code/x.py": sources["a/code/__torch__/h.py"].replace("torch.tanh(x)", 'torch.save(x, "f")')}
    finding = codecheck.first_disallowed(hostile)
    assert (finding.name, finding.file) == ("aten::save", "c/code/x.py")
    assert len(parsed) == 3


def test_translation_failing_where_torchscript_runs_names_the_op_error(tmp_path):
    loaded = TS.load(traced(SmallNet(), tmp_path / "net.pt"))
    state = loaded.state.translated.get_submodule("_ts_state")
    name = next(n for n, _ in state.named_buffers() if n.endswith("running_var"))
    setattr(state, name, torch.ones(3))  # a wrong shape in the translation only
    with pytest.raises(ConversionError, match="fails where TorchScript runs") as caught:
        TS.prepare(loaded, [torch.randn(8, 3, 8, 8)])
    assert "cannot run on the batch" not in str(caught.value)  # the op's own error, not a batch error


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight_is_refused_and_nothing_written(tmp_path, bad):
    loaded = TS.load(traced(SmallNet(), tmp_path / "net.pt"))
    graph = TS.prepare(loaded, [torch.randn(4, 3, 8, 8)])
    with torch.no_grad():
        graph.module.get_submodule(graph.targets[1].module_path).weight[0, 0, 0, 0] = bad
    with pytest.raises(ConversionError, match="non-finite"):
        TS.save(graph, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_finite_weights_whose_sum_overflows_are_written(tmp_path):
    loaded = TS.load(traced(SmallNet(), tmp_path / "net.pt"))
    graph = TS.prepare(loaded, [torch.randn(4, 3, 8, 8)])
    with torch.no_grad():
        graph.module.get_submodule(graph.targets[0].module_path).weight.fill_(3e38)  # finite; the sum is not
    TS.save(graph, tmp_path / "out.pt")
    reread = torch.jit.load(str(tmp_path / "out.pt"))
    assert float(getattr(reread.features, "0").weight.detach().min()) == pytest.approx(3e38)
