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
import onnx.version_converter
import torch
from onnx import TensorProto, numpy_helper

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


# ------------------------------------------------------------------ files as other producers write them
# Hand-built with onnx.helper where the producer itself can't run here (Caffe2 / PyTorch 0.3-era
# exporters, paddle2onnx, tf2onnx): the same IR versions, opsets, node versions and weight layouts.


def _init(rng, name, shape, dtype=np.float32, scale=0.5):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(dtype), name)


def _as_graph_inputs(graph: onnx.GraphProto) -> None:
    """IR 3 files list every initializer as a graph input too."""
    for t in graph.initializer:
        graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))


def _legacy(graph, opset: int) -> onnx.ModelProto:
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], producer_name="pytorch",
                                   producer_version="0.3")
    model.ir_version = 3
    return model


def legacy_opset7_classifier() -> onnx.ModelProto:
    """Caffe2 / PyTorch 0.3 style, IR 3 / opset 7: Conv, BatchNormalization-7, Dropout-7, Gemm-7,
    a Softmax after the last layer, initializers listed as graph inputs."""
    h, rng = onnx.helper, np.random.default_rng(7)
    nodes = [
        h.make_node("Conv", ["data", "c1_w", "c1_b"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        h.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn1"], name="bn1", epsilon=1e-5),
        h.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        h.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Conv", ["p1", "c2_w", "c2_b"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        h.make_node("Dropout", ["r2"], ["d2"], name="drop2", ratio=0.5),
        h.make_node("Flatten", ["d2"], ["f2"], name="flatten", axis=1),
        h.make_node("Gemm", ["f2", "fc_w", "fc_b"], ["fc"], name="fc", transB=1),
        h.make_node("Softmax", ["fc"], ["prob"], name="prob"),
    ]
    inits = [_init(rng, "c1_w", (8, 3, 3, 3)), _init(rng, "c1_b", (8,)), _init(rng, "bn_s", (8,)), _init(rng, "bn_b", (8,)),
             _init(rng, "bn_m", (8,), scale=0.1), numpy_helper.from_array(np.full(8, 1.5, np.float32), "bn_v"),
             _init(rng, "c2_w", (8, 8, 3, 3)), _init(rng, "c2_b", (8,)), _init(rng, "fc_w", (10, 8 * 4 * 4)), _init(rng, "fc_b", (10,))]
    graph = h.make_graph(nodes, "caffe2_net", [h.make_tensor_value_info("data", TensorProto.FLOAT, [4, 3, 8, 8])],
                         [h.make_tensor_value_info("prob", TensorProto.FLOAT, [4, 10])], inits)
    _as_graph_inputs(graph)
    return _legacy(graph, 7)


def legacy_opset6_dropout_is_test() -> onnx.ModelProto:
    """IR 3 / opset 6: BatchNormalization-6 and Dropout-6 with ``is_test``, AveragePool-1, Gemm-6
    with ``broadcast`` (onnxruntime runs none of them at opset 6)."""
    h, rng = onnx.helper, np.random.default_rng(6)
    nodes = [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        h.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["n1"], name="bn", is_test=1, epsilon=1e-5),
        h.make_node("Relu", ["n1"], ["r1"]),
        h.make_node("Dropout", ["r1"], ["d1"], name="dropout", is_test=1, ratio=0.3),
        h.make_node("AveragePool", ["d1"], ["a1"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
        h.make_node("Flatten", ["c2"], ["f2"], name="flatten", axis=1),
        h.make_node("Gemm", ["f2", "fc_w", "fc_b"], ["y"], name="fc", broadcast=1, transB=1),
    ]
    inits = [_init(rng, "w1", (6, 3, 3, 3)), _init(rng, "b1", (6,)), _init(rng, "s", (6,)), _init(rng, "b", (6,)),
             _init(rng, "m", (6,), scale=0.1), numpy_helper.from_array(np.ones(6, np.float32), "v"), _init(rng, "w2", (5, 6, 1, 1)),
             _init(rng, "fc_w", (3, 80)), _init(rng, "fc_b", (3,))]
    graph = h.make_graph(nodes, "opset6", [h.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 8, 8])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])], inits)
    _as_graph_inputs(graph)
    return _legacy(graph, 6)


def legacy_opset9_folded_bn() -> onnx.ModelProto:
    """IR 3 / opset 9, a legacy export with BatchNorm folded into the convs: every conv bias is
    zero, de-duplicated into ONE initializer all convs read; Upsample-9 with a scales input."""
    h, rng = onnx.helper, np.random.default_rng(9)
    nodes = [
        h.make_node("Conv", ["x", "w1", "zero"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        h.make_node("Relu", ["c1"], ["r1"]),
        h.make_node("Upsample", ["r1", "scales"], ["u1"], name="up", mode="nearest"),
        h.make_node("Conv", ["u1", "w2", "zero"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c2"], ["r2"]),
        h.make_node("Conv", ["r2", "w3", "zero"], ["y"], name="conv3", kernel_shape=[1, 1]),
    ]
    inits = [_init(rng, "w1", (8, 3, 3, 3)), _init(rng, "w2", (8, 8, 3, 3)), _init(rng, "w3", (8, 8, 1, 1)),
             numpy_helper.from_array(np.zeros(8, np.float32), "zero"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    graph = h.make_graph(nodes, "folded", [h.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 8, 8])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8, 8, 8])], inits)
    _as_graph_inputs(graph)
    return _legacy(graph, 9)


def _constant(name, array):
    return onnx.helper.make_node("Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(array, name))


def paddle_style_constants() -> onnx.ModelProto:
    """paddle2onnx style (opset 11): every weight in a Constant node, none in an initializer;
    conv + batch-norm constants, a matmul + bias head, and a post-processing Softmax + ArgMax."""
    h, rng = onnx.helper, np.random.default_rng(11)
    arr = lambda *shape: (rng.standard_normal(shape) * 0.5).astype(np.float32)  # noqa: E731 - a one-line array factory reads better inline
    nodes = [
        _constant("conv_w", arr(8, 3, 3, 3)), _constant("conv_b", arr(8)),
        h.make_node("Conv", ["image", "conv_w", "conv_b"], ["c1"], name="conv2d_0", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"], name="relu_0"),
        _constant("conv1_w", arr(8, 8, 3, 3)),
        h.make_node("Conv", ["r1", "conv1_w"], ["c2"], name="conv2d_1", pads=[1, 1, 1, 1], strides=[2, 2]),
        h.make_node("GlobalAveragePool", ["c2"], ["g"], name="pool"),
        h.make_node("Flatten", ["g"], ["f"], name="flatten"),
        _constant("fc_w", arr(8, 6)), _constant("fc_b", arr(6)),
        h.make_node("MatMul", ["f", "fc_w"], ["m"], name="linear_0.matmul"),
        h.make_node("Add", ["m", "fc_b"], ["logits"], name="linear_0.add"),
        h.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1),
        h.make_node("ArgMax", ["prob"], ["label"], name="argmax", axis=1, keepdims=0),
    ]
    graph = h.make_graph(nodes, "paddle", [h.make_tensor_value_info("image", TensorProto.FLOAT, [4, 3, 8, 8])],
                         [h.make_tensor_value_info("label", TensorProto.INT64, [4])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 11)], producer_name="PaddlePaddle")


def chained_weights() -> onnx.ModelProto:
    """Weights reached through nodes (tf2onnx / older exporters): MatMul(x, Transpose(W)),
    Conv(x, Cast(W float16)), Gemm(x, Reshape(flat W)), Conv(x, Identity(W))."""
    h, rng = onnx.helper, np.random.default_rng(13)
    nodes = [
        h.make_node("Identity", ["w0"], ["w0_id"], name="w0_identity"),
        h.make_node("Conv", ["x", "w0_id"], ["c0"], name="conv_identity", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c0"], ["r0"]),
        h.make_node("Cast", ["w1_half"], ["w1"], name="w1_cast", to=TensorProto.FLOAT),
        h.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv_cast", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"]),
        h.make_node("GlobalAveragePool", ["r1"], ["g"]),
        h.make_node("Flatten", ["g"], ["f"]),
        h.make_node("Transpose", ["w2_t"], ["w2"], name="w2_transpose", perm=[1, 0]),
        h.make_node("MatMul", ["f", "w2"], ["m"], name="matmul_transposed"),
        h.make_node("Tanh", ["m"], ["t"]),
        h.make_node("Reshape", ["w3_flat", "w3_shape"], ["w3"], name="w3_reshape"),
        h.make_node("Gemm", ["t", "w3", "b3"], ["y"], name="gemm_reshaped", transB=1),
    ]
    inits = [_init(rng, "w0", (6, 3, 3, 3)), _init(rng, "w1_half", (6, 6, 3, 3), np.float16), _init(rng, "b1", (6,)),
             _init(rng, "w2_t", (7, 6)), _init(rng, "w3_flat", (35,)), numpy_helper.from_array(np.array([5, 7], np.int64), "w3_shape"),
             _init(rng, "b3", (5,))]
    graph = h.make_graph(nodes, "chains", [h.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 8, 8])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])


def if_lstm_contrib() -> onnx.ModelProto:
    """Ops onnx2torch can't convert between the layers: LSTM, an If whose branches read an outer
    value (one holds its own MatMul layer), and com.microsoft Gelu."""
    h, rng = onnx.helper, np.random.default_rng(14)
    hidden = 8
    then_branch = h.make_graph(
        [h.make_node("MatMul", ["pooled", "inner_w"], ["then_out"], name="inner_matmul")], "then", [],
        [h.make_tensor_value_info("then_out", TensorProto.FLOAT, None)], [_init(rng, "inner_w", (hidden, hidden))])
    else_branch = h.make_graph([h.make_node("Relu", ["pooled"], ["else_out"])], "else", [],
                               [h.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    nodes = [
        h.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c"], ["r"]),
        h.make_node("Reshape", ["r", "seq_shape"], ["s"], name="to_sequence"),
        h.make_node("Transpose", ["s"], ["st"], perm=[2, 0, 1], name="time_major"),
        h.make_node("LSTM", ["st", "W", "R", "B"], ["Y"], name="lstm", hidden_size=hidden),
        h.make_node("Squeeze", ["Y", "axis1"], ["ys"], name="squeeze"),
        h.make_node("ReduceMean", ["ys"], ["pooled"], name="mean_over_time", axes=[0], keepdims=0),
        h.make_node("If", ["flag"], ["branch"], name="if", then_branch=then_branch, else_branch=else_branch),
        h.make_node("Gelu", ["branch"], ["act"], name="gelu", domain="com.microsoft"),
        h.make_node("Gemm", ["act", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    inits = [_init(rng, "cw", (4, 3, 3, 3)), _init(rng, "cb", (4,)), numpy_helper.from_array(np.array([4, 4, 16], np.int64), "seq_shape"),
             _init(rng, "W", (1, 4 * hidden, 4)), _init(rng, "R", (1, 4 * hidden, hidden)), _init(rng, "B", (1, 8 * hidden)),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"), numpy_helper.from_array(np.array(True), "flag"),
             _init(rng, "fw", (5, hidden)), _init(rng, "fb", (5,))]
    graph = h.make_graph(nodes, "if_lstm", [h.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 4, 4])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 14), h.make_opsetid("com.microsoft", 1)])


def quantized_conv() -> onnx.ModelProto:
    """A QDQ-quantized conv: DequantizeLinear of int8 weights."""
    h, rng = onnx.helper, np.random.default_rng(15)
    nodes = [
        h.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dequant_w"),
        h.make_node("Conv", ["x", "w"], ["y"], name="qconv"),
    ]
    inits = [numpy_helper.from_array(rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.array(0.01, np.float32), "ws"), numpy_helper.from_array(np.array(0, np.int8), "wz")]
    graph = h.make_graph(nodes, "q", [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])


LEGACY_BUILDERS = {
    "caffe2_opset7": legacy_opset7_classifier,
    "pytorch03_opset6": legacy_opset6_dropout_is_test,
    "legacy_opset9_folded_bn": legacy_opset9_folded_bn,
    "paddle_constants": paddle_style_constants,
    "chained_weights": chained_weights,
    "if_lstm_contrib": if_lstm_contrib,
}


# ------------------------------------------------------------------ independent checks for any producer's file


def layer_output(model: onnx.ModelProto, name: str) -> str:
    """The tensor LSUV sets for the layer named ``name`` in the log: the node's output, or for a
    MatMul read only by an Add of a stored bias, that Add's output."""
    nodes = list(model.graph.node)
    node = next(n for n in nodes if (n.name or n.output[0]) == name.split("#")[0])
    out = node.output[0]
    if node.op_type == "MatMul":
        readers = [n for n in nodes if out in n.input]
        stored = {t.name for t in model.graph.initializer} | {o for n in nodes if n.op_type == "Constant" for o in n.output}
        if len(readers) == 1 and readers[0].op_type == "Add" and any(i in stored for i in readers[0].input if i != out):
            out = readers[0].output[0]
    return out


def node_shape(node: onnx.NodeProto) -> tuple:
    """A node without its Constant ``value`` bytes (the one place a weight may live inside a node)."""
    attrs = tuple(a.SerializeToString() for a in node.attribute if not (node.op_type == "Constant" and a.name == "value"))
    return node.op_type, node.name, node.domain, tuple(node.input), tuple(node.output), attrs


def check_values_only(src: onnx.ModelProto, out: onnx.ModelProto, allow_untie: bool = False) -> None:
    """The written model is the source with only stored values changed: node list, node inputs,
    initializer names and order, inputs, outputs, opsets all as they were; Constant values keep
    their shape and type."""
    assert out.ir_version == src.ir_version and list(out.opset_import) == list(src.opset_import)
    assert [i.SerializeToString() for i in out.graph.input] == [i.SerializeToString() for i in src.graph.input] or allow_untie
    assert [o.SerializeToString() for o in out.graph.output] == [o.SerializeToString() for o in src.graph.output]
    if not allow_untie:
        assert [node_shape(n) for n in out.graph.node] == [node_shape(n) for n in src.graph.node]
        assert [t.name for t in out.graph.initializer] == [t.name for t in src.graph.initializer]
    for a, b in zip(src.graph.initializer, out.graph.initializer):
        assert (a.name, a.data_type, list(a.dims)) == (b.name, b.data_type, list(b.dims))
    for a, b in zip(src.graph.node, out.graph.node):
        if a.op_type == "Constant":
            ta, tb = (next(x.t for x in n.attribute if x.name == "value") for n in (a, b))
            assert (ta.data_type, list(ta.dims)) == (tb.data_type, list(tb.dims))


def ort_layer_variances(model: onnx.ModelProto, feeds_: dict, names: list[str]) -> dict[str, float]:
    """Each named layer's output variance, by onnxruntime (opset < 7 lifted by onnx's converter first)."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    runnable = onnx.version_converter.convert_version(model, 7) if opset < 7 else model
    outputs = {n: layer_output(model, n) for n in names}
    values = ort_values(runnable, feeds_, list(outputs.values()))
    return {n: float(np.var(values[t].astype(np.float64))) for n, t in outputs.items()}


# ------------------------------------------------------------------ torch models with post-processing


class TinyDetector(torch.nn.Module):
    """A detection head with torchvision's post-processing: box decoding, NMS, TopK (all after the
    last layer, so none of it is converted)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.body = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.boxes = torch.nn.Conv2d(8, 4, 1)
        self.scores = torch.nn.Conv2d(8, 1, 1)

    def forward(self, x):
        import torchvision

        f = torch.relu(self.body(torch.relu(self.stem(x))))
        b = self.boxes(f)[0].flatten(1).t()
        s = torch.sigmoid(self.scores(f)[0].flatten())
        boxes = torch.cat([b[:, :2], b[:, :2] + torch.exp(b[:, 2:])], dim=1)
        keep = torchvision.ops.nms(boxes, s, 0.7)
        top, order = torch.topk(s[keep], 3)
        return boxes[keep][order], top


def tiny_segmenter():
    """torchvision's LR-ASPP MobileNetV3 (random weights) with an ArgMax over classes after it."""
    import torchvision

    class Segmenter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)

        def forward(self, x):
            return self.net(x)["out"].argmax(1)

    return Segmenter()


def export_postprocessing(folder: Path) -> dict[str, Path]:
    """Detection and segmentation exports with post-processing (TorchScript exporter, opset 17)."""
    torch.manual_seed(0)
    made = {}
    for name, module, x in (("detector_nms", TinyDetector(), torch.randn(1, 3, 16, 16)),
                            ("lraspp_argmax", tiny_segmenter(), torch.randn(2, 3, 64, 64))):
        path = export_module(module, x, folder / f"{name}.onnx", "ts17")
        np.save(path.with_suffix(".npy"), x.numpy())
        made[name] = path
    return made


# ------------------------------------------------------------------ transformers from configs (random weights, no hub)


def transformer_models() -> dict[str, Callable]:
    """name -> () -> (model, example inputs by name). Tiny configs: 2 layers, hidden 16-32."""
    def bert():
        import transformers as T
        cfg = T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64)
        return T.BertModel(cfg), {"input_ids": torch.randint(0, 100, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.int64)}

    def gpt2():
        import transformers as T
        cfg = T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)
        return T.GPT2Model(cfg), {"input_ids": torch.randint(0, 100, (2, 8))}

    def vit():
        import transformers as T
        cfg = T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        return T.ViTModel(cfg), {"pixel_values": torch.randn(2, 3, 32, 32)}

    def wav2vec2():
        import transformers as T
        cfg = T.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
                               conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                               feat_extract_norm="layer", do_stable_layer_norm=True)
        return T.Wav2Vec2Model(cfg), {"input_values": torch.randn(2, 400)}

    def segformer():
        import transformers as T
        cfg = T.SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                                patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                                decoder_hidden_size=32, num_labels=3)
        return T.SegformerForSemanticSegmentation(cfg), {"pixel_values": torch.randn(2, 3, 32, 32)}

    def whisper_encoder():
        import transformers as T
        from transformers.models.whisper.modeling_whisper import WhisperEncoder
        cfg = T.WhisperConfig(vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                              num_mel_bins=16, encoder_layers=2, decoder_layers=1, d_model=32, encoder_attention_heads=2,
                              decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=16,
                              max_target_positions=16)
        return WhisperEncoder(cfg), {"input_features": torch.randn(2, 16, 32)}

    return {"bert": bert, "gpt2": gpt2, "vit": vit, "wav2vec2": wav2vec2, "segformer": segformer, "whisper_encoder": whisper_encoder}


class _FirstOutput(torch.nn.Module):
    """Positional inputs -> the model's keyword inputs; its first output (last hidden state / logits)."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args)))[0]


def export_transformer(name: str, exporter: str, folder: Path) -> Path:
    """Export one of :func:`transformer_models` with ``exporter`` ("ts17" or "dy18"); the inputs
    are saved beside it as NAME.npz (integer ids and masks as integers). Raises what torch raises."""
    torch.manual_seed(0)
    model, inputs = transformer_models()[name]()
    wrapper = _FirstOutput(model.eval(), inputs).eval()
    path = folder / f"{name}_{exporter}.onnx"
    kwargs = dict(EXPORTERS[exporter], input_names=list(inputs))
    if kwargs.get("dynamo"):
        kwargs["verbose"] = False
    with quiet():
        torch.onnx.export(wrapper, tuple(inputs.values()), str(path), **kwargs)
    np.savez(path.with_suffix(".npz"), **{k: v.numpy() for k, v in inputs.items()})
    return path
