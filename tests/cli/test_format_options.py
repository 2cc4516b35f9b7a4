"""Format options belong to their format: one that a format doesn't take is a usage error, named,
before the file is read (never silently ignored); the ones it takes still work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from lsuv_convert.errors import UsageError
from lsuv_convert.formats import get_format
from lsuv_convert.formats.contract import LoadRequest

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


@pytest.mark.parametrize("model, options, flag", [
    ("fitnet1.onnx", ["--arch", "torchvision:resnet18"], "--arch"),
    ("fitnet1.onnx", ["--stage", "deploy"], "--stage"),
    ("small_tanh.pt", ["--stage", "deploy"], "--stage"),
    ("small_tanh.pt", ["--weights", "w.caffemodel"], "--weights"),
    ("fitnet_mnist.prototxt", ["--arch", "torchvision:resnet18"], "--arch"),
])
def test_an_option_the_format_does_not_take_is_a_usage_error(tmp_path, model, options, flag):
    shutil.copy(SAMPLES / model, tmp_path / model)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(tmp_path / model, *options, "-o", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lsuv-convert: error:"), result.stderr
    assert flag in lines[0] and "does not apply" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_inspect_and_verify_refuse_it_too(tmp_path, command):
    shutil.copy(SAMPLES / "fitnet1.onnx", tmp_path / "m.onnx")
    result = run_cli(command, tmp_path / "m.onnx", "--arch", "torchvision:resnet18")
    assert result.returncode == 2 and "--arch does not apply to this onnx model" in result.stderr


def test_every_plugin_declares_only_request_fields():
    from dataclasses import fields

    from lsuv_convert.formats import all_formats

    known = {f.name for f in fields(LoadRequest) if "flag" in f.metadata}
    for fmt in all_formats().values():
        assert fmt.options <= known, (fmt.name, fmt.options - known)


def test_the_check_happens_before_the_file_is_read(tmp_path):
    missing = tmp_path / "absent.onnx"  # reading it would fail with "not found"
    with pytest.raises(UsageError, match="--stage"):
        get_format("onnx").load(missing, LoadRequest(stages=("train",)))


def test_options_a_format_takes_still_pass():
    request = LoadRequest(stages=("deploy",))
    assert request.set_options() == ["stages"]
    loaded = get_format("caffe").load(SAMPLES / "fitnet_mnist.prototxt", request)
    assert loaded.request.stages == ("deploy",)
