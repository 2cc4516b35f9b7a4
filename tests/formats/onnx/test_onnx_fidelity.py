"""Why onnx2torch converted densenet121 silently wrong, the fix, and the checks that would catch
the next such bug (the gate before LSUV, the check of the written weights before saving).

Root cause: onnx2torch returns its GraphModule in training mode, so the nn.BatchNorm2d it makes
for ONNX BatchNormalization (an inference op: running statistics) normalises with the batch's
own statistics. densenet121 is the torchvision model whose BatchNorms the TorchScript exporter
can't fold into a preceding conv (pre-activation blocks), so only it showed the error.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from lsuv_convert import lsuv_init
from lsuv_convert.errors import ConversionError
from lsuv_convert.formats import get_format
from lsuv_convert.formats.onnx import convert as onnx_convert
from onnx_helpers import export_module, feeds, ort_values, zoo

ONNX = get_format("onnx")


class PreActivation(torch.nn.Module):
    """Residual BatchNorm -> ReLU -> conv blocks: a BatchNorm that reads a sum, not a conv output
    (densenet's read a concatenation), can't be folded, so the exporter keeps the nodes."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = torch.nn.Sequential(*[
            torch.nn.Sequential(torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1))
            for _ in range(3)
        ])
        self.head = torch.nn.Linear(8, 4)
        for m in self.modules():  # statistics of a trained model, so that batch statistics differ
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean((2, 3)))


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _raw_onnx2torch(path):
    """onnx2torch as it is (only the Identity de-duplication resolved so that it converts at all)."""
    import onnx2torch

    return onnx2torch.convert(onnx_convert.working_copy(onnx.load(str(path))))


def _compare_train_mode(path, batch: np.ndarray):
    model = onnx.load(str(path))
    reference = list(ort_values(model, feeds(model, batch), []).values())[0]
    raw = _raw_onnx2torch(path).train()
    ours = ONNX.load(path).state.converted.module.train()  # .train() must not matter: the ONNX ops are inference ops
    with torch.no_grad():
        raw_out = raw(torch.from_numpy(batch)).numpy()
        our_out = ours(torch.from_numpy(batch)).numpy()
    return _max_rel(raw_out, reference), _max_rel(our_out, reference)


def test_batchnorm_nodes_keep_inference_semantics(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    path = export_module(PreActivation().eval(), x, tmp_path / "preact.onnx", "ts13")
    assert sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node) == 3
    raw_error, our_error = _compare_train_mode(path, x.numpy())
    assert raw_error > 0.05  # onnx2torch alone: batch statistics, silently wrong
    assert our_error < 1e-5


@pytest.mark.slow
def test_densenet121_converts_right(tmp_path):
    model, batch = zoo().get("densenet121", "ts13")
    raw_error, our_error = _compare_train_mode(model, np.load(batch))
    assert raw_error > 0.2
    assert our_error < 1e-4


def test_save_refuses_weights_onnxruntime_would_not_compute_the_same(tmp_path):
    """The torch graph LSUV measured must be what onnxruntime computes with the written weights.

    Here the torch graph is changed behind the plug-in's back after the gate (a BatchNorm's running
    variance, which is not written back): save must refuse and write nothing."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    path = export_module(PreActivation().eval(), x, tmp_path / "preact.onnx", "ts13")
    graph = ONNX.load(path)
    graph = ONNX.prepare(graph, [x])
    lsuv_init(graph.module, (x,), targets=[t.module_path for t in graph.targets], seed=0)
    bn = next(m for m in graph.module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var.mul_(4.0)
    out = tmp_path / "out.onnx"
    with pytest.raises(ConversionError) as info:
        ONNX.save(graph, out)
    assert "initialized model disagrees with onnxruntime" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preact.onnx"]
    bn.running_var.div_(4.0)
    ONNX.save(graph, out)  # the untouched graph is written
    assert out.is_file()
