"""The Caffe converter registry: one converter per layer type, a second registration refused."""

from __future__ import annotations

import pytest

from lsuv_convert.formats.caffe.layers import CONVERTERS, converter


def test_a_second_converter_for_a_type_is_refused():
    before = dict(CONVERTERS)

    def other_relu(ctx, bottoms):
        return bottoms

    with pytest.raises(ValueError) as info:
        converter("ReLU")(other_relu)
    message = str(info.value)
    assert "'ReLU' already has a converter" in message and "activations.relu" in message and "other_relu" in message
    with pytest.raises(ValueError):  # refused as a whole: the new type listed with it is not registered either
        converter("BrandNewLayer", "Convolution")(other_relu)
    assert CONVERTERS == before


def test_a_type_listed_twice_is_refused():
    with pytest.raises(ValueError):
        converter("AnotherNewLayer", "AnotherNewLayer")(lambda ctx, bottoms: bottoms)
    assert "AnotherNewLayer" not in CONVERTERS


def test_every_family_registers_its_layers():
    families = {fn.__module__.rsplit(".", 1)[-1] for fn in CONVERTERS.values()}
    assert families == {"activations", "arithmetic", "conv", "normalization", "parameters", "pooling", "recurrent",
                        "resize", "shape"}
    for kind in ("Convolution", "Deconvolution", "InnerProduct", "Pooling", "BatchNorm", "Scale", "ReLU", "Eltwise",
                 "Concat", "Crop", "Upsample", "Interp", "Permute", "Normalize", "LSTM", "Embed"):
        assert kind in CONVERTERS, kind
