"""Attention in TorchScript files: traced nn.TransformerEncoder / Decoder (packed q/k/v, q | kv
slices of cross-attention), the fused aten::_native_multi_head_attention path, and transformers
BERT / GPT-2 with integer token ids, through the CLI and through the Python API. The written
file is re-read with torch.jit.load, its parameters copied into the eager model and every linear
map measured with independent hooks (tests/attention_helpers.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from attention_helpers import FusedAttention, Seq2Seq, conv1d_variances, expected_maps, measure, tiny_bert, tiny_gpt2, trace
from conftest import invoke

TOL = 0.02
pytestmark = pytest.mark.slow


def jit_load(path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))


def load_into(eager: nn.Module, written) -> nn.Module:
    return copy_state(eager, jit_load(written))


def copy_state(eager: nn.Module, script) -> nn.Module:
    """The ScriptModule's tensors into the eager model (non-persistent buffers of a trace aside)."""
    missing, _ = eager.load_state_dict(script.state_dict(), strict=False)
    assert not missing, missing
    return eager


def assert_unit(found: dict, expected: set):
    assert set(found) == expected, set(found) ^ expected
    bad = {k: v for k, v in found.items() if abs(v - 1) >= TOL}
    assert not bad, bad


def test_traced_encoder_cli(tmp_path):
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64), 2, enable_nested_tensor=False).eval()
    x = torch.randn(10, 4, 32)
    trace(model, (x,)).save(str(tmp_path / "enc.pt"))
    np.save(tmp_path / "x.npy", x.numpy())
    r = invoke(tmp_path / "enc.pt", "--data", tmp_path / "x.npy", "--log", tmp_path / "log.json", "--strict")
    assert r.returncode == 0, r.stderr
    assert_unit(measure(load_into(model, tmp_path / "enc.lsuv.pt"), x), expected_maps(model))
    log = json.loads((tmp_path / "log.json").read_text())
    assert sum(e["numel"] for e in log["account"]) == sum(p.numel() for p in model.parameters())
    assert log["counts"]["unreached"] == 0 and "parameters: " in r.stderr
    assert log["batch"]["inputs"][0]["name"] == "src" and len(log["batch"]["sha256"]) == 64


def test_traced_decoder_cross_attention_slices(tmp_path):
    torch.manual_seed(1)
    model = Seq2Seq().eval()
    tgt, memory = torch.randn(7, 3, 32), torch.randn(5, 3, 32)
    trace(model, (tgt, memory)).save(str(tmp_path / "dec.pt"))
    np.savez(tmp_path / "dec.npz", memory=memory.numpy(), tgt=tgt.numpy())
    r = invoke(tmp_path / "dec.pt", "--data", tmp_path / "dec.npz", "--log", tmp_path / "log.json", "--strict")
    assert r.returncode == 0, r.stderr
    assert_unit(measure(load_into(model, tmp_path / "dec.lsuv.pt"), tgt, memory), expected_maps(model))
    names = [e["name"] for e in json.loads((tmp_path / "log.json").read_text())["layers"]]
    assert "d.layers.0.multihead_attn.in_proj_weight[q]" in names
    assert "d.layers.0.multihead_attn.in_proj_weight[kv][v]" in names


def test_fused_native_attention_cli(tmp_path):
    torch.manual_seed(2)
    model = FusedAttention().eval()
    x = torch.randn(4, 6, 32)
    with torch.no_grad():
        traced = trace(model, (x,))
    assert "aten::_native_multi_head_attention" in str(traced.inlined_graph)
    traced.save(str(tmp_path / "fused.pt"))
    np.save(tmp_path / "x.npy", x.numpy())
    r = invoke(tmp_path / "fused.pt", "--data", tmp_path / "x.npy", "--log", tmp_path / "log.json", "--strict")
    assert r.returncode == 0, r.stderr
    assert_unit(measure(load_into(model, tmp_path / "fused.lsuv.pt"), x), expected_maps(model))
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["counts"] == {"initialized": 6, "unreached": 0, "skipped": 0}


class TimmStyleAttention(nn.Module):
    """One qkv Linear reshaped to (B, N, 3, heads, head_dim), then scaled_dot_product_attention."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(32, 96)
        self.proj = nn.Linear(32, 32)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


def test_sdpa_with_packed_qkv_reshaped(tmp_path):
    torch.manual_seed(4)
    model = TimmStyleAttention().eval()
    x = torch.randn(4, 10, 32)
    trace(model, (x,)).save(str(tmp_path / "sdpa.pt"))
    np.save(tmp_path / "x.npy", x.numpy())
    r = invoke(tmp_path / "sdpa.pt", "--data", tmp_path / "x.npy", "--strict")
    assert r.returncode == 0, r.stderr
    model = load_into(model, tmp_path / "sdpa.lsuv.pt")
    with torch.no_grad():
        qkv = model.qkv(x).reshape(4, 10, 3, 32)
        variances = [float(qkv[:, :, i].double().var(unbiased=False)) for i in range(3)]
        variances.append(float(model(x).double().var(unbiased=False)))
    assert all(abs(v - 1) < TOL for v in variances), variances


# -- transformers ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_files(tmp_path_factory):
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("tokens")
    bert, gpt2 = tiny_bert(), tiny_gpt2()
    ids = torch.randint(0, 50, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.long)
    trace(bert, (ids, mask), strict=False).save(str(folder / "bert.pt"))
    trace(gpt2, (ids,), strict=False).save(str(folder / "gpt2.pt"))
    np.savez(folder / "bert.npz", input_ids=ids.numpy(), attention_mask=mask.numpy())
    np.save(folder / "ids.npy", ids.numpy())
    return folder, bert, gpt2, ids, mask


def test_bert_cli_with_token_ids(token_files):
    folder, bert, _, ids, mask = token_files
    r = invoke(folder / "bert.pt", "--data", folder / "bert.npz", "--log", folder / "bert.json", "--strict")
    assert r.returncode == 0, r.stderr
    model = load_into(tiny_bert(), folder / "bert.lsuv.pt")
    found = measure(model, ids, mask)
    assert_unit(found, expected_maps(model))
    log = json.loads((folder / "bert.json").read_text())
    assert log["batch"]["inputs"][0]["dtype"] == "int64"
    assert sum(e["numel"] for e in log["account"]) == sum(p.numel() for p in bert.parameters())
    skipped = {e["name"]: e["reason"] for e in log["account"] if e["status"] == "skipped"}
    assert "embedding" in skipped["embeddings.word_embeddings.weight"]


def test_bert_cli_synthetic_ids_and_float_data_refused(token_files):
    folder, *_ = token_files
    r = invoke(folder / "bert.pt", "--input-shape", "4,16", "--input-shape", "4,16", "-o", folder / "bert.syn.pt")
    assert r.returncode == 0, r.stderr
    np.savez(folder / "float.npz", input_ids=np.zeros((4, 16), np.float32), attention_mask=np.ones((4, 16), np.int64))
    r = invoke(folder / "bert.pt", "--data", folder / "float.npz", "-o", folder / "bert.f.pt")
    assert r.returncode == 1 and "input_ids" in r.stderr


def test_gpt2_cli_splits_c_attn(token_files):
    folder, _, gpt2, ids, _ = token_files
    r = invoke(folder / "gpt2.pt", "--data", folder / "ids.npy", "--strict")
    assert r.returncode == 0, r.stderr
    model = load_into(tiny_gpt2(), folder / "gpt2.lsuv.pt")
    found = conv1d_variances(model, ids)
    assert len(found) == 2 * 6 and all(abs(v - 1) < TOL for v in found.values()), found


def test_script_modules_through_the_api(token_files):
    from lsuv_convert import lsuv_init

    folder, bert, gpt2, ids, mask = token_files
    script = jit_load(folder / "bert.pt")
    report = lsuv_init(script, ids, kwargs={"attention_mask": mask}, seed=0, strict=True)
    assert sum(e.numel for e in report.account) == sum(p.numel() for p in script.parameters())
    model = load_into(tiny_bert(), folder / "bert.pt")  # untouched file: the ScriptModule in memory changed
    assert not torch.equal(model.encoder.layer[0].attention.self.query.weight, script.state_dict()["encoder.layer.0.attention.self.query.weight"])
    copy_state(model, script)
    assert_unit(measure(model, ids, mask), expected_maps(model))
    script = jit_load(folder / "gpt2.pt")
    report = lsuv_init(script, {"input_ids": ids}, seed=0, strict=True)
    assert report.counts["unreached"] == 0
    model = copy_state(tiny_gpt2(), script)
    found = conv1d_variances(model, ids)
    assert all(abs(v - 1) < TOL for v in found.values()), found
