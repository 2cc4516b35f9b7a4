"""Tiny models and folder snapshots for the tests of paths, records, budgets and code checks."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Tuple

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor


def tiny_onnx(path: Path, *, input_shape=(4, 2, 8, 8), seed: int = 0, external: bool = False) -> Path:
    """Conv(2->3) -> Relu -> Conv(3->2): two target layers, milliseconds to convert."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def tiny_batch(path: Path, shape=(4, 2, 8, 8), seed: int = 1) -> Path:
    np.save(path, np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    return path


TINY_PROTOTXT = """name: "tiny"
input: "data"
input_shape { dim: 2 dim: 1 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 4 } }
"""


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones too) with its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class Holder(torch.nn.Module):
    """A submodule with __getstate__/__setstate__: TorchScript runs __setstate__ inside torch.jit.load."""

    def __init__(self):
        super().__init__()
        self.register_buffer("b", torch.zeros(3))

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self):
        return (self.b, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[Tensor, bool]):
        self.b = state[0]
        self.training = state[1]


class HolderNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.h = Holder()
        self.c = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.d = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.d(torch.tanh(self.c(self.h(x))))


def scripted_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


def rewrite_code(data: bytes, dest: Path, old: str, new: str) -> Path:
    """A copy of a TorchScript archive whose code has ``old`` replaced by ``new`` (what an attacker
    would do: TorchScript compiles the archive's source text at load)."""
    zin = zipfile.ZipFile(io.BytesIO(data))
    replaced = False
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            content = zin.read(info.filename)
            if info.filename.endswith(".debug_pkl"):
                continue
            if info.filename.endswith(".py") and old in content.decode():
                content = content.decode().replace(old, new).encode()
                replaced = True
            zout.writestr(info, content)
    assert replaced, f"{old!r} not in the archive's code"
    return dest
