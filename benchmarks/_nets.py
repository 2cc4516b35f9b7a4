"""Caffe nets for the benchmarks, written out here so that the benchmarks need nothing beside
the repository: CaffeNet (BVLC's reference net: 61 M parameters, most in fc6/fc7) and ResNet-50
(He et al.'s deploy layout: BatchNorm + Scale after every convolution, Eltwise sums)."""

from __future__ import annotations


def _layer(name: str, kind: str, bottoms, tops, body: str = "") -> str:
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    tops = [tops] if isinstance(tops, str) else tops
    lines = [f'layer {{ name: "{name}" type: "{kind}"']
    lines += [f' bottom: "{b}"' for b in bottoms] + [f' top: "{t}"' for t in tops]
    if body:
        lines.append(" " + body)
    return "".join(lines) + " }\n"


def _input(shape) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'


def _conv(name, bottom, out, kernel, stride=1, pad=0, group=1, bias=True) -> str:
    extra = (f" stride: {stride}" if stride != 1 else "") + (f" pad: {pad}" if pad else "") + \
            (f" group: {group}" if group != 1 else "") + ("" if bias else " bias_term: false")
    return _layer(name, "Convolution", bottom, name, f"convolution_param {{ num_output: {out} kernel_size: {kernel}{extra} }}")


def _pool(name, bottom, kind, kernel, stride, pad=0, global_pooling=False) -> str:
    if global_pooling:
        return _layer(name, "Pooling", bottom, name, f"pooling_param {{ pool: {kind} global_pooling: true }}")
    pad_text = f" pad: {pad}" if pad else ""
    return _layer(name, "Pooling", bottom, name, f"pooling_param {{ pool: {kind} kernel_size: {kernel} stride: {stride}{pad_text} }}")


def caffenet(batch: int = 10) -> str:
    text = 'name: "CaffeNet"\n' + _input((batch, 3, 227, 227))
    text += _conv("conv1", "data", 96, 11, stride=4) + _layer("relu1", "ReLU", "conv1", "conv1")
    text += _pool("pool1", "conv1", "MAX", 3, 2)
    text += _layer("norm1", "LRN", "pool1", "norm1", "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")
    text += _conv("conv2", "norm1", 256, 5, pad=2, group=2) + _layer("relu2", "ReLU", "conv2", "conv2")
    text += _pool("pool2", "conv2", "MAX", 3, 2)
    text += _layer("norm2", "LRN", "pool2", "norm2", "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")
    text += _conv("conv3", "norm2", 384, 3, pad=1) + _layer("relu3", "ReLU", "conv3", "conv3")
    text += _conv("conv4", "conv3", 384, 3, pad=1, group=2) + _layer("relu4", "ReLU", "conv4", "conv4")
    text += _conv("conv5", "conv4", 256, 3, pad=1, group=2) + _layer("relu5", "ReLU", "conv5", "conv5")
    text += _pool("pool5", "conv5", "MAX", 3, 2)
    bottom = "pool5"
    for i, out in ((6, 4096), (7, 4096)):
        text += _layer(f"fc{i}", "InnerProduct", bottom, f"fc{i}", f"inner_product_param {{ num_output: {out} }}")
        text += _layer(f"relu{i}", "ReLU", f"fc{i}", f"fc{i}")
        text += _layer(f"drop{i}", "Dropout", f"fc{i}", f"fc{i}", "dropout_param { dropout_ratio: 0.5 }")
        bottom = f"fc{i}"
    text += _layer("fc8", "InnerProduct", bottom, "fc8", "inner_product_param { num_output: 1000 }")
    return text + _layer("prob", "Softmax", "fc8", "prob")


def _conv_bn(name, bottom, out, kernel, stride=1, pad=0, relu=True) -> str:
    text = _conv(name, bottom, out, kernel, stride, pad, bias=False)
    text += _layer(f"bn_{name}", "BatchNorm", name, name, "batch_norm_param { use_global_stats: true }")
    text += _layer(f"scale_{name}", "Scale", name, name, "scale_param { bias_term: true }")
    return text + (_layer(f"{name}_relu", "ReLU", name, name) if relu else "")


def resnet50(batch: int = 1) -> str:
    text = 'name: "ResNet-50"\n' + _input((batch, 3, 224, 224))
    text += _conv_bn("conv1", "data", 64, 7, stride=2, pad=3) + _pool("pool1", "conv1", "MAX", 3, 2)
    bottom = "pool1"
    for stage, (blocks, mid) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), start=2):
        for block in range(blocks):
            name = f"res{stage}{chr(ord('a') + block)}"
            stride = 2 if block == 0 and stage > 2 else 1
            shortcut = bottom
            if block == 0:
                text += _conv_bn(f"{name}_branch1", bottom, mid * 4, 1, stride, relu=False)
                shortcut = f"{name}_branch1"
            text += _conv_bn(f"{name}_branch2a", bottom, mid, 1, stride)
            text += _conv_bn(f"{name}_branch2b", f"{name}_branch2a", mid, 3, 1, 1)
            text += _conv_bn(f"{name}_branch2c", f"{name}_branch2b", mid * 4, 1, relu=False)
            text += _layer(name, "Eltwise", [shortcut, f"{name}_branch2c"], name)
            text += _layer(f"{name}_relu", "ReLU", name, name)
            bottom = name
    text += _pool("pool5", bottom, "AVE", 0, 0, global_pooling=True)
    text += _layer("fc1000", "InnerProduct", "pool5", "fc1000", "inner_product_param { num_output: 1000 }")
    return text + _layer("prob", "Softmax", "fc1000", "prob")
