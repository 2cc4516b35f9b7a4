"""The real Caffe nets of shared/models/caffe through the CLI, checked by OpenCV.

For each: ``lsuv-convert`` exits 0; OpenCV (its own Caffe reader and runtime) runs the deploy
prototxt with the written .caffemodel on the batch, and every Convolution / InnerProduct /
Deconvolution output has variance within tol of 1; and the torch graph built from the same
files computes what OpenCV computes (every target layer and the net outputs, rtol 1e-4).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from caffe_helpers import needs_opencv, shared_model, shared_params, assert_close, caffe_format, cases, opencv_run, seeded_batch, torch_layer_outputs
from conftest import run_cli


TOL = 0.02
SLOW = {"caffenet_deploy.prototxt", "googlenet_deploy.prototxt", "resnet50_deploy.prototxt",
        "densenet121_deploy.prototxt"}


def _params():
    return shared_params(cases(), slow=SLOW)


def _deploy_for(name: str, case: dict, tmp_path, shape) -> object:
    """The prototxt OpenCV reads: the file itself, its deploy twin, or one derived from it."""
    if "deploy" in case:
        return shared_model(case["deploy"])
    if case.get("twin"):  # a solver file: derive the deploy net (TEST phase, data layer -> Input)
        from lsuv_convert.formats.caffe.deploy import deploy_text
        from lsuv_convert.formats.caffe.parse import read_model

        parsed = read_model(shared_model(name))
        path = tmp_path / "deploy.prototxt"
        text = deploy_text(parsed, {i.name: tuple(shape) for i in parsed.inputs}, for_opencv=True)
        assert 'type: "Input"' in text and 'type: "Data"' not in text and "Loss" not in text and "Accuracy" not in text
        path.write_text(text)
        return path
    return shared_model(name)


def _layer_names(prototxt) -> set[str]:
    from lsuv_convert.formats.caffe.parse import read_model

    return {e.layer.name for e in read_model(prototxt).layers}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """One CLI run per group of nets (fast / slow), as a user converting a folder would: each
    prototxt copied beside its batch (NAME.npy, the CLI's sidecar), logs in a folder. Returns
    a function giving (exit status, stderr, folder) of the group a net belongs to."""
    runs: dict[bool, tuple] = {}

    def run(name: str):
        slow = name in SLOW
        if slow not in runs:
            folder = tmp_path_factory.mktemp("slow" if slow else "fast")
            names = [n for n in cases() if (n in SLOW) == slow]
            for n in names:
                (folder / n).write_text((shared_model(n)).read_text())
                np.save(folder / n.replace(".prototxt", ".npy"), seeded_batch(cases()[n]["shape"], seed=1))
            logs = folder / "logs"
            result = run_cli(*[folder / n for n in names], "--log", logs, "--seed", 3, "--device", "cpu", "-q")
            runs[slow] = (result.returncode, result.stderr, folder)
        return runs[slow]

    return run


@needs_opencv
@pytest.mark.parametrize("name", _params())
def test_real_net_through_cli_and_opencv(tmp_path, converted, name):
    import torch

    case = cases()[name]
    shape = tuple(case["shape"])
    returncode, stderr, folder = converted(name)
    assert returncode == 0, stderr
    out = folder / name.replace(".prototxt", ".lsuv.caffemodel")
    assert out.is_file()
    entries = json.loads((folder / "logs" / (out.name + ".json")).read_text())["layers"]
    assert entries and all(e["converged"] for e in entries)
    names = [e["name"] for e in entries]
    batch = np.load(folder / name.replace(".prototxt", ".npy"))

    # OpenCV: unit variance at every target layer
    deploy = _deploy_for(name, case, tmp_path, shape)
    graph = caffe_format().load(shared_model(name), weights=out)
    graph = caffe_format().prepare(graph, [torch.from_numpy(batch)])
    assert [t.name for t in graph.targets] == names
    producers = {top: e.layer.name for e in graph.state.parsed.layers for top in e.layer.top}
    deploy_layers = _layer_names(deploy)
    outputs = [b for b in graph.state.parsed.outputs if producers[b] in deploy_layers]
    got = opencv_run(deploy, out, {graph.inputs[0].name: batch}, names + [producers[b] for b in outputs])
    for layer, value in zip(names, got):
        assert abs(float(value.astype(np.float64).var()) - 1.0) < TOL, f"{layer}: variance {value.var():.4f}"

    # fidelity: the torch graph on the written weights computes what OpenCV computes
    targets, net_outputs = torch_layer_outputs(graph, [torch.from_numpy(batch)])
    for layer, value in zip(names, got):
        assert_close(targets[layer], value, rtol=1e-4, what=layer)
    by_name = dict(zip(graph.state.parsed.outputs, net_outputs))
    for blob, value in zip(outputs, got[len(names):]):
        assert_close(by_name[blob], value, rtol=1e-4, what=f"output {blob}")
