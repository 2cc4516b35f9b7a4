"""The streaming engine on a tiny transformers model read from safetensors (one tensor at a time) and
written to safetensors in the source's layout: the same values as a run on the whole model; GPT-2's
tied output layer and packed q / k / v Conv1D included."""

from __future__ import annotations

import pytest
import torch

from lsuv_convert.formats.shared.safetensors_io import SafetensorsSource, StreamingSafetensorsWriter, read_header
from lsuv_convert.lsuv.api import lsuv_init

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")


class WriterSink:
    def __init__(self, writer):
        self.writer = writer

    def write(self, name, tensor):
        self.writer.write(name, tensor)

    def read_back(self, name):
        return self.writer.read_back(name)


def _configs():
    return {
        "llama": transformers.LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                          tie_word_embeddings=False, architectures=["LlamaForCausalLM"]),
        "gpt2": transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32,
                                        architectures=["GPT2LMHeadModel"]),
    }


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_safetensors_equal_the_whole_model_run(tmp_path, arch, dtype):
    config = _configs()[arch]
    cls = getattr(transformers, config.architectures[0])
    torch.manual_seed(0)
    cls(config).to(dtype).save_pretrained(tmp_path / "in")
    source_file = tmp_path / "in" / "model.safetensors"
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))

    whole = cls.from_pretrained(tmp_path / "in", dtype=torch.float32).eval()
    whole_report = lsuv_init(whole, ids, seed=3)

    with accelerate.init_empty_weights():
        empty = cls._from_config(config, dtype=torch.float32)
    empty.tie_weights()  # the context re-creates a parameter assigned to a second module
    empty.eval()
    header, _ = read_header(source_file)
    keys = [k for k in header if k != "__metadata__"]
    source = SafetensorsSource({k: (source_file, k) for k in keys})
    writer = StreamingSafetensorsWriter(source_file, tmp_path / "out.safetensors", {"seed": 3})
    report = lsuv_init(empty, ids, seed=3, source=source, sink=WriterSink(writer))
    writer.copy_rest()
    writer.close()

    assert [r.to_dict() for r in report.layers] == [r.to_dict() for r in whole_report.layers]
    from safetensors import safe_open

    state = whole.state_dict()
    with safe_open(str(tmp_path / "out.safetensors"), "pt") as out, safe_open(str(source_file), "pt") as src:
        assert out.metadata()["lsuv_convert.seed"] == "3"
        assert list(out.keys()) == list(src.keys())
        for key in out.keys():
            got = out.get_tensor(key)
            assert got.dtype == dtype  # bf16 stays bf16
            assert torch.equal(got, state[key].to(dtype)), key
