"""torchvision models exported by both of torch's exporters, initialized through the real CLI.

For every model and exporter: exit 0, the output loads in onnxruntime, every target layer's
output variance measured by onnxruntime on the batch is within tol of 1, non-target
initializers are byte-identical and the node list is the same (see onnx_helpers).

The models of one group go through ONE console-script run (``--output-dir``, ``--json``, each
model's batch as its ``NAME.npy`` sidecar): starting the CLI costs ~10 s of imports here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import run_cli
from onnx_helpers import SPECS, UNEXPORTABLE, check_written_model, eligible_layers, zoo

# Fast cases cover the main paths (TorchScript Identity de-duplication, opset-18 converters, external
# data, MatMul + Add layers); the rest are marked slow (.ci/run runs everything). BatchNorm nodes,
# float16, ConvTranspose and shared weights have their own fast tests (test_onnx_fidelity/_sharing).
FAST = {("shufflenet_v2", "dy18"), ("vit", "ts17"), ("vit", "dy18")}
# Every model goes through both exporters at their current opsets (ts17, dy18). Opset 13 (ReduceMean
# with an axes attribute, no LayerNorm op, older Split/Pad/Resize forms) is exercised on the models
# whose graphs it changes; on the rest, and for vgg11 after alexnet (the same conv-pool-fc graph at
# 5x the weights), a third export adds minutes of CI and no new node forms.
OPSET13_MODELS = {"resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2", "convnext_tiny", "googlenet",
                  "efficientnet_b0"}
SKIPPED = {("vgg11", "dy18")}
CASES = [(name, exporter) for name in SPECS for exporter in ("ts13", "ts17", "dy18")
         if (name, exporter) not in UNEXPORTABLE and (name, exporter) not in SKIPPED
         and (exporter != "ts13" or name in OPSET13_MODELS)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Batch:
    """One CLI run over several exported models."""

    def __init__(self, cases, folder: Path):
        self.models = {case: zoo().get(*case) for case in cases}
        self.before = {case: {p.name: _sha(p) for p in m.parent.iterdir()} for case, (m, _) in self.models.items()}
        self.out, self.logs = folder / "out", folder / "logs"
        self.proc = run_cli(*[m for m, _ in self.models.values()], "--output-dir", self.out, "--log", self.logs,
                            "--seed", "0", "--json", "-q", timeout=7200)
        lines = [json.loads(line) for line in self.proc.stdout.splitlines() if line.startswith("{")]
        self.status = {Path(line["model"]).resolve(): line for line in lines}


@pytest.fixture(scope="module")
def fast_batch(tmp_path_factory):
    return Batch(sorted(FAST), tmp_path_factory.mktemp("onnx_fast"))


@pytest.fixture(scope="module")
def slow_batch(tmp_path_factory):
    return Batch([c for c in CASES if c not in FAST], tmp_path_factory.mktemp("onnx_slow"))


def _params():
    for case in CASES:
        marks = [] if case in FAST else [pytest.mark.slow]
        yield pytest.param(*case, marks=marks, id="-".join(case))


@pytest.mark.parametrize("name,exporter", list(_params()))
def test_cli_initializes_exported_model(request, name, exporter):
    batch: Batch = request.getfixturevalue("fast_batch" if (name, exporter) in FAST else "slow_batch")
    model, data = batch.models[(name, exporter)]
    line = batch.status.get(model.resolve())
    assert line is not None, batch.proc.stderr
    assert line["status"] == "ok", line["error"]
    if all(s["status"] == "ok" for s in batch.status.values()):
        assert batch.proc.returncode == 0, batch.proc.stderr
    out = Path(line["output"])
    assert out.parent == batch.out and out.name == f"{name}_{exporter}.lsuv.onnx"
    variances = check_written_model(model, out, np.load(data))
    log = json.loads((batch.logs / f"{out.name}.json").read_text())
    assert all(entry["converged"] for entry in log["layers"])
    # every eligible layer was initialized, under its ONNX node name, and measured above
    assert sorted(e["name"] for e in log["layers"]) == sorted(eligible_layers(onnx.load(str(model), load_external_data=False)))
    assert set(variances) == {e["name"] for e in log["layers"]}
    assert any(note.startswith("fidelity gate passed") for note in log["notes"])
    assert {p.name: _sha(p) for p in model.parent.iterdir()} == batch.before[(name, exporter)]  # inputs untouched
