"""transformers' Conv1D (weight stored (in, out)) as a target in eager models: a GPT-2 built from a
tiny config, saved as a Hugging Face folder, as a torch.save state_dict and as a safetensors
state_dict (``--arch tiny_gpt2:build``). Each output is re-read by its own library
(transformers' from_pretrained, torch.load(weights_only=True), safetensors), put into a fresh
GPT-2, and every Conv1D output measured with forward hooks, c_attn as its q, k, v thirds (the
conversion fits them as three maps). The pre-init is checked on the (in, out) layout: each map's
columns block is orthogonal. ``--strict`` names a weight matrix of a module class it doesn't know."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from attention_helpers import conv1d_variances
from conftest import invoke

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow
TOL = 0.02

FACTORY = '''
import torch
import transformers
from torch import nn


def build():
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)
    return transformers.GPT2LMHeadModel(config)


class Gate(nn.Module):
    """A linear map in a class of its own (no nn.Linear): the tool can't know it."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return nn.functional.linear(x, self.weight)


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.fc(x))


def gated():
    return Gated()
'''


def fresh_gpt2():
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    (folder / "tiny_gpt2.py").write_text(FACTORY)
    torch.manual_seed(0)
    model = fresh_gpt2()
    model.save_pretrained(folder / "gpt2")
    torch.save(model.state_dict(), folder / "gpt2.pth")
    from safetensors.torch import save_file

    save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()}, folder / "gpt2.safetensors")  # untied copies
    ids = np.random.default_rng(0).integers(0, 64, (4, 16)).astype(np.int64)
    np.save(folder / "ids.npy", ids)
    runs = {
        "folder": invoke(folder / "gpt2", "--data", folder / "ids.npy", "--strict", "--log", folder / "folder.json", "-q"),
        "pth": invoke(folder / "gpt2.pth", "--arch", "tiny_gpt2:build", "--data", folder / "ids.npy", "--strict",
                      "--log", folder / "pth.json", "-q", cwd=folder),
        "safetensors": invoke(folder / "gpt2.safetensors", "--arch", "tiny_gpt2:build", "--data", folder / "ids.npy",
                              "--strict", "--log", folder / "safetensors.json", "-q", cwd=folder),
    }
    return folder, torch.from_numpy(ids), runs


def reloaded(folder, kind):
    """The written weights, read back by the format's own library, in a fresh GPT-2."""
    if kind == "folder":
        return transformers.GPT2LMHeadModel.from_pretrained(str(folder / "gpt2.lsuv"), local_files_only=True).eval()
    model = fresh_gpt2()
    if kind == "pth":
        state = torch.load(folder / "gpt2.lsuv.pth", weights_only=True)
    else:
        from safetensors.torch import load_file

        state = load_file(str(folder / "gpt2.lsuv.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model.eval()


EXPECTED = {f"transformer.h.{i}.{n}" for i in range(2) for n in (
    "attn.c_attn[q]", "attn.c_attn[k]", "attn.c_attn[v]", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


@pytest.mark.parametrize("kind", ["folder", "pth", "safetensors"])
def test_every_conv1d_is_a_target_with_unit_variance_when_reloaded(work, kind):
    folder, ids, runs = work
    assert runs[kind].returncode == 0, runs[kind].stderr
    log = json.loads((folder / f"{kind}.json").read_text())
    assert {e["name"] for e in log["layers"]} == EXPECTED
    assert all(e["op"] == "Conv1D" for e in log["layers"])
    skipped = {e["name"] for e in log["account"] if e["status"] == "skipped"}
    assert not any("c_attn" in n or "c_proj" in n or "c_fc" in n for n in skipped), skipped
    found = conv1d_variances(reloaded(folder, kind), ids)
    assert set(found) == EXPECTED
    bad = {k: v for k, v in found.items() if abs(v - 1) >= TOL}
    assert not bad, bad
    for entry in log["layers"]:  # the log's own figure is what the reloaded model gives
        assert entry["var_after"] == pytest.approx(found[entry["name"]], rel=1e-3)


def test_pre_init_respects_the_in_out_layout(work):
    """After LSUV each map is a scaled orthonormal matrix: W (in, out) has orthogonal rows when out
    >= in (c_fc), and each of c_attn's q, k, v column blocks is orthogonal on its own."""
    folder, _, runs = work
    assert runs["pth"].returncode == 0, runs["pth"].stderr
    state = torch.load(folder / "gpt2.lsuv.pth", weights_only=True)
    for i in range(2):
        fc = state[f"transformer.h.{i}.mlp.c_fc.weight"].double()  # (32, 128)
        gram = fc @ fc.T
        assert torch.allclose(gram, gram[0, 0] * torch.eye(32, dtype=torch.float64), atol=1e-4 * float(gram[0, 0]))
        attn = state[f"transformer.h.{i}.attn.c_attn.weight"].double()  # (32, 96): q | k | v columns
        for block in attn.split(32, dim=1):  # one orthonormal (in, out) matrix over all 96 columns would fail this
            gram = block.T @ block
            assert torch.allclose(gram, gram[0, 0] * torch.eye(32, dtype=torch.float64), atol=1e-4 * float(gram[0, 0]))


def test_verify_names_the_maps_as_the_log_does(work):
    folder, _, runs = work
    for kind, model, extra in (("folder", folder / "gpt2.lsuv", ()),
                               ("pth", folder / "gpt2.lsuv.pth", ("--arch", "tiny_gpt2:build"))):
        assert runs[kind].returncode == 0, runs[kind].stderr
        result = invoke("verify", model, "--data", folder / "ids.npy", "--json", *extra, cwd=folder)
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)["layers"]
        log = json.loads((folder / f"{kind}.json").read_text())
        assert [r["name"] for r in rows] == [e["name"] for e in log["layers"]]
        assert all(abs(r["var"] - 1) < TOL for r in rows)


def test_the_api_takes_conv1d_and_leaves_no_trace_on_the_model():
    from lsuv_convert import lsuv_init

    torch.manual_seed(1)
    model = fresh_gpt2().transformer  # the GPT2Model: no language-model head tied to the embedding
    ids = torch.randint(0, 64, (4, 16))
    report = lsuv_init(model, ids, seed=0, strict=True)
    assert {f"transformer.{layer.name}" for layer in report.layers} == EXPECTED
    assert not any(k.startswith("lsuv_") for m in model.modules() for k in vars(m))
    found = conv1d_variances(model, ids)
    assert len(found) == len(EXPECTED) and all(abs(v - 1) < TOL for v in found.values()), found


def test_strict_names_a_weight_matrix_of_an_unknown_layer_class(work):
    from lsuv_convert import lsuv_init
    from lsuv_convert.lsuv.account import IncompleteError

    folder, _, _ = work
    import importlib
    import sys

    sys.path.insert(0, str(folder))
    try:
        factory = importlib.import_module("tiny_gpt2")
    finally:
        sys.path.remove(str(folder))
    model = factory.gated()
    torch.save(model.state_dict(), folder / "gated.pth")
    np.save(folder / "x.npy", np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    args = (folder / "gated.pth", "--arch", "tiny_gpt2:gated", "--data", folder / "x.npy")
    strict = invoke(*args, "--strict", "--log", folder / "gated.json", cwd=folder)
    assert strict.returncode == 3 and not (folder / "gated.lsuv.pth").exists()
    lines = [line for line in strict.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "gate.weight" in lines[0] and "Gate" in lines[0], strict.stderr
    entry = {e["name"]: e for e in json.loads((folder / "gated.json").read_text())["account"]}["gate.weight"]
    assert entry["status"] == "skipped" and entry["linear"] is True
    assert invoke(*args, cwd=folder).returncode == 0  # without --strict: written, the gate as it was
    with pytest.raises(IncompleteError, match="gate.weight"):
        lsuv_init(factory.gated(), torch.randn(16, 8), seed=0, strict=True)
    norm = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Embedding(4, 8))  # known non-linear classes pass
    report = lsuv_init(norm[:2], torch.randn(16, 8), seed=0, strict=True)
    assert report.counts["skipped"] == 2


def test_pre_init_views_rows_as_outputs_and_gaussian_uses_fan_in():
    """The (in, out) weight is pre-initialized as (groups, outputs, fan_in) matrices: q, k, v of
    c_attn each (32 x 32); c_fc (128 outputs of 32 inputs); the gaussian mode's N(0, 1/fan_in)."""
    from lsuv_convert.lsuv.targets import find_targets
    from lsuv_convert.lsuv.conv1d import layouts
    from lsuv_convert.lsuv.orthonormal import grouped_view, pre_initialize

    model = fresh_gpt2().transformer
    targets = find_targets(model)
    with layouts(model, targets):
        shapes = {name: tuple(grouped_view(m).shape) for name, m in targets.items() if name.startswith("h.0.")}
        pre_initialize(list(targets.values()), "gaussian", torch.Generator().manual_seed(0))
    assert shapes == {"h.0.attn.c_attn": (3, 32, 32), "h.0.attn.c_proj": (1, 32, 32), "h.0.mlp.c_fc": (1, 128, 32),
                      "h.0.mlp.c_proj": (1, 32, 128)}
    for name, m in targets.items():
        fan_in = m.weight.shape[0]
        assert float(m.weight.detach().double().var()) * fan_in == pytest.approx(1, abs=0.15), name
