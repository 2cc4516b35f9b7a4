"""Hugging Face folders as transformers loads them: renamed modules (ViT), weight norm in both of its
stored forms (wav2vec2's positional conv), ``pytorch_model.bin`` single and sharded beside a pickled
``training_args.bin`` that is never unpickled, safetensors preferred over ``.bin``, tensors the model
does not take carried through, tensors it needs refused by name. Every output is loaded back by
``from_pretrained`` and measured there."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from conftest import invoke
from hf_helpers import batch, measure_folder, tiny_model
from lsuv_convert.command.discovery import expand
from lsuv_convert.formats import find_format

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402 - after the importorskip above

TOL = 0.02 + 1e-3


def _unit(stats: dict, skip=()) -> dict:
    """Layers whose output variance is not 1."""
    return {k: v for k, v in stats.items() if k not in skip and any(abs(x - 1.0) >= TOL for x in v)}


def _convert(folder, data, *extra):
    proc = invoke(folder, "--data", data, "--device", "cpu", "--log", folder.with_name(folder.name + ".json"), *extra)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(folder.with_name(folder.name + ".json").read_text())


def test_renamed_modules_are_fitted_and_written_under_the_files_keys(tmp_path):
    from lsuv_convert.formats.huggingface.folder import read_shards
    from lsuv_convert.formats.huggingface.loading import key_map

    model = tiny_model("vit")
    model.save_pretrained(tmp_path / "vit")
    data = batch("vit", tmp_path / "x.npy")
    _, log = _convert(tmp_path / "vit", data)
    assert not _unit(measure_folder(tmp_path / "vit.lsuv", data))
    before, after = (load_file(str(tmp_path / f / "model.safetensors")) for f in ("vit", "vit.lsuv"))
    assert list(after) == list(before)
    assert not torch.equal(before["encoder.layer.1.attention.attention.query.weight"],
                           after["encoder.layer.1.attention.attention.query.weight"])
    assert torch.equal(before["embeddings.position_embeddings"], after["embeddings.position_embeddings"])
    assert any("renamed by transformers" in note for note in log["notes"])
    assert {e["name"] for e in log["account"]} <= set(before)  # parameters named as the file names them
    assert "encoder.layer.0.attention.attention.query" in [layer["name"] for layer in log["layers"]]
    # the map streaming reuses: file key <-> model entry <-> shard
    keys = {fk.key: fk for fk in key_map(model, {s.name: list(s.tensors) for s in read_shards(tmp_path / "vit")})}
    query = keys["encoder.layer.0.attention.attention.query.weight"]
    assert query.shard == "model.safetensors" and query.param in model.state_dict() and query.param != query.key


@pytest.mark.parametrize("form", ["parametrizations", "weight_g"])
def test_weight_norm_is_written_as_the_weight_it_was_fitted_to(tmp_path, form):
    """wav2vec2's positional conv is weight-normed: written g / v compute the fitted weight, in the
    form the file stores (transformers 5 saves ``parametrizations.weight.original0/1``; older files
    hold ``weight_g`` / ``weight_v``, which it renames on load)."""
    folder = tmp_path / "w2v"
    tiny_model("wav2vec2").save_pretrained(folder)
    if form == "weight_g":
        tensors = load_file(str(folder / "model.safetensors"))
        renamed = {k.replace("parametrizations.weight.original0", "weight_g")
                    .replace("parametrizations.weight.original1", "weight_v"): v for k, v in tensors.items()}
        save_file(renamed, str(folder / "model.safetensors"), metadata={"format": "pt"})
    data = batch("wav2vec2", tmp_path / "x.npy")
    _, log = _convert(folder, data)
    stats = measure_folder(tmp_path / "w2v.lsuv", data)
    assert abs(stats["encoder.pos_conv_embed.conv"][0] - 1.0) < TOL
    assert not _unit(stats)
    written = load_file(str(tmp_path / "w2v.lsuv" / "model.safetensors"))
    g_key = [k for k in written if "pos_conv" in k and k.endswith(("weight_g", "original0"))]
    assert len(g_key) == 1 and (g_key[0].endswith("weight_g") == (form == "weight_g"))
    account = {e["name"]: e["status"] for e in log["account"]}
    assert set(account) <= set(written)
    assert [s for n, s in account.items() if "pos_conv_embed.conv" in n] == ["initialized"] * 3


def _bin_folder(tmp_path, name="legacy", shards=1):
    """A folder in the long-standing layout: config.json + pytorch_model.bin (or its shards and
    index), with a pickled training_args.bin whose unpickling would leave a marker file."""
    folder = tmp_path / name
    tiny_model("bert").save_pretrained(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    keys = list(tensors)
    if shards == 1:
        torch.save(tensors, folder / "pytorch_model.bin")
    else:
        weight_map = {}
        for i in range(shards):
            name_i = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
            part = {k: tensors[k] for k in keys[i * len(keys) // shards:(i + 1) * len(keys) // shards]}
            torch.save(part, folder / name_i)
            weight_map.update(dict.fromkeys(part, name_i))
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    marker = tmp_path / f"{name}-unpickled"
    (folder / "training_args.bin").write_bytes(pickle.dumps(_Payload(str(marker))))
    return folder, marker


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("shards", [1, 2])
def test_pytorch_model_bin_folders_with_training_args(tmp_path, shards):
    folder, marker = _bin_folder(tmp_path, shards=shards)
    assert [job.path for job in expand([str(tmp_path)])] == [folder]  # one folder, one model
    data = batch("bert", tmp_path / "ids.npy")
    _convert(folder, data)
    out = tmp_path / "legacy.lsuv"
    assert not marker.exists()  # training_args.bin was copied, never unpickled
    assert (out / "training_args.bin").read_bytes() == (folder / "training_args.bin").read_bytes()
    names = sorted(p.name for p in folder.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for shard in (n for n in names if n.startswith("pytorch_model-") or n == "pytorch_model.bin"):
        before = torch.load(folder / shard, weights_only=True)
        after = torch.load(out / shard, weights_only=True)
        assert list(after) == list(before)
        assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not _unit(measure_folder(out, data))
    assert not marker.exists()


def test_safetensors_is_preferred_and_the_other_weights_file_is_copied(tmp_path):
    folder = tmp_path / "both"
    tiny_model("bert").save_pretrained(folder)
    zeros = {k: torch.zeros_like(v) for k, v in load_file(str(folder / "model.safetensors")).items()}
    torch.save(zeros, folder / "pytorch_model.bin")  # a stale .bin: transformers reads the safetensors
    data = batch("bert", tmp_path / "ids.npy")
    _, log = _convert(folder, data)
    out = tmp_path / "both.lsuv"
    assert (out / "pytorch_model.bin").read_bytes() == (folder / "pytorch_model.bin").read_bytes()
    assert any("pytorch_model.bin copied unchanged" in note for note in log["notes"])
    assert not _unit(measure_folder(out, data))


def test_tensors_the_model_lacks_are_carried_and_missing_ones_named(tmp_path):
    folder = tmp_path / "extra"
    tiny_model("vit").save_pretrained(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    extra = {"similarity_weight": torch.tensor([10.0]), "similarity_bias": torch.tensor([-5.0])}
    save_file({**tensors, **extra}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    data = batch("vit", tmp_path / "x.npy")
    proc, log = _convert(folder, data)
    assert "2 carried" in proc.stderr
    carried = [e for e in log["account"] if e["status"] == "carried"]
    assert sorted(e["name"] for e in carried) == ["similarity_bias", "similarity_weight"]
    assert log["counts"]["carried"] == 2
    written = load_file(str(tmp_path / "extra.lsuv" / "model.safetensors"))
    assert all(torch.equal(written[k], v) for k, v in extra.items())
    assert not _unit(measure_folder(tmp_path / "extra.lsuv", data))

    del tensors["encoder.layer.1.output.dense.weight"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    proc = invoke(folder, "--data", data, "--device", "cpu", "-o", tmp_path / "other.lsuv")
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lsuv-convert: error:") and "missing from the folder" in line and "output.dense" in line
    assert not (tmp_path / "other.lsuv").exists()


def test_a_pickle_disguised_as_pytorch_model_bin_is_refused(tmp_path):
    folder, marker = _bin_folder(tmp_path, name="evil")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload(str(marker))}))
    proc = invoke(folder, "--data", batch("bert", tmp_path / "ids.npy"), "--device", "cpu")
    assert proc.returncode != 0 and not marker.exists()
    (line,) = proc.stderr.strip().splitlines()
    assert "pickle" in line and "pytorch_model.bin" in line


def test_verify_and_format_sniffing_of_a_bin_folder(tmp_path):
    folder, _ = _bin_folder(tmp_path)
    assert find_format(folder).name == "huggingface"
    data = batch("bert", tmp_path / "ids.npy")
    _convert(folder, data)
    proc = invoke("verify", tmp_path / "legacy.lsuv", "--data", data, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"]
    assert os.listdir(tmp_path / "legacy.lsuv")  # written as a folder beside the input


def test_tensors_fused_by_a_converter_are_written_back_through_its_reverse(tmp_path):
    """Mixtral's file holds one tensor per expert; transformers 5 fuses them into one parameter when it
    loads (a converter, not a renaming). The experts are no conv / linear layers: their tensors come
    back bit for bit, under the file's own keys, while the attention layers are initialized."""
    config = transformers.MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                                        num_experts_per_tok=2, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.MixtralForCausalLM(config).save_pretrained(tmp_path / "moe")
    data = batch("bert", tmp_path / "ids.npy")
    _, log = _convert(tmp_path / "moe", data)
    assert any("fused or split by transformers' converters" in note for note in log["notes"])
    before, after = (load_file(str(tmp_path / f / "model.safetensors")) for f in ("moe", "moe.lsuv"))
    assert list(after) == list(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "model.layers.1.self_attn.q_proj.weight" in changed
    assert not any(".experts." in k for k in changed)
    proc = invoke("verify", tmp_path / "moe.lsuv", "--data", data, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stderr
