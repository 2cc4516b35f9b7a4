"""Shared by the Caffe tests: the real prototxts, OpenCV as the independent Caffe runtime, and
small nets written by hand.

OpenCV (opencv-python-headless < 5) reads prototxt + .caffemodel with its own Caffe schema and
runs the net with its own layer implementations, so agreement with it checks both the file we
write and the semantics of the torch graph we build.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED

MODELS = SHARED / "models" / "caffe"


SHARED_MISSING = f"public prototxts not available ({MODELS} is absent: a clone without ../shared)"


def cases() -> dict:
    """Batch shape (and deploy twin) per public prototxt; empty when ../shared is absent."""
    index = MODELS / "cases.json"
    return json.loads(index.read_text()) if index.is_file() else {}


def shared_model(name: str) -> Path:
    """A public prototxt from ../shared/models/caffe, or skip the test (with why) when it isn't there."""
    path = MODELS / name
    if not path.is_file():
        pytest.skip(SHARED_MISSING)
    return path


def shared_params(names, slow=()) -> list:
    """pytest params over public prototxts: one explicit skip when ../shared is absent."""
    names = list(names)
    if not names:
        return [pytest.param(None, marks=pytest.mark.skip(reason=SHARED_MISSING))]
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


def caffe_format():
    from lsuv_convert.formats import get_format

    return get_format("caffe")


def seeded_batch(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)


def write_text(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _has_opencv() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "dnn") and hasattr(cv2.dnn, "readNetFromCaffe")


OPENCV_MISSING = "OpenCV's Caffe importer is not installed (pip install 'opencv-python-headless<5'): the independent check"
# Marks a test that needs OpenCV (it runs a net with cv2.dnn, or the CLI's verify): only those skip without it.
needs_opencv = pytest.mark.skipif(not _has_opencv(), reason=OPENCV_MISSING)


def cv2_or_skip():
    return pytest.importorskip("cv2", reason=OPENCV_MISSING)


def opencv_run(prototxt: Path, caffemodel: Path, inputs: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Outputs of layers ``names`` computed by OpenCV's Caffe importer (fusion and Winograd off)."""
    cv2 = cv2_or_skip()
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(False)
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)
    for name, array in inputs.items():
        net.setInput(array, name)
    return [np.asarray(o) for o in net.forward(names)]


def torch_layer_outputs(graph, batch: list[torch.Tensor]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """(target layer name -> its output, net outputs) from the built torch graph."""
    captured: dict[str, np.ndarray] = {}
    handles = []
    for target in graph.targets:
        module = graph.module.get_submodule(target.module_path)

        def hook(mod, args, out, name=target.name):
            captured.setdefault(name, out.detach().numpy().copy())

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = graph.module(*batch)
    finally:
        for h in handles:
            h.remove()
    outs = list(out) if isinstance(out, tuple) else [out]
    return captured, [o.detach().numpy() for o in outs]


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4, what: str = "") -> None:
    """Equal up to ``rtol`` of the reference's magnitude (elementwise tolerance for float32 nets)."""
    got = np.asarray(got).reshape(np.asarray(want).shape)
    scale = float(np.abs(want).max()) or 1.0
    err = float(np.abs(got - want).max())
    assert err <= rtol * scale + 1e-6, f"{what}: max abs difference {err:.3g} vs magnitude {scale:.3g}"


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Random values in every parameter and buffer, valid for Caffe (positive variances/factors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        stats = [(n, b) for n, b in module.named_buffers() if n.rsplit(".", 1)[-1] in ("mean", "variance", "factor")]
        for name, tensor in list(module.named_parameters()) + stats:
            values = torch.randn(tensor.shape, generator=gen) * 0.5
            if name.endswith("variance"):
                values = values.abs() + 0.5
            elif name.endswith("factor"):
                values = values.abs() + 0.5
            tensor.copy_(values)


def build_small(tmp_path: Path, text: str, batch_shapes: list[tuple], *, seed: int = 0, name: str = "net.prototxt",
                randomize_params: bool = True):
    """Load a hand-written prototxt, prepare it for seeded batches, give it random parameters and
    write them: (prototxt path, caffemodel path, graph, batch tensors)."""
    fmt = caffe_format()
    proto = write_text(tmp_path, name, text)
    graph = fmt.load(proto)
    batch = [torch.from_numpy(seeded_batch(s, seed + i)) for i, s in enumerate(batch_shapes)]
    graph = fmt.prepare(graph, batch)
    if randomize_params:
        randomize(graph.module, seed)
    model = tmp_path / (proto.stem + ".caffemodel")
    fmt.save(graph, model)
    return proto, model, graph, batch


def input_layer(name: str, shape: tuple) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def built_graph(proto: Path, weights: Path | None = None, batch: int = 2):
    """load + prepare a net whose input shape it declares, on a seeded batch of that shape."""
    fmt = caffe_format()
    loaded = fmt.load(proto, weights=weights)
    inputs = [torch.from_numpy(seeded_batch((batch, *spec.shape[1:]), seed=i)) for i, spec in enumerate(loaded.inputs)]
    return fmt.prepare(loaded, inputs)
