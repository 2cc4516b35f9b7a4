"""Hugging Face folders of 15 architectures, each saved by the installed transformers'
``save_pretrained`` from a tiny config (random weights, nothing downloaded), converted by the CLI,
loaded back by ``from_pretrained`` in a fresh interpreter and measured there: every linear / conv
layer at unit variance on the batch, except a head tied to the embedding, which the tool leaves as
it is. transformers 5 renames the modules of ViT, DeiT, DINOv2, Swin and BEiT and maps the file's
keys when it loads: the written files keep their own keys."""

from __future__ import annotations

import json

import pytest

from conftest import invoke
from hf_helpers import ARCHITECTURES, batch, fresh_variances, tiny_model

transformers = pytest.importorskip("transformers")

TOL = 0.02 + 1e-3


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    work = tmp_path_factory.mktemp("archs")
    out = {}
    for name in ARCHITECTURES:
        tiny_model(name).save_pretrained(work / name)
        data = batch(name, work / f"{name}.npy")
        proc = invoke(work / name, "--data", data, "--log", work / f"{name}.json", "--device", "cpu")
        out[name] = (proc, data)
    return work, out


@pytest.mark.slow
def test_every_architecture_converts_and_reloads_at_unit_variance(converted):
    work, out = converted
    failed = {name: proc.stderr for name, (proc, _) in out.items() if proc.returncode != 0}
    assert not failed
    measured = fresh_variances([(work / f"{name}.lsuv", data) for name, (_, data) in out.items()])
    for name in ARCHITECTURES:
        log = json.loads((work / f"{name}.json").read_text())
        tied = {note.split(":")[0] for note in log["notes"] if "weight tied to" in note}
        layers = measured[str(work / f"{name}.lsuv")]
        assert len(layers) >= 5, (name, layers)
        bad = {k: v for k, v in layers.items() if k not in tied and any(abs(x - 1.0) >= TOL for x in v)}
        assert not bad, (name, bad)
        assert tied <= {"lm_head"}, (name, tied)  # GPT-2, Llama, Qwen2 heads share the embedding in these configs
        assert log["counts"]["unreached"] == 0 and log["counts"]["initialized"] > 0


@pytest.mark.slow
def test_written_files_keep_their_own_keys_dtypes_and_other_tensors(converted):
    from safetensors.torch import load_file

    work, out = converted
    for name in ("vit", "swin", "wav2vec2"):
        assert out[name][0].returncode == 0, out[name][0].stderr
        before = load_file(str(work / name / "model.safetensors"))
        after = load_file(str(work / f"{name}.lsuv" / "model.safetensors"))
        assert list(after) == list(before)
        assert {k: (v.dtype, v.shape) for k, v in after.items()} == {k: (v.dtype, v.shape) for k, v in before.items()}
        changed = {k for k in before if not (before[k] == after[k]).all()}
        assert changed, name
        assert not any("norm" in k.lower() and "pos_conv" not in k for k in changed), (name, changed)
    vit_changed = {k for k, v in load_file(str(work / "vit.lsuv" / "model.safetensors")).items()
                   if not (v == load_file(str(work / "vit" / "model.safetensors"))[k]).all()}
    assert "encoder.layer.0.attention.attention.query.weight" in vit_changed  # the file's key, not layers.0...q_proj
