"""A run imports only what its format needs: no onnx/onnxruntime/onnx2torch for Caffe, and no
torchvision (with torch._dynamo) for ONNX, although onnx2torch imports it for two rare ops."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from formats.onnx.onnx_helpers import export_module

PROBE = """
import json, sys
from lsuv_convert.command.convert import convert
convert(sys.argv[1], sys.argv[2])
heavy = ("onnx", "onnxruntime", "onnx2torch", "torchvision", "torch._dynamo", "transformers", "timm", "cv2")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""

PROTOTXT = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 5 } }
"""


def _imported(model, out) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(model), str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_caffe_run_imports_no_onnx_stack(tmp_path):
    model = tmp_path / "tiny.prototxt"
    model.write_text(PROTOTXT)
    assert _imported(model, tmp_path / "tiny.caffemodel") == []


@pytest.mark.slow
def test_onnx_run_imports_no_torchvision(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model = export_module(net, torch.randn(4, 3, 8, 8), tmp_path / "tiny.onnx", "ts13")
    assert _imported(model, tmp_path / "out.onnx") == ["onnx", "onnx2torch", "onnxruntime"]


@pytest.mark.slow
def test_deferred_torchvision_resolves_to_the_real_functions():
    """The stand-ins hand onnx2torch's NMS/RoiAlign converters the real torchvision at first use."""
    from lsuv_convert.formats.onnx import converters  # noqa: F401 - imports onnx2torch
    from onnx2torch.node_converters import nms, roialign

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    assert nms.torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
    out = roialign.roi_align(torch.ones(1, 1, 4, 4), torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]]), 2)
    assert out.shape == (1, 1, 2, 2)
