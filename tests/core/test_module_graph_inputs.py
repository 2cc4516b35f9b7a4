"""module_graph.built_graph hands the batch as the module takes it (token ids as int64) on through
the ModelGraph, and leaves the caller's list of inputs as it was given."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lsuv_convert.formats.contract import LoadedModel
from lsuv_convert.formats.model_graph import InputSpec
from lsuv_convert.formats.shared.eager_graph import built_graph, module_target_layers


class TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, ids):
        return self.fc(self.embed(ids))


def test_typed_batch_travels_in_the_graph_and_the_callers_list_is_untouched():
    model = TokenModel()
    targets, _ = module_target_layers(model)
    loaded = LoadedModel(format="state_dict", source=Path("tokens.pth"), inputs=[InputSpec("ids", (None, None), "int64", 10)],
                         state=None, targets=targets)
    given = [torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]])]  # ids delivered as floats
    original = given[0]
    graph = built_graph("state_dict", loaded, model, given, check=True, engine_path="hooks")
    assert given[0] is original and given[0].dtype == torch.float32
    (typed,) = graph.run_inputs
    assert typed.dtype == torch.int64 and torch.equal(typed, original.long())
    assert graph.module(typed).shape == (2, 3, 4)


def test_prepare_hands_on_what_it_was_given_where_the_plugin_typed_nothing(tmp_path):
    import shutil

    from lsuv_convert.formats import get_format

    sample = Path(__file__).resolve().parents[2] / "sample_models" / "fitnet1.onnx"
    shutil.copy(sample, tmp_path / "m.onnx")
    fmt = get_format("onnx")
    x = torch.randn(2, 3, 32, 32)
    graph = fmt.prepare(fmt.load(tmp_path / "m.onnx"), [x])
    assert graph.run_inputs[0] is x
