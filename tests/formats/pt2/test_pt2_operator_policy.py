"""The shared operator policy on .pt2 programs: a program calling a custom operator (defined here with
torch.library) is refused before torch.export.load, with one line naming the operator, unless
``--trust-code``; so are forged graphs naming ``torch.load`` or ``aten::from_file``, and a custom
operator inside a ``torch.cond`` branch. Programs of torch's own operators (dynamic batch: symbolic
size arithmetic) pass. A trusted conversion is re-read with torch.export.load and every conv /
linear output measured by an fx Interpreter."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from conftest import invoke
from lsuv_convert.formats.pt2.vetting import graph_targets

pytestmark = pytest.mark.slow  # torch.export of three programs: seconds


@torch.library.custom_op("lsuv_pt2_test::shift", mutates_args=())
def shift(x: torch.Tensor) -> torch.Tensor:
    return x + 0.5


@shift.register_fake
def _(x):
    return torch.empty_like(x)


class WithCustomOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.ops.lsuv_pt2_test.shift(torch.relu(self.conv(x))).flatten(1))


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(y.mean(dim=(2, 3)) * (x.shape[0] // 2))  # symbolic size arithmetic


class CustomInBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)

    def forward(self, x):
        y = self.conv(x)
        return torch.cond(y.sum() > 0, lambda t: torch.ops.lsuv_pt2_test.shift(t), lambda t: t - 0.5, (y,))


def measure(path, batch) -> dict[str, float]:
    """Output variance of every conv / linear call of the re-loaded program, by an fx Interpreter."""
    module = torch.export.load(str(path)).module()
    found = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "call_function" and n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
                found[n.name] = float(out.double().var(unbiased=False))
            return out

    with torch.no_grad():
        Recorder(module).run(batch)
    return found


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pt2ops")
    torch.manual_seed(0)
    batch = torch.randn(4, 3, 8, 8)
    np.save(folder / "x.npy", batch.numpy())
    torch.export.save(torch.export.export(WithCustomOp().eval(), (batch,)), str(folder / "custom.pt2"))
    dim = torch.export.Dim("batch", min=2)
    torch.export.save(torch.export.export(Plain().eval(), (batch,), dynamic_shapes=({0: dim},)), str(folder / "plain.pt2"))
    torch.export.save(torch.export.export(CustomInBranch().eval(), (batch,)), str(folder / "branch.pt2"))
    return folder, batch


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_custom_op_refused_without_trust_code(work):
    folder, _ = work
    r = invoke(folder / "custom.pt2", "--data", folder / "x.npy", "-o", folder / "refused.pt2")
    assert r.returncode == 1
    line = _one_line(r.stderr)
    assert "lsuv_pt2_test::shift" in line and "--trust-code" in line and "nothing ran" in line
    assert not (folder / "refused.pt2").exists()
    r = invoke("inspect", folder / "custom.pt2")
    assert r.returncode == 1 and "lsuv_pt2_test::shift" in r.stderr


def test_custom_op_in_a_cond_branch_is_found(work):
    folder, _ = work
    assert "torch.ops.higher_order.cond" in graph_targets(folder / "branch.pt2")
    r = invoke(folder / "branch.pt2", "--data", folder / "x.npy", "-o", folder / "branch.out.pt2")
    assert r.returncode == 1 and "lsuv_pt2_test::shift" in _one_line(r.stderr)


def test_torch_operators_and_symbolic_sizes_pass(work):
    folder, batch = work
    assert any(t.startswith(("_operator.", "torch.sym")) or "sym_size" in t for t in graph_targets(folder / "plain.pt2"))
    r = invoke(folder / "plain.pt2", "--data", folder / "x.npy", "--strict")
    assert r.returncode == 0, r.stderr
    found = measure(folder / "plain.lsuv.pt2", batch)
    assert len(found) == 2 and all(abs(v - 1) < 0.02 for v in found.values()), found


def test_trust_code_converts_and_verifies(work):
    folder, batch = work
    r = invoke(folder / "custom.pt2", "--data", folder / "x.npy", "--trust-code", "--log", folder / "log.json")
    assert r.returncode == 0, r.stderr
    found = measure(folder / "custom.lsuv.pt2", batch)
    assert len(found) == 2 and all(abs(v - 1) < 0.02 for v in found.values()), found
    refused = invoke("verify", folder / "custom.lsuv.pt2", "--data", folder / "x.npy")
    assert refused.returncode == 1 and "lsuv_pt2_test::shift" in refused.stderr
    verified = invoke("verify", folder / "custom.lsuv.pt2", "--data", folder / "x.npy", "--trust-code", "--json")
    assert verified.returncode == 0, verified.stderr
    assert len(json.loads(verified.stdout)["layers"]) == 2


@pytest.mark.parametrize("forged, named", [("torch.load", "torch.load"),
                                           ("torch.ops.aten.from_file.default", "aten::from_file"),
                                           ("builtins.print", "builtins.print")])
def test_forged_graph_targets_are_refused_before_loading(work, forged, named):
    """A graph JSON edited to call something else: refused by name, torch.export.load never runs."""
    folder, _ = work
    source = folder / "plain.pt2"
    out = folder / f"forged_{named.replace(':', '_')}.pt2"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("models/model.json"):
                data = data.replace(b'"torch.ops.aten.relu.default"', json.dumps(forged).encode())
            zout.writestr(info, data)
    r = invoke(out, "--data", folder / "x.npy", "-o", folder / "forged.out.pt2")
    assert r.returncode == 1 and named in _one_line(r.stderr) and "--trust-code" in r.stderr
