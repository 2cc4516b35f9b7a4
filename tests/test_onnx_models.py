"""torchvision models exported by both of torch's exporters, initialized through the real CLI.

For every model and exporter: exit 0, the output loads in onnxruntime, every target layer's
output variance measured by onnxruntime on the batch is within tol of 1, non-target
initializers are byte-identical and the node list is the same (see onnx_helpers).
"""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import run_cli
from onnx_helpers import SPECS, UNEXPORTABLE, check_written_model, eligible_layers, zoo

# Fast cases cover every code path (Identity de-duplication, opset-18 converters, external data,
# MatMul + Add layers); the rest are marked slow and run in CI (.ci/run runs everything).
FAST = {
    ("squeezenet1_1", "ts13"), ("squeezenet1_1", "dy18"), ("resnet18", "ts17"), ("mobilenet_v3_small", "dy18"),
    ("shufflenet_v2", "dy18"), ("vit", "ts17"), ("vit", "dy18"),
}


def _cases():
    for name in SPECS:
        for exporter in ("ts13", "ts17", "dy18"):
            if (name, exporter) in UNEXPORTABLE:
                continue
            marks = [] if (name, exporter) in FAST else [pytest.mark.slow]
            yield pytest.param(name, exporter, marks=marks, id=f"{name}-{exporter}")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name,exporter", list(_cases()))
def test_cli_initializes_exported_model(tmp_path, name, exporter):
    import onnx

    model, batch = zoo().get(name, exporter)
    inputs_before = {p.name: _sha(p) for p in model.parent.iterdir()}
    out, log = tmp_path / "out.onnx", tmp_path / "log.json"
    proc = run_cli(model, "--data", batch, "-o", out, "--log", log, "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    variances = check_written_model(model, out, __import__("numpy").load(batch))
    entries = json.loads(log.read_text())["layers"]
    assert all(e["converged"] for e in entries)
    # every eligible layer was initialized, under its ONNX node name
    assert sorted(e["name"] for e in entries) == sorted(eligible_layers(onnx.load(str(model), load_external_data=False)))
    assert set(variances) == {e["name"] for e in entries}
    assert {p.name: _sha(p) for p in model.parent.iterdir()} == inputs_before
