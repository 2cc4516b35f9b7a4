"""Tied weights in ONNX files follow the rule of the Python API and the state_dict path: a layer
whose stored weight a node that is not a layer also reads (a language model's head reading the
embedding table a Gather reads) is left as it is, with the API's note; a weight only layers share
stays one tensor, scaled once. Checked on the written file with onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli
from lsuv_convert.lsuv.api import lsuv_init
from onnx_helpers import VOCAB, tied_head_model

def _convert(tmp_path: Path, src: Path, *extra) -> tuple[Path, dict]:
    out, log = tmp_path / "out.onnx", tmp_path / "log.json"
    proc = run_cli(src, "-o", out, "--log", log, *extra)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(log.read_text())


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_head_tied_to_embedding_is_left_as_it_is(tmp_path):
    src = tmp_path / "tied.onnx"
    onnx.save(tied_head_model(), src)
    ids = np.random.default_rng(1).integers(0, VOCAB, size=(16, 6)).astype(np.int64)
    np.save(tmp_path / "ids.npy", ids)
    out, log = _convert(tmp_path, src, "--data", tmp_path / "ids.npy")

    assert "head: weight tied to embed (not a conv / linear layer, it runs first); left as it is" in log["notes"]
    assert [layer["name"] for layer in log["layers"]] == ["fc1"]  # fc1_again is fc1 used twice: scaled once
    table = next(a for a in log["account"] if a["name"] == "table")
    assert table["status"] == "skipped" and table["layers"] == ["head"]

    before, after = onnx.load(src), onnx.load(out)
    assert [tuple(n.input) for n in after.graph.node] == [tuple(n.input) for n in before.graph.node]  # nothing rewired
    old, new = _inits(before), _inits(after)
    assert set(new) == set(old)  # no new initializer: nothing untied
    assert new["table"].tobytes() == old["table"].tobytes()
    assert not np.array_equal(new["w1"], old["w1"])

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probe = onnx.load(out)
    probe.graph.output.append(helper.make_tensor_value_info("h1", TensorProto.FLOAT, None))
    h1 = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(["h1"], {"ids": ids})[0]
    assert abs(float(h1.var()) - 1.0) < 0.02
    assert np.isfinite(session.run(["logits"], {"ids": ids})[0]).all()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # a table over 8192 elements, so the exporter's optimizer keeps the Transpose rather than folding it
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=640, n_positions=16,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False).logits


@pytest.mark.filterwarnings("ignore")
def test_gpt2_from_the_dynamo_exporter_follows_the_api(tmp_path):
    model = _gpt2()
    ids = torch.randint(0, 640, (4, 8), generator=torch.Generator().manual_seed(0))
    src = tmp_path / "gpt2.onnx"
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=16)},)
    torch.onnx.export(_Logits(model), (ids,), src, dynamo=True, dynamic_shapes=dims, verbose=False)
    source = onnx.load(src)
    table = next(n.input[0] for n in source.graph.node if n.op_type == "Gather" and "lm_head" in n.input[0])
    assert any(n.op_type == "Transpose" and n.input[0] == table for n in source.graph.node)  # the tie the file holds

    np.save(tmp_path / "ids.npy", ids.numpy())
    out, log = _convert(tmp_path, src, "--data", tmp_path / "ids.npy")

    api_notes = lsuv_init(_gpt2(), ids, seed=0).notes  # the same rule, worded the same way
    assert api_notes == ["lm_head: weight tied to transformer.wte (not a conv / linear layer, it runs first); left as it is"]
    tied = [n for n in log["notes"] if "weight tied to" in n]
    assert len(tied) == 1 and tied[0].endswith("(not a conv / linear layer, it runs first); left as it is")

    written = onnx.load(out)
    assert [tuple(n.input) for n in written.graph.node] == [tuple(n.input) for n in source.graph.node]
    old, new = _inits(source), _inits(written)
    assert set(new) == set(old) and new[table].tobytes() == old[table].tobytes()
    assert len(log["layers"]) == 4 and all(abs(layer["var_after"] - 1.0) < 0.02 for layer in log["layers"])
    logits = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {source.graph.input[0].name: ids.numpy()})[0]
    assert logits.shape == (4, 8, 640) and np.isfinite(logits).all()
