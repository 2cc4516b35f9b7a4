"""Streaming LSUV on plain nn.Modules: the values of a run on the whole model, with about one layer
in memory at a time."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from torch import nn

from lsuv_convert.lsuv.api import lsuv_init
from tests.live_bytes import LiveBytes


class DictSource:
    """The stored tensors, handed out as fresh copies (so that a memory meter sees them made)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.reads: list[str] = []

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def read(self, name: str) -> torch.Tensor:
        self.reads.append(name)
        return self.tensors[name].clone()


class DictSink:
    """Writes into tensors allocated beforehand (outside any meter), as a file on disk would take them."""

    def __init__(self, like: dict[str, torch.Tensor]):
        self.out = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v.clone() for k, v in like.items()}
        self.written: list[str] = []

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self.out:
            return
        assert name not in self.written, f"{name} written twice"
        self.written.append(name)
        self.out[name].copy_(tensor)

    def read_back(self, name: str) -> torch.Tensor:
        return self.out[name].clone()


class Zoo(nn.Module):
    """Conv + batch norm (buffers), a layer called twice, tied weights, an attention, an unreached layer."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.norm = nn.BatchNorm1d(16)
        self.shared = nn.Linear(16, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.a = nn.Linear(16, 24)
        self.b = nn.Linear(24, 16)
        self.b.weight = nn.Parameter(self.a.weight.detach().t().contiguous())  # its own, then...
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight  # tied to the embedding: left out, kept until the end
        self.unused = nn.Linear(16, 16)

    def forward(self, ids):
        x = self.embed(ids)
        x = self.norm(self.conv(x.transpose(1, 2))).transpose(1, 2)
        for _ in range(2):
            x = torch.tanh(self.shared(x))
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = self.b(torch.relu(self.a(x)))
        return self.head(x)


def _stored(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = Zoo()
    model.norm.running_mean.uniform_(-1, 1)
    model.norm.running_var.uniform_(0.5, 2)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _whole(stored, batch, **options):
    model = Zoo()
    model.load_state_dict(stored)
    report = lsuv_init(model, batch, seed=11, **options)
    return model.state_dict(), report


def _empty_zoo() -> Zoo:
    """accelerate's empty-weights context re-creates a parameter assigned to a second module: tie it again."""
    with init_empty_weights():
        model = Zoo()
    model.head.weight = model.embed.weight
    return model


def _streamed(stored, batch, **options):
    model = _empty_zoo()
    source, sink = DictSource(stored), DictSink(stored)
    report = lsuv_init(model, batch, seed=11, source=source, sink=sink, **options)
    values = {k: sink.out[k] if k in sink.written else stored[k] for k in stored}
    return values, report, source, sink


@pytest.mark.parametrize("pre_init", ["orthonormal", "keep", "gaussian"])
def test_streaming_equals_the_whole_model_run(pre_init):
    stored = _stored()
    batch = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    expected, whole = _whole(stored, batch, pre_init=pre_init)
    got, streamed, source, sink = _streamed(stored, batch, pre_init=pre_init)
    assert [r.to_dict() for r in streamed.layers] == [r.to_dict() for r in whole.layers]
    for key in stored:
        assert torch.equal(got[key], expected[key]), key
    # what the pre-init draws is never read; the layer called twice is written once
    if pre_init != "keep":
        assert "a.weight" not in source.reads and "shared.weight" not in source.reads
    else:
        assert "a.weight" in source.reads
    assert sorted(sink.written) == sorted(set(sink.written))
    assert "embed.weight" not in sink.written  # not a target: the file's bytes stay as they are
    assert "unused.weight" in sink.written  # unreached: pre-initialized, as a whole-model run leaves it
    assert streamed.counts == whole.counts


def test_streaming_leaves_the_placeholders():
    stored = _stored()
    batch = torch.randint(0, 50, (2, 5))
    model = _empty_zoo()
    lsuv_init(model, batch, seed=0, source=DictSource(stored), sink=DictSink(stored))
    assert all(p.device.type == "meta" for p in model.parameters())


def test_a_module_with_its_weights_is_refused():
    with pytest.raises(ValueError, match="meta device"):
        lsuv_init(Zoo(), torch.randint(0, 50, (2, 5)), source=DictSource(_stored()), sink=DictSink(_stored()))


class Tower(nn.Module):
    def __init__(self, width: int, depth: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def test_live_bytes_stay_near_one_layer():
    """The tensors alive at once during the pass: at most the largest layer (weight + bias, and the
    pre-init's noise and QR work space, about two more weights) plus the activations, with a margin
    of one more weight; the whole model is 24 layers."""
    width, depth, rows = 256, 24, 64
    torch.manual_seed(0)
    stored = {k: v.detach().clone() for k, v in Tower(width, depth).state_dict().items()}
    with init_empty_weights():
        model = Tower(width, depth)
    source, sink = DictSource(stored), DictSink(stored)
    batch = torch.randn(rows, width)
    layer = (width * width + width) * 4
    activations = 3 * rows * width * 4  # input, output, the fit's working copy
    with LiveBytes() as meter:
        lsuv_init(model, batch, seed=0, source=source, sink=sink)
    model_bytes = depth * layer
    bound = 4 * layer + activations
    assert meter.peak <= bound, (meter.peak, bound, model_bytes)
    assert meter.peak < model_bytes / 4
    for key in stored:  # everything was fitted and written
        assert torch.isfinite(sink.out[key]).all()


class ReadsAChildsWeight(nn.Module):
    """Code that uses a module's weight without calling the module: nothing materializes it."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.a = nn.Linear(8, 8)

    def forward(self, ids):
        return self.a(nn.functional.embedding(ids, self.emb.weight))


def test_a_module_read_outside_its_call_is_a_streaming_error():
    from lsuv_convert.lsuv.streaming import StreamingError

    stored = {k: v.detach().clone() for k, v in ReadsAChildsWeight().state_dict().items()}
    with init_empty_weights():
        model = ReadsAChildsWeight()
    with pytest.raises(StreamingError, match="outside that module's call"):
        lsuv_init(model, torch.randint(0, 10, (3, 5)), source=DictSource(stored), sink=DictSink(stored))
