"""``verify`` on TorchScript files whose targets hold several maps: traced nn.TransformerEncoder
(packed q/k/v split by unflatten), nn.TransformerDecoder (cross-attention's q | kv row slices),
the fused ``aten::_native_multi_head_attention`` and transformers GPT-2 (c_attn, an addmm on an
(in, out) weight split into q, k, v) and BERT. verify must name every map as the conversion log
does, and its variances (torch.jit running the written file) must agree with forward hooks on
the eager model holding the written weights (tests/attention_helpers.py), all ≈ 1."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from attention_helpers import FusedAttention, Seq2Seq, conv1d_variances, measure, tiny_bert, tiny_gpt2, trace
from conftest import invoke

pytestmark = pytest.mark.slow
TOL = 0.02


def with_written_weights(eager: nn.Module, path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = torch.jit.load(str(path))
    missing, _ = eager.load_state_dict(script.state_dict(), strict=False)
    assert not missing, missing
    return eager.eval()


def eager_name(log_name: str) -> str:
    """A log name of a MultiheadAttention map -> attention_helpers.measure's (``mha.q`` ...)."""
    for packed, label in (("in_proj_weight[kv][k]", "k"), ("in_proj_weight[kv][v]", "v"), ("in_proj_weight[q]", "q"),
                          ("in_proj_weight[k]", "k"), ("in_proj_weight[v]", "v")):
        if log_name.endswith(packed):
            return log_name[: -len(packed)] + label
    return log_name


CASES = ["encoder", "decoder", "fused", "gpt2", "bert"]


def build(case: str, folder):
    """(eager model, batch tensors, data file): the model traced and saved as CASE.pt."""
    torch.manual_seed(CASES.index(case))
    if case == "encoder":
        model = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64), 2, enable_nested_tensor=False).eval()
        batch = (torch.randn(10, 4, 32),)
    elif case == "decoder":
        model, batch = Seq2Seq().eval(), (torch.randn(7, 3, 32), torch.randn(5, 3, 32))
    elif case == "fused":
        model, batch = FusedAttention().eval(), (torch.randn(4, 6, 32),)
    elif case == "gpt2":
        model, batch = tiny_gpt2(), (torch.randint(0, 50, (4, 16)),)
    else:
        model, batch = tiny_bert(), (torch.randint(0, 50, (4, 16)), torch.ones(4, 16, dtype=torch.long))
    with torch.no_grad():  # the fused case: traced into aten::_native_multi_head_attention
        traced = trace(model, batch, strict=False)
    if case == "fused":
        assert "aten::_native_multi_head_attention" in str(traced.inlined_graph)
    traced.save(str(folder / f"{case}.pt"))
    names = [a.name for a in traced.forward.schema.arguments[1:]]
    np.savez(folder / f"{case}.npz", **{n: t.numpy() for n, t in zip(names, batch)})
    return model, batch, folder / f"{case}.npz"


@pytest.fixture(scope="module", params=CASES)
def verified(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model, batch, data = build(request.param, folder)
    converted = invoke(folder / f"{request.param}.pt", "--data", data, "--log", folder / "log.json", "--strict", "-q")
    assert converted.returncode == 0, converted.stderr
    result = invoke("verify", folder / f"{request.param}.lsuv.pt", "--data", data, "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    log = json.loads((folder / "log.json").read_text())
    written = with_written_weights(model, folder / f"{request.param}.lsuv.pt")
    return request.param, log, json.loads(result.stdout), written, batch


def test_verify_names_every_map_as_the_log_does(verified):
    case, log, result, _, _ = verified
    assert [r["name"] for r in result["layers"]] == [e["name"] for e in log["layers"]]
    if case in ("encoder", "fused", "gpt2"):
        assert any(r["name"].endswith("[q]") for r in result["layers"])
    if case == "decoder":
        assert "d.layers.0.multihead_attn.in_proj_weight[kv][v]" in {r["name"] for r in result["layers"]}
    if case == "fused":
        assert "a.out_proj" in {r["name"] for r in result["layers"]}
    assert result["ok"] and all(abs(r["var"] - 1) < TOL for r in result["layers"])


def test_verify_agrees_with_hooks_on_the_eager_model(verified):
    case, _, result, written, batch = verified
    if case == "gpt2":
        hooked = conv1d_variances(written, *batch)
    else:
        hooked = measure(written, *batch)
    measured = {eager_name(r["name"]): r["var"] for r in result["layers"]}
    assert set(measured) == set(hooked), set(measured) ^ set(hooked)
    for name, var in measured.items():
        assert var == pytest.approx(hooked[name], rel=1e-4, abs=1e-5), name
        assert abs(hooked[name] - 1) < TOL, (name, hooked[name])


def test_verify_of_one_target_keeps_its_maps_together(tmp_path):
    """The plug-in API: asking for a packed target returns its maps, an unknown name is an error."""
    from lsuv_convert.errors import ModelFormatError
    from lsuv_convert.formats import find_format

    model, batch, data = build("fused", tmp_path)
    assert invoke(tmp_path / "fused.pt", "--data", data, "-q").returncode == 0
    fmt = find_format(tmp_path / "fused.lsuv.pt")
    stats = fmt.measure(tmp_path / "fused.lsuv.pt", None, list(batch), ["a"])
    assert list(stats) == ["a.in_proj_weight[q]", "a.in_proj_weight[k]", "a.in_proj_weight[v]", "a.out_proj"]
    with pytest.raises(ModelFormatError, match="no target layer named 'b'"):
        fmt.measure(tmp_path / "fused.lsuv.pt", None, list(batch), ["b"])
