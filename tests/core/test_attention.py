"""Attention layers through the Python API: q, k, v and out_proj each at unit variance,
measured by independent hooks (tests/attention_helpers.py), and the account of every parameter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attention_helpers import expected_maps, measure
from lsuv_convert import lsuv_init
from lsuv_convert.lsuv.account import IncompleteError

TOL = 0.02


def check_all_maps(model, *args, **kwargs):
    found = measure(model, *args, **kwargs)
    assert set(found) == expected_maps(model), set(expected_maps(model)) ^ set(found)
    bad = {k: v for k, v in found.items() if abs(v - 1) >= TOL}
    assert not bad, bad
    return found


def check_account(model, report):
    total = sum(p.numel() for p in model.parameters())
    assert sum(e.numel for e in report.account) == total
    assert len(report.account) == len(list(model.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("batch_first", [False, True])
def test_transformer_encoder_every_map(batch_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=batch_first)
    model = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    x = torch.randn(6, 10, 32)
    batch, seq = (6, 10) if batch_first else (10, 6)
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    mask[:, -2:] = True  # padding at the end of every sequence
    before = torch.backends.mha.get_fastpath_enabled()
    report = lsuv_init(model, x, kwargs={"src_key_padding_mask": mask}, seed=0)
    assert torch.backends.mha.get_fastpath_enabled() == before
    check_all_maps(model, x, src_key_padding_mask=mask)
    names = [layer.name for layer in report.layers]
    assert "layers.0.self_attn.in_proj_weight[q]" in names and "layers.2.self_attn.out_proj" in names
    check_account(model, report)
    assert report.counts == {"initialized": 3 * 8, "unreached": 0, "skipped": 3 * 4}
    assert not report.unreached


@pytest.mark.slow
def test_transformer_decoder_self_and_cross_attention():
    torch.manual_seed(1)
    model = nn.TransformerDecoder(nn.TransformerDecoderLayer(32, 4, 64, batch_first=True), 2)
    tgt, memory = torch.randn(4, 7, 32), torch.randn(4, 9, 32)
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    report = lsuv_init(model, (tgt, memory), kwargs={"tgt_mask": causal}, seed=0, strict=True)
    found = check_all_maps(model, tgt, memory, tgt_mask=causal)
    assert "layers.1.multihead_attn.k" in found
    check_account(model, report)


def test_separate_qkv_weights_and_attn_mask():
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(16, 2, kdim=12, vdim=8, batch_first=True)
    q, k, v = torch.randn(5, 6, 16), torch.randn(5, 4, 12), torch.randn(5, 4, 8)
    attn_mask = torch.zeros(6, 4, dtype=torch.bool)
    attn_mask[:, 0] = True
    report = lsuv_init(mha, (q, k, v), kwargs={"attn_mask": attn_mask}, seed=0, strict=True)
    assert [r.name for r in report.layers] == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj"] or all(
        r.name.split(".")[-1] in ("q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj") for r in report.layers)
    check_all_maps(mha, q, k, v, attn_mask=attn_mask)
    check_account(mha, report)


def test_q_k_v_slices_are_orthonormal_before_scaling():
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(16, 2)
    x = torch.randn(5, 3, 16)
    report = lsuv_init(mha, (x, x, x), seed=0)
    scales = {r.name: r.scale for r in report.layers}
    w = mha.in_proj_weight.detach()
    for i, label in enumerate("qkv"):
        block = w[i * 16:(i + 1) * 16] / scales[f"in_proj_weight[{label}]"]
        assert torch.allclose(block @ block.T, torch.eye(16), atol=1e-4)


def test_attention_module_runs_once_per_call():
    """The engine's cost stays one forward pass: every attention module is called once."""
    torch.manual_seed(4)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2, enable_nested_tensor=False)
    calls = []
    for m in model.modules():
        if isinstance(m, (nn.MultiheadAttention, nn.Linear)):
            m.register_forward_hook(lambda mod, i, o: calls.append(mod))
    lsuv_init(model, torch.randn(3, 5, 16), seed=0)
    attention = [m for m in calls if isinstance(m, nn.MultiheadAttention)]
    assert len(attention) == 2 and len(set(map(id, attention))) == 2


@pytest.mark.slow
def test_vision_transformer():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(5)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10)
    x = torch.randn(6, 3, 32, 32)
    report = lsuv_init(model, x, seed=0, strict=True)
    check_all_maps(model, x)
    check_account(model, report)
    skipped = {e.name: e.reason for e in report.skipped}
    assert "class_token" in skipped and "encoder.pos_embedding" in skipped
    assert all(not e.linear for e in report.skipped)


class WithDeadBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.rare = nn.Linear(8, 8)
        self.emb = nn.Embedding(10, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        x = self.norm(self.stem(x))
        if bool(x.sum() > 1e9):
            x = self.rare(x)
        return x


def test_account_and_strict():
    torch.manual_seed(6)
    model = WithDeadBranch()
    report = lsuv_init(model, torch.randn(16, 8), seed=0)
    status = {e.name: e.status for e in report.account}
    assert status == {"stem.weight": "initialized", "stem.bias": "initialized", "rare.weight": "unreached",
                      "rare.bias": "unreached", "emb.weight": "skipped", "norm.weight": "skipped", "norm.bias": "skipped"}
    assert report.counts == {"initialized": 2, "unreached": 2, "skipped": 3}
    check_account(model, report)
    entry = next(e for e in report.account if e.name == "stem.weight")
    assert entry.var_after == pytest.approx(1, abs=TOL) and entry.var_before != entry.var_after
    with pytest.raises(IncompleteError, match="rare.weight") as info:
        lsuv_init(model, torch.randn(16, 8), seed=0, strict=True)
    assert info.value.exit_code == 3
    assert "stem.weight" not in str(info.value) and "emb.weight" not in str(info.value)


def test_dict_batch_keeps_integer_and_bool_inputs():
    torch.manual_seed(7)

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 16)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, input_ids, attention_mask):
            assert input_ids.dtype == torch.int64 and attention_mask.dtype == torch.bool
            h = self.emb(input_ids)
            return self.head(self.attn(h, h, h, key_padding_mask=~attention_mask)[0])

    model = Tagger().double()
    ids = torch.randint(0, 20, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.bool)
    report = lsuv_init(model, {"input_ids": ids, "attention_mask": mask}, seed=0, strict=True)
    assert len(report.layers) == 5
    found = measure(model, ids, mask)
    assert all(abs(v - 1) < TOL for v in found.values()), found
