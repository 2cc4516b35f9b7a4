"""A deploy prototxt for a parsed net: the TEST-phase layers, with data layers (or legacy
``input:`` fields) turned into ``Input`` layers of the batch's shape and loss / accuracy
layers gone. Train/val and solver files need one before OpenCV (or ``caffe.Net`` in TEST
mode) can run the weights this tool writes."""

from __future__ import annotations

from google.protobuf import text_format

from .parse import ParsedNet
from .schema import caffe_pb


def deploy_net(parsed: ParsedNet, input_shapes: dict[str, tuple[int, ...]], *, for_opencv: bool = False):
    """The deploy NetParameter; ``input_shapes`` gives each input's full shape (batch included).

    ``for_opencv`` spells Pooling's rounding as OpenCV's ``ceil_mode`` (OpenCV's schema has no
    ``round_mode`` and stops reading a layer at a field it doesn't know) and writes the depthwise
    forks' layers as the grouped Convolution they are.
    """
    net = caffe_pb.NetParameter(name=parsed.net.name)
    taken = {e.layer.name for e in parsed.layers}
    groups: dict[str, list] = {}
    for inp in parsed.inputs:
        key = inp.layer or inp.name
        if inp.layer is None and key in taken:
            key = f"{key}_input"
        groups.setdefault(key, []).append(inp)
    for layer_name, members in groups.items():
        layer = net.layer.add(name=layer_name, type="Input")
        for inp in members:
            layer.top.append(inp.name)
            shape = input_shapes[inp.name]
            layer.input_param.shape.add(dim=[int(d) for d in shape])
    for entry in parsed.layers:
        layer = net.layer.add()
        layer.CopyFrom(entry.layer)
        for name in ("include", "exclude"):
            layer.ClearField(name)
        layer.ClearField("phase")
        if for_opencv and layer.type in ("ConvolutionDepthwise", "DepthwiseConvolution"):
            # OpenCV knows only Convolution: the same blob with group = channels (= num_output
            # for the common channel multiplier 1, when the prototxt leaves group out).
            layer.type = "Convolution"
            if not layer.convolution_param.HasField("group") or layer.convolution_param.group == 1:
                layer.convolution_param.group = layer.convolution_param.num_output
        if for_opencv and layer.HasField("pooling_param"):
            p = layer.pooling_param
            if p.HasField("round_mode"):
                ceil = p.round_mode == 0
                p.ClearField("round_mode")
                p.ceil_mode = ceil
    return net


def deploy_text(parsed: ParsedNet, input_shapes: dict[str, tuple[int, ...]], *, for_opencv: bool = False) -> str:
    return text_format.MessageToString(deploy_net(parsed, input_shapes, for_opencv=for_opencv))
