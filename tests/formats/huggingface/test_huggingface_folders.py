"""Hugging Face model folders: a tiny BERT (random weights from a config, nothing downloaded) saved
as one model.safetensors and sharded; converted by the CLI to NAME.lsuv/, re-loaded with
transformers' from_pretrained in a fresh process and measured there with hooks; same files, shard
layout, keys, dtypes and metadata. Also: a folder is one model in a zoo walk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from checkpoint_helpers import assert_unit_variances, fresh_measure
from conftest import invoke
from lsuv_convert.command.discovery import expand
from lsuv_convert.formats import find_format

transformers = pytest.importorskip("transformers")


def _safetensors_layout(folder):
    from safetensors import safe_open

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as fh:
            meta = {k: v for k, v in (fh.metadata() or {}).items() if not k.startswith("lsuv_convert.")}
            out[path.name] = (meta, {k: (str(fh.get_slice(k).get_dtype()), fh.get_slice(k).get_shape()) for k in fh.keys()})
    return out


def _tensors(folder):
    from safetensors.torch import load_file

    return {k: v for path in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(path)).items()}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    work = tmp_path_factory.mktemp("hf")
    config = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config)
    model.save_pretrained(work / "bert")
    model.save_pretrained(work / "bert_sharded", max_shard_size="20KB")
    for name in ("bert", "bert_sharded"):
        (work / name / "tokenizer.json").write_text('{"version": "1.0"}')
        (work / name / "extras").mkdir()
        (work / name / "extras" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    np.save(work / "ids.npy", np.random.default_rng(0).integers(0, 96, (4, 12)).astype(np.int64))
    procs = {name: invoke(work / name, "--data", work / "ids.npy", "--log", work / f"{name}.json", "--device", "cpu")
             for name in ("bert", "bert_sharded")}
    return work, procs


@pytest.mark.slow
def test_folders_reload_with_from_pretrained_in_a_fresh_process(folders):
    work, procs = folders
    for name, proc in procs.items():
        assert proc.returncode == 0, (name, proc.stderr)
    results = fresh_measure([{"kind": "hf", "path": work / f"{name}.lsuv", "batch": [work / "ids.npy"]}
                             for name in ("bert", "bert_sharded")])
    for name in ("bert", "bert_sharded"):
        entry = results[str(work / f"{name}.lsuv")]
        assert entry["tied"] == ["cls.predictions.decoder"]  # tied to the embedding: left as it is
        measured = {k: v for k, v in entry["vars"].items() if k not in entry["tied"]}
        # q, k, v, attention output, intermediate and output of both layers + the MLM transform
        assert "bert.encoder.layer.1.attention.self.value" in measured
        assert_unit_variances(measured, least=13)


@pytest.mark.slow
def test_same_files_layout_keys_dtypes_and_metadata(folders):
    work, procs = folders
    for name in ("bert", "bert_sharded"):
        assert procs[name].returncode == 0, procs[name].stderr
        src, out = work / name, work / f"{name}.lsuv"
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == sorted(p.relative_to(src) for p in src.rglob("*"))
        for path in src.rglob("*"):
            if path.is_file() and path.suffix != ".safetensors":
                assert (out / path.relative_to(src)).read_bytes() == path.read_bytes(), path
        assert _safetensors_layout(out) == _safetensors_layout(src)
        before, after = _tensors(src), _tensors(out)
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and all(k.endswith((".weight", ".bias")) for k in changed)
        assert not any("embeddings" in k or "LayerNorm" in k for k in changed)
    assert len(list((work / "bert_sharded").glob("*.safetensors"))) > 1
    log = json.loads((work / "bert_sharded.json").read_text())
    assert log["format"] == "huggingface" and log["provenance"]["tool"] == "lsuv-convert"


@pytest.mark.slow
def test_inspect_shows_provenance_and_verify_passes(folders):
    work, procs = folders
    assert procs["bert_sharded"].returncode == 0
    proc = invoke("inspect", work / "bert_sharded.lsuv", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "huggingface" and info["inputs"][0]["dtype"] == "int64"
    assert info["provenance"]["seed"] == 0 and len(info["provenance"]["batch_sha256"]) == 64
    proc = invoke("verify", work / "bert_sharded.lsuv", "--data", work / "ids.npy", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"]
    # an output folder newer than every file of the model folder is up to date
    proc = invoke(work / "bert_sharded", "--data", work / "ids.npy", "--device", "cpu")
    assert proc.returncode == 0 and "up to date" in proc.stderr.lower()


def test_a_model_folder_is_one_model_in_a_zoo(tmp_path):
    zoo = tmp_path / "zoo"
    (zoo / "text" / "bert").mkdir(parents=True)
    (zoo / "text" / "bert" / "config.json").write_text('{"model_type": "bert"}')
    (zoo / "text" / "bert" / "model.safetensors").write_bytes(b"x")
    (zoo / "text" / "bert.lsuv").mkdir()  # an earlier output: not a model
    (zoo / "text" / "bert.lsuv" / "config.json").write_text("{}")
    (zoo / "text" / "bert.lsuv" / "model.safetensors").write_bytes(b"x")
    (zoo / "plain").mkdir()
    (zoo / "plain" / "weights.safetensors").write_bytes(b"x")
    jobs = [job.path.relative_to(zoo).as_posix() for job in expand([str(zoo)])]
    assert jobs == ["plain/weights.safetensors", "text/bert"]
    assert [j.path for j in expand([str(zoo / "text" / "bert")])] == [zoo / "text" / "bert"]
    assert find_format(zoo / "text" / "bert").name == "huggingface"
    assert find_format(zoo / "text" / "bert").default_output(zoo / "text" / "bert") == zoo / "text" / "bert.lsuv"
    proc = invoke("inspect", zoo / "plain")
    assert proc.returncode == 1 and "no single model" in proc.stderr


def test_folder_output_replaces_a_previous_one_as_a_unit(tmp_path):
    from safetensors.torch import save_file

    from lsuv_convert.formats.huggingface.folder import read_shards, write_folder

    src = tmp_path / "m"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"model_type": "bert"}')
    (src / "sub" / "merges.txt").write_text("a b\n")
    save_file({"w": torch.ones(2, 2), "b": torch.zeros(2, dtype=torch.float16)}, str(src / "model.safetensors"),
              metadata={"format": "pt"})
    shards = read_shards(src)
    shards[0].tensors["w"].mul_(3)
    out = tmp_path / "m.lsuv"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    write_folder(src, out, shards, {"seed": 5})
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "config.json", "model.safetensors", "sub", "sub/merges.txt"]
    (written,) = read_shards(out)
    assert torch.equal(written.tensors["w"], torch.full((2, 2), 3.0)) and written.tensors["b"].dtype == torch.float16
    assert written.metadata == {"format": "pt", "lsuv_convert.seed": "5"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.lsuv"]  # no temporary folder left
    write_folder(src, src, read_shards(src), {})  # --in-place: the folder itself, replaced as a unit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.lsuv"]
    assert (src / "sub" / "merges.txt").read_text() == "a b\n"
