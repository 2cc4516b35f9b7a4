"""lsuv_init on a module whose output projection shares the input embedding's weight: the tied
layer is left out (scaling it would rescale the embedding, which already ran), with a note;
every other layer still reaches unit variance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attention_helpers import conv1d_variances
from lsuv_convert import lsuv_init


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 40, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied, as language models do

    def forward(self, ids):
        return self.head(torch.tanh(self.hidden(self.embed(ids))))


def test_tied_head_is_left_out_and_the_embedding_untouched():
    torch.manual_seed(0)
    model = TinyLM().eval()
    table = model.embed.weight.detach().clone()
    ids = torch.randint(0, 40, (8, 12))
    report = lsuv_init(model, ids, seed=0)
    assert [layer.name for layer in report.layers] == ["hidden"]
    assert report.notes == ["head: weight tied to embed (not a conv / linear layer, it runs first); left as it is"]
    assert torch.equal(model.embed.weight, table)
    with torch.no_grad():
        hidden = model.hidden(model.embed(ids))
    assert abs(float(hidden.var(unbiased=False)) - 1.0) < 0.02
    status = {entry.name: entry.status for entry in report.account}
    assert status["embed.weight"] == "skipped" and status["hidden.weight"] == "initialized"


def test_named_targets_are_taken_as_given():
    torch.manual_seed(0)
    model = TinyLM().eval()
    report = lsuv_init(model, torch.randint(0, 40, (8, 12)), seed=0, targets=["hidden", "head"])
    assert [layer.name for layer in report.layers] == ["hidden", "head"] and report.notes == []


@pytest.mark.slow
def test_gpt2_lm_head_model_keeps_its_embedding():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    table = model.transformer.wte.weight.detach().clone()
    ids = torch.randint(0, 64, (4, 16))
    report = lsuv_init(model, ids, seed=0)
    assert any(note.startswith("lm_head: weight tied to transformer.wte") for note in report.notes)
    assert torch.equal(model.transformer.wte.weight, table)
    found = conv1d_variances(model, ids)
    assert len(found) == 12 and all(abs(v - 1.0) < 0.02 for v in found.values()), found
