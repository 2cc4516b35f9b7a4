"""A Hugging Face folder's other files are never unpickled (training_args.bin, a stray
pytorch_model.bin beside model.safetensors): they are copied byte for byte; a config.json nested
100k levels deep is one clean line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from archive_helpers import assert_refused, payload_torch_save
from conftest import invoke

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    work = tmp_path_factory.mktemp("hf_untrusted")
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(work / "bert")
    np.save(work / "ids.npy", np.random.default_rng(0).integers(0, 64, (2, 8)).astype(np.int64))
    return work


@pytest.mark.slow  # a conversion: seconds
def test_pickled_companions_are_copied_never_unpickled(folder, tmp_path):
    import shutil

    model = tmp_path / "bert"
    shutil.copytree(folder / "bert", model)
    marker = tmp_path / "marker"
    for name in ("training_args.bin", "pytorch_model.bin", "optimizer.pt"):
        (model / name).write_bytes(payload_torch_save(marker))
    proc = invoke(model, "--data", folder / "ids.npy", "-o", tmp_path / "out", "--device", "cpu")
    assert proc.returncode in (0, 3), proc.stderr
    assert not marker.exists()
    for name in ("training_args.bin", "pytorch_model.bin", "optimizer.pt"):
        assert (tmp_path / "out" / name).read_bytes() == (model / name).read_bytes()


def test_a_deeply_nested_config_is_one_clean_line(folder, tmp_path):
    import shutil

    model = tmp_path / "deep"
    shutil.copytree(folder / "bert", model)
    (model / "config.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    proc = invoke(model, "--data", folder / "ids.npy", "-o", tmp_path / "out")
    assert_refused(proc, tmp_path / "never", "config.json", "nested too deeply")
