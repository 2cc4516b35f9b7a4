"""ONNX test helpers: torchvision models exported by both of torch's exporters, once per session,
and independent checks of a written model (onnxruntime and plain onnx, never the plug-in's code).

Exports are cached in one temporary folder per test session (removed at exit), or in
``$LSUV_ONNX_TEST_CACHE`` when set (kept, keyed by torch version) to speed up local runs.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper

EXPORTERS = {
    "ts13": dict(dynamo=False, opset_version=13),
    "ts17": dict(dynamo=False, opset_version=17),
    "dy18": dict(dynamo=True, opset_version=18),
}


def _vit():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)


def _tv(name: str, **kwargs) -> Callable:
    def make():
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)

    return make


@dataclass(frozen=True)
class Spec:
    factory: Callable
    size: int  # input height = width
    batch: int = 4


# Input sizes: 64 px where the architecture allows; the TorchScript exporter needs AlexNet's and
# VGG's adaptive pools to divide evenly (6x6 and 7x7 maps), hence 224 px (and batch 2) for those.
SPECS = {
    "resnet18": Spec(_tv("resnet18"), 64),
    "resnet50": Spec(_tv("resnet50"), 64),
    "mobilenet_v3_small": Spec(_tv("mobilenet_v3_small"), 64),
    "efficientnet_b0": Spec(_tv("efficientnet_b0"), 64),
    "densenet121": Spec(_tv("densenet121"), 64),
    "squeezenet1_1": Spec(_tv("squeezenet1_1"), 64),
    "googlenet": Spec(_tv("googlenet", init_weights=True, aux_logits=False), 64),
    "shufflenet_v2": Spec(_tv("shufflenet_v2_x0_5"), 64),
    "regnet_y_400mf": Spec(_tv("regnet_y_400mf"), 64),
    "convnext_tiny": Spec(_tv("convnext_tiny"), 64),
    "mnasnet": Spec(_tv("mnasnet0_5"), 64),
    "alexnet": Spec(_tv("alexnet"), 224, batch=2),
    "vgg11": Spec(_tv("vgg11"), 224, batch=2),
    "vit": Spec(_vit, 32),
}

# Combinations torch itself can't export (not a limitation of lsuv-convert).
UNEXPORTABLE = {("vit", "ts13"): "torch's TorchScript exporter has no scaled_dot_product_attention before opset 14"}


def quiet():
    """Silence the exporters' progress lines and warnings."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def export_module(module: torch.nn.Module, example: torch.Tensor, path: Path, exporter: str, **extra) -> Path:
    """Export ``module`` with one of torch's exporters (see EXPORTERS) to ``path``."""
    kwargs = dict(EXPORTERS[exporter], **extra)
    if kwargs.get("dynamo"):
        kwargs.setdefault("verbose", False)
    with quiet():  # not under no_grad: MultiheadAttention would take a fast path the exporter lacks
        torch.onnx.export(module.eval(), (example,), str(path), **kwargs)
    return path


def batch_for(spec: Spec, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((spec.batch, 3, spec.size, spec.size)).astype(np.float32)


class Zoo:
    """Exported models by (name, exporter): model path and a batch .npy that fits its input."""

    def __init__(self):
        cache = os.environ.get("LSUV_ONNX_TEST_CACHE")
        if cache:
            self.root = Path(cache) / f"torch-{torch.__version__}"
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.root = Path(tempfile.mkdtemp(prefix="lsuv-onnx-zoo-"))
            atexit.register(shutil.rmtree, self.root, True)

    def get(self, name: str, exporter: str) -> tuple[Path, Path]:
        folder = self.root / f"{name}_{exporter}"
        model, batch = folder / f"{name}_{exporter}.onnx", folder / f"{name}_{exporter}.npy"  # batch: the CLI's sidecar
        done = folder / "done"
        if not done.exists():
            folder.mkdir(exist_ok=True)
            spec = SPECS[name]
            torch.manual_seed(0)
            x = batch_for(spec)
            export_module(spec.factory(), torch.from_numpy(x), model, exporter)
            np.save(batch, x)
            done.touch()
        return model, batch


ZOO: Zoo | None = None


def zoo() -> Zoo:
    global ZOO
    if ZOO is None:
        ZOO = Zoo()
    return ZOO


# ------------------------------------------------------------------ independent checks of a written model


def ort_values(path_or_model, feeds: dict[str, np.ndarray], tensors: list[str]) -> dict[str, np.ndarray]:
    """onnxruntime's values of ``tensors`` (plus the graph outputs) for a model file or proto."""
    import onnxruntime as ort

    model = onnx.load(str(path_or_model)) if not isinstance(path_or_model, onnx.ModelProto) else path_or_model
    have = {o.name for o in model.graph.output}
    model.graph.output.extend([onnx.ValueInfoProto(name=t) for t in dict.fromkeys(tensors) if t not in have])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def feeds(model: onnx.ModelProto, batch: np.ndarray) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    spec = [i for i in model.graph.input if i.name not in inits][0]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(spec.type.tensor_type.elem_type)
    return {spec.name: batch.astype(dtype)}


def eligible_layers(model: onnx.ModelProto, repeats: bool = False) -> dict[str, str]:
    """{node name: tensor LSUV must set to unit variance} for every Conv / ConvTranspose / Gemm /
    MatMul whose weight is an initializer (or an Identity of one); a MatMul followed only by an
    Add of an initializer vector is measured after that Add. A layer reading the same weight
    tensor as an earlier one is that layer used again (scaled at its first use) and not listed."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    identity = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}

    def initializer(name):
        while name in identity:
            name = identity[name]
        return inits.get(name)

    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    layers = {}
    weights_seen = set()
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = initializer(node.input[1])
        if weight is None or (node.op_type == "MatMul" and initializer(node.input[0]) is not None):
            continue
        out = node.output[0]
        if node.op_type == "MatMul":
            users = readers.get(out, [])
            if len(users) == 1 and users[0].op_type == "Add":
                other = [i for i in users[0].input if i != out]
                bias = initializer(other[0]) if other else None
                if bias is not None and list(bias.dims) == [weight.dims[1]]:
                    out = users[0].output[0]
        if node.input[1] in weights_seen and not repeats:  # the tensor an earlier layer reads: scaled there
            continue
        weights_seen.add(node.input[1])
        layers[node.name or node.output[0]] = out
    return layers


def tensor_bytes(t: onnx.TensorProto) -> tuple:
    array = numpy_helper.to_array(t)
    return t.data_type, tuple(t.dims), array.tobytes()


def node_signature(node: onnx.NodeProto) -> tuple:
    return node.op_type, node.name, node.domain, tuple(node.output), tuple(a.SerializeToString() for a in node.attribute), node.doc_string


def check_written_model(src_path: Path, out_path: Path, batch: np.ndarray, tol: float = 0.02) -> dict[str, float]:
    """Everything the tracker asks of a written model; returns {layer: variance by onnxruntime}."""
    import onnxruntime as ort

    src = onnx.load(str(src_path))
    out = onnx.load(str(out_path))
    ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])  # loads as a file, external data too

    # header, metadata, inputs/outputs, value_info: as they were
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        assert getattr(out, field) == getattr(src, field), field
    assert list(out.opset_import) == list(src.opset_import)
    assert list(out.metadata_props) == list(src.metadata_props)
    for field in ("name", "doc_string"):
        assert getattr(out.graph, field) == getattr(src.graph, field)
    assert [i.SerializeToString() for i in out.graph.input] == [i.SerializeToString() for i in src.graph.input]
    assert [o.SerializeToString() for o in out.graph.output] == [o.SerializeToString() for o in src.graph.output]
    assert [v.SerializeToString() for v in out.graph.value_info] == [v.SerializeToString() for v in src.graph.value_info]

    # node list: same nodes, names, order, attributes, outputs; inputs equal except that a target
    # layer's weight/bias input may now read a new initializer made for it
    assert [node_signature(n) for n in out.graph.node] == [node_signature(n) for n in src.graph.node]
    src_inits = {t.name: t for t in src.graph.initializer}
    out_inits = {t.name: t for t in out.graph.initializer}
    assert set(src_inits) <= set(out_inits)
    new = set(out_inits) - set(src_inits)
    layers = eligible_layers(src)
    slot_nodes = _slot_nodes(src, eligible_layers(src, repeats=True))
    for k, (a, b) in enumerate(zip(src.graph.node, out.graph.node)):
        for j, (x, y) in enumerate(zip(a.input, b.input)):
            if x != y:
                assert (k, j) in slot_nodes and y in new, (a.name, j, x, y)
                assert out_inits[y].data_type == _resolve(src, x).data_type

    # initializers: changed or new ones are read only by target slots; all others byte-identical
    readers = _readers(out)
    changed = [name for name in src_inits if tensor_bytes(src_inits[name]) != tensor_bytes(out_inits[name])]
    for name in changed + sorted(new):
        live = readers.get(name, [])
        assert live and all(r in slot_nodes for r in live), (name, live)
    for name in changed:
        assert out_inits[name].data_type == src_inits[name].data_type
        assert list(out_inits[name].dims) == list(src_inits[name].dims)

    # external data stays external, in a file beside the output
    src_ext = {t.name for t in onnx.load(str(src_path), load_external_data=False).graph.initializer
               if t.data_location == onnx.TensorProto.EXTERNAL}
    out_meta = {t.name: t for t in onnx.load(str(out_path), load_external_data=False).graph.initializer}
    for name in src_ext:
        assert out_meta[name].data_location == onnx.TensorProto.EXTERNAL, name
        location = {e.key: e.value for e in out_meta[name].external_data}["location"]
        assert (out_path.parent / location).is_file() and location.startswith(out_path.name)

    # every eligible layer's output variance, measured by onnxruntime on the batch
    values = ort_values(out, feeds(out, batch), list(layers.values()))
    variances = {name: float(np.var(values[t].astype(np.float64))) for name, t in layers.items()}
    bad = {n: v for n, v in variances.items() if not abs(v - 1.0) < tol}
    assert not bad, bad
    return variances


def _resolve(model, name):
    identity = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    while name in identity:
        name = identity[name]
    return {t.name: t for t in model.graph.initializer}[name]


def _readers(model) -> dict[str, list[tuple[int, int]]]:
    """Who reads each initializer, directly or through Identity nodes (as (node, input) pairs)."""
    alias = {}
    inits = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Identity":
            src = node.input[0]
            alias[node.output[0]] = src if src in inits else alias.get(src)
    found: dict[str, list] = {}
    for k, node in enumerate(model.graph.node):
        for j, name in enumerate(node.input):
            root = name if name in inits else alias.get(name)
            if root is not None and node.op_type != "Identity":
                found.setdefault(root, []).append((k, j))
    for out in model.graph.output:
        root = out.name if out.name in inits else alias.get(out.name)
        if root is not None:
            found.setdefault(root, []).append(("output", out.name))
    return found


def _slot_nodes(model, layers: dict[str, str]) -> set[tuple[int, int]]:
    """(node, input) pairs that are a target layer's weight or bias."""
    slots = set()
    by_name = {n.name or n.output[0]: k for k, n in enumerate(model.graph.node)}
    by_output = {}
    for k, node in enumerate(model.graph.node):
        for out in node.output:
            by_output[out] = k
    for name, out in layers.items():
        k = by_name[name]
        node = model.graph.node[k]
        slots.add((k, 1))
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2:
            slots.add((k, 2))
        if out != node.output[0]:  # fused Add: its initializer input is the bias
            add_k = by_output[out]
            add = model.graph.node[add_k]
            slots.add((add_k, 1 - list(add.input).index(node.output[0])))
    return slots
