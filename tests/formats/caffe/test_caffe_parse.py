"""Reading prototxts: text format with line numbers, the schema's field numbers, solvers,
phases, V1 nets, legacy inputs and data layers. No torch graph is built here."""

from __future__ import annotations

import pytest

from caffe_helpers import shared_model, shared_params, MODELS, caffe_format, write_text
from lsuv_convert.errors import ModelFormatError
from lsuv_convert.formats.caffe.parse import TEST, TRAIN, included, read_model
from lsuv_convert.formats.caffe.schema import caffe_pb
from lsuv_convert.formats.caffe.textformat import BindContext, TextFormatError, bind, parse_text

CONV = 'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }\n'


def _net(text: str):
    net = caffe_pb.NetParameter()
    bind(net, parse_text(text), BindContext())
    return net


# -- text format ---------------------------------------------------------------------------

def test_text_format_syntax_variants():
    text = """
    # comment line
    name: 'quoted' "and joined"   # adjacent strings concatenate
    input: "data";  input_dim: [1, 3, 0x10, 020]
    layer <
      name: "c\\x41\\n"  type: "Convolution"  bottom: "data"  top: "c"
      convolution_param: { num_output: 2 kernel_size: 1 bias_term: false }
    >
    layer { name: "r" type: "ReLU" bottom: "c" top: "c" relu_param { negative_slope: -.5e-1 } }
    layer { name: "p" type: "Power" bottom: "c" top: "q" power_param { power: 2 shift: inf scale: 1f } }
    """
    net = _net(text)
    assert net.name == "quotedand joined"
    assert list(net.input_dim) == [1, 3, 16, 16]  # hex and octal integers
    assert net.layer[0].name == "cA\n"
    assert net.layer[0].convolution_param.bias_term is False
    assert net.layer[1].relu_param.negative_slope == pytest.approx(-0.05)
    assert net.layer[2].power_param.shift == float("inf")
    assert net.layer[2].power_param.scale == 1.0


@pytest.mark.parametrize("text, line, fragment", [
    ('name: "x"\nlayer {\n  name: "a"\n', 4, "missing '}' of 'layer' opened at line 2"),
    ('layer { name: "a" }\n}\n', 2, "unmatched '}'"),
    ('layer { name "a" }\n', 1, "expected ':' or '{'"),
    ('name: "x"\n\nlayer { name: "a" top: }\n', 3, "expected a value for 'top'"),
    ('name: "x"\n  @layer\n', 2, "unexpected character"),
    ('name: "unterminated\n', 1, "unexpected character"),
])
def test_syntax_errors_name_the_line(tmp_path, text, line, fragment):
    path = write_text(tmp_path, "bad.prototxt", text)
    with pytest.raises(ModelFormatError) as err:
        read_model(path)
    message = str(err.value)
    assert f"line {line}" in message and fragment in message
    assert message.startswith(str(path))
    assert "\n" not in message


@pytest.mark.parametrize("snippet, fragment", [
    ('convolution_param { num_ouput: 4 kernel_size: 3 }', "layer 'conv': convolution_param has no field 'num_ouput'"),
    ('convolution_param { num_output: "4" kernel_size: 3 }', "'num_output' takes an integer"),
    ('convolution_param { num_output: 4.5 kernel_size: 3 }', "'num_output' takes an integer"),
    ('convolution_param { num_output: -4 kernel_size: 3 }', "'num_output' takes a non-negative integer"),
    ('convolution_param { num_output: 4 kernel_size: 3 bias_term: maybe }', "'bias_term' takes true or false"),
    ('convolution_param { num_output: 4 kernel_size: 3 engine: FAST }', "'engine' takes one of DEFAULT, CAFFE, CUDNN"),
    ('convolution_param { num_output: 4 num_output: 5 kernel_size: 3 }', "'num_output' is given more than once"),
    ('convolution_param: 3', "'convolution_param' is a block"),
    ('botom: "data"', "the layer has no field 'botom'"),
])
def test_schema_errors_name_layer_line_and_field(tmp_path, snippet, fragment):
    text = 'name: "x"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n' \
           f'layer {{\n  name: "conv"\n  type: "Convolution"\n  bottom: "data"\n  top: "conv"\n  {snippet}\n}}\n'
    path = write_text(tmp_path, "bad.prototxt", text)
    with pytest.raises(ModelFormatError) as err:
        read_model(path)
    assert "line 9" in str(err.value) and fragment in str(err.value)


def test_text_format_error_has_position():
    with pytest.raises(TextFormatError) as err:
        parse_text('a: 1\nb {\n c: [1, 2 3]\n}')
    assert err.value.line == 3 and err.value.column is not None


def test_unknown_parameter_blocks_and_training_fields_are_skipped(tmp_path):
    text = """
    name: "skips"
    layer { name: "data" type: "Data" top: "data" top: "label"
            data_param { source: "lmdb" batch_size: 64 backend: LMDB unknown_fork_field { a: 1 } }
            transform_param { scale: 0.00390625 mirror: true fork_only: [1, 2] } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
            convolution_param { num_output: 4 kernel_size: 3
                                weight_filler { type: "xavier" variance_norm: AVERAGE } bias_filler { type: "constant" } } }
    layer { name: "fork" type: "ReLU" bottom: "conv" top: "conv" quantization_param { bits: 8 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss"
            loss_param { ignore_label: 255 normalization: VALID } loss_weight: 1 }
    """
    parsed = read_model(write_text(tmp_path, "n.prototxt", text))
    assert [e.layer.name for e in parsed.layers] == ["conv"]
    assert [e.layer.name for e in parsed.tail] == ["fork"]  # after the last target: left out
    assert parsed.net.layer[1].convolution_param.weight_filler.variance_norm == 2


@pytest.mark.parametrize("name", shared_params(sorted(p.name for p in MODELS.glob("*.prototxt"))))
def test_real_prototxts_parse(name):
    parsed = read_model(shared_model(name))
    assert parsed.layers and parsed.inputs and parsed.outputs
    assert all(e.line for e in parsed.layers)
    assert caffe_format().sniff(shared_model(name))


# -- the schema's field numbers ------------------------------------------------------------

FIELD_NUMBERS = {  # BVLC caffe.proto, as listed in docs/design.md
    "NetParameter": {"name": 1, "layers": 2, "input": 3, "input_dim": 4, "input_shape": 8, "layer": 100},
    "LayerParameter": {"name": 1, "type": 2, "bottom": 3, "top": 4, "loss_weight": 5, "param": 6, "blobs": 7,
                       "include": 8, "exclude": 9, "phase": 10, "concat_param": 104, "convolution_param": 106,
                       "dropout_param": 108, "eltwise_param": 110, "inner_product_param": 117, "lrn_param": 118,
                       "pooling_param": 121, "relu_param": 123, "softmax_param": 125, "flatten_param": 135,
                       "batch_norm_param": 139, "scale_param": 142, "input_param": 143},
    "BlobProto": {"num": 1, "channels": 2, "height": 3, "width": 4, "data": 5, "diff": 6, "shape": 7,
                  "double_data": 8, "double_diff": 9},
    "BlobShape": {"dim": 1},
    "ConvolutionParameter": {"num_output": 1, "bias_term": 2, "pad": 3, "kernel_size": 4, "group": 5, "stride": 6,
                             "pad_h": 9, "pad_w": 10, "kernel_h": 11, "kernel_w": 12, "stride_h": 13,
                             "stride_w": 14, "axis": 16, "dilation": 18},
    "InnerProductParameter": {"num_output": 1, "bias_term": 2, "axis": 5, "transpose": 6},
    "PoolingParameter": {"pool": 1, "kernel_size": 2, "stride": 3, "pad": 4, "kernel_h": 5, "kernel_w": 6,
                         "stride_h": 7, "stride_w": 8, "pad_h": 9, "pad_w": 10, "global_pooling": 12,
                         "round_mode": 13},
    "NetStateRule": {"phase": 1},
    "LRNParameter": {"local_size": 1, "alpha": 2, "beta": 3, "norm_region": 4, "k": 5},
    "BatchNormParameter": {"use_global_stats": 1, "eps": 3},
    "ScaleParameter": {"axis": 1, "num_axes": 2, "bias_term": 4},
    "EltwiseParameter": {"operation": 1, "coeff": 2},
    "ConcatParameter": {"axis": 2},
    "V1LayerParameter": {"bottom": 2, "top": 3, "name": 4, "type": 5, "blobs": 6, "concat_param": 9,
                         "convolution_param": 10, "dropout_param": 12, "inner_product_param": 17, "lrn_param": 18,
                         "pooling_param": 19, "eltwise_param": 24},
}


@pytest.mark.parametrize("message", sorted(FIELD_NUMBERS))
def test_field_numbers_are_caffes(message):
    fields = getattr(caffe_pb, message).DESCRIPTOR.fields_by_name
    assert {name: fields[name].number for name in FIELD_NUMBERS[message]} == FIELD_NUMBERS[message]


def test_enum_values_and_defaults_are_caffes():
    layer = caffe_pb.LayerParameter()
    assert layer.convolution_param.bias_term is True and layer.convolution_param.group == 1
    assert layer.pooling_param.pool == 0 and layer.pooling_param.stride == 1  # MAX
    assert layer.eltwise_param.operation == 1  # SUM
    assert layer.lrn_param.local_size == 5 and layer.lrn_param.beta == pytest.approx(0.75)
    assert layer.batch_norm_param.eps == pytest.approx(1e-5)
    v1 = caffe_pb.V1LayerParameter.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_name
    assert (v1["CONVOLUTION"].number, v1["INNER_PRODUCT"].number, v1["POOLING"].number, v1["RELU"].number) == (4, 14, 17, 18)


def test_binary_encoding_uses_caffes_wire_numbers():
    net = caffe_pb.NetParameter(name="n")
    layer = net.layer.add(name="c", type="Convolution")
    layer.blobs.add(shape=caffe_pb.BlobShape(dim=[2, 3]), data=[1.0] * 6)
    raw = net.SerializeToString()
    assert raw.startswith(b"\x0a\x01n")  # field 1, length 1, "n"
    assert b"\xa2\x06" in raw  # field 100 (layer), wire type 2: varint 802
    parsed = caffe_pb.NetParameter.FromString(raw)
    assert list(parsed.layer[0].blobs[0].shape.dim) == [2, 3]


# -- nets, solvers, phases -----------------------------------------------------------------

def test_legacy_inputs(tmp_path):
    dims = 'input: "a"\ninput_dim: 5\ninput_dim: 3\ninput_dim: 8\ninput_dim: 9\n'
    shape = 'input: "a"\ninput_shape { dim: 5 dim: 3 dim: 8 dim: 9 }\n'
    for text in (dims, shape):
        parsed = read_model(write_text(tmp_path, "n.prototxt", text + CONV.replace('"data"', '"a"', 1)))
        assert [(i.name, i.shape) for i in parsed.inputs] == [("a", (None, 3, 8, 9))]
    bad = 'input: "a"\ninput_dim: 1\ninput_dim: 3\n' + CONV
    with pytest.raises(ModelFormatError, match="need 4 input_dim values"):
        read_model(write_text(tmp_path, "bad.prototxt", bad))


def test_phase_rules():
    rule_layer = caffe_pb.LayerParameter()
    rule_layer.include.add(phase=TRAIN)
    assert not included(rule_layer, TEST) and included(rule_layer, TRAIN)
    stage_layer = caffe_pb.LayerParameter()
    stage_layer.exclude.add(stage=["deploy"])
    assert included(stage_layer, TEST) and not included(stage_layer, TEST, stages={"deploy"})
    level_layer = caffe_pb.LayerParameter()
    level_layer.include.add(min_level=1)
    assert not included(level_layer, TEST, level=0) and included(level_layer, TEST, level=2)


def test_train_val_net_uses_test_phase_and_drops_losses(tmp_path):
    parsed = read_model(shared_model("lenet_train_test.prototxt"))
    assert parsed.kind == "train_val"
    assert [i.name for i in parsed.inputs] == ["data"]  # the label feeds only the loss and accuracy
    assert parsed.inputs[0].shape == (None, None, None, None)
    assert [e.layer.type for e in parsed.layers].count("Convolution") == 2
    assert parsed.outputs == ["ip2"]
    assert any("loss/accuracy" in n for n in parsed.notes)


def test_data_layer_shapes_and_dependent_layers(tmp_path):
    text = """
    name: "dummy"
    layer { name: "d" type: "DummyData" top: "data" top: "label"
            dummy_data_param { shape { dim: 8 dim: 3 dim: 10 dim: 12 } shape { dim: 8 } } }
    layer { name: "img" type: "ImageData" top: "img" top: "img_label" include { phase: TRAIN }
            image_data_param { source: "list.txt" new_height: 32 new_width: 32 } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "prob" type: "Softmax" bottom: "conv" top: "prob" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "prob" bottom: "label" top: "loss" }
    layer { name: "loss_scaled" type: "Power" bottom: "loss" top: "loss2" }
    """
    parsed = read_model(write_text(tmp_path, "n.prototxt", text))
    assert [(i.name, i.shape) for i in parsed.inputs] == [("data", (None, 3, 10, 12))]
    assert [e.layer.name for e in parsed.layers + parsed.tail] == ["conv", "prob"]
    assert any("loss_scaled" in n for n in parsed.notes)


@pytest.mark.parametrize("text, fragment", [
    ('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
     'layer { name: "c" type: "ReLU" bottom: "nothing" top: "c" }\n', "bottom 'nothing' is not produced"),
    ('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
     'layer { name: "a" type: "ReLU" bottom: "data" top: "x" }\nlayer { name: "b" type: "TanH" bottom: "data" top: "x" }\n',
     "top 'x' is already produced by layer 'a'"),
    ('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\nlayer { name: "a" bottom: "data" top: "x" }\n',
     "has no type"),
])
def test_wiring_errors(tmp_path, text, fragment):
    with pytest.raises(ModelFormatError, match=fragment):
        read_model(write_text(tmp_path, "n.prototxt", text))


def test_solver_with_inline_net_param():
    parsed = read_model(shared_model("fitnet_mnist_lsuv_solver.prototxt"))
    assert parsed.kind == "solver" and parsed.phase == TEST
    assert parsed.net.name == "FitNet_MNIST"
    assert [i.name for i in parsed.inputs] == ["data"]
    assert parsed.layers[0].line > 20  # lines count in the solver file


def test_solver_net_path_relative_to_the_solver(tmp_path):
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "train_val.prototxt").write_text((shared_model("lenet_train_test.prototxt")).read_text())
    solver = write_text(tmp_path, "solver.prototxt", 'net: "nets/train_val.prototxt"\nbase_lr: 0.01\n'
                                                     'lr_policy: "inv"\nsolver_mode: CPU\ntest_iter: 100\n')
    parsed = read_model(solver)
    assert parsed.path == tmp_path / "nets" / "train_val.prototxt" and parsed.source == solver
    assert [e.layer.name for e in parsed.layers][:2] == ["conv1", "pool1"]
    missing = write_text(tmp_path, "solver2.prototxt", 'net: "nowhere.prototxt"\nbase_lr: 0.1\n')
    with pytest.raises(ModelFormatError, match="nowhere.prototxt"):
        read_model(missing)


def test_solver_prefers_test_net_and_falls_back_to_train_net(tmp_path):
    body = "\n".join(line for line in (shared_model("lenet.prototxt")).read_text().splitlines() if not line.startswith("name:"))
    both = f'base_lr: 0.1\ntrain_net_param {{ name: "train" {body} }}\ntest_net_param {{ name: "test" {body} }}\n'
    assert read_model(write_text(tmp_path, "a.prototxt", both)).net.name == "test"
    train_only = read_model(write_text(tmp_path, "b.prototxt", f'base_lr: 0.1\ntrain_net_param {{ {body} }}\n'))
    assert train_only.phase == TRAIN and any("train net" in n for n in train_only.notes)
    with pytest.raises(ModelFormatError, match="names no net"):
        read_model(write_text(tmp_path, "c.prototxt", "base_lr: 0.1\nmax_iter: 10\n"))


V1_NET = """
name: "v1"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 12 input_dim: 12
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         weight_decay: 1 weight_decay: 0 param: "shared_w"
         convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.01 } } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1" inner_product_param { num_output: 5 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip1" bottom: "label" top: "loss" include { phase: TRAIN } }
layers { name: "prob" type: SOFTMAX bottom: "ip1" top: "prob" include: { phase: TEST } }
"""


def test_v1_layers_are_upgraded(tmp_path):
    parsed = read_model(write_text(tmp_path, "v1.prototxt", V1_NET))
    assert [(e.layer.name, e.layer.type) for e in parsed.layers + parsed.tail] == [
        ("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"), ("ip1", "InnerProduct"), ("prob", "Softmax")]
    conv = parsed.layers[0].layer
    assert [(p.name, p.lr_mult, p.decay_mult) for p in conv.param] == [("shared_w", 1, 1), ("", 2, 0)]
    assert conv.convolution_param.weight_filler.std == pytest.approx(0.01)
    assert parsed.layers[0].line == 5


def test_v0_and_mixed_formats_are_refused(tmp_path):
    v0 = 'layers { layer { name: "conv1" type: "conv" num_output: 4 } bottom: "data" top: "conv1" }\n'
    with pytest.raises(ModelFormatError, match="V0"):
        read_model(write_text(tmp_path, "v0.prototxt", 'input: "data"\n' + v0))
    mixed = V1_NET + CONV
    with pytest.raises(ModelFormatError, match="mixes V1"):
        read_model(write_text(tmp_path, "mixed.prototxt", mixed))


def test_sniff(tmp_path):
    fmt = caffe_format()
    assert fmt.sniff(shared_model("fitnet4_relu_lsuv_solver.prototxt"))
    assert not fmt.sniff(write_text(tmp_path, "notes.prototxt", "just some words\n"))
    binary = tmp_path / "w.prototxt"
    binary.write_bytes(b"\x0a\x03abc\x00\x01layer {")
    assert not fmt.sniff(binary)
    with pytest.raises(ModelFormatError, match="binary file"):
        read_model(binary)
    with pytest.raises(ModelFormatError, match="empty"):
        read_model(write_text(tmp_path, "empty.prototxt", "# nothing\n"))
