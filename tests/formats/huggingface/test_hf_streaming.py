"""Hugging Face folders streamed layer by layer (the default) against the same folder loaded whole
(``--no-stream``), same seed: the written tensors are identical, keys, dtypes, shard layout and
index kept; the output reloads in a fresh ``from_pretrained`` at unit variance; a refused run
leaves nothing behind; a folder that can't stream says why and is loaded whole."""

from __future__ import annotations

import json

import pytest

from conftest import invoke
from hf_helpers import ARCHITECTURES, batch, fresh_variances, tiny_model

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
torch = pytest.importorskip("torch")

TOL = 0.02 + 1e-3


def _tensors(folder):
    from safetensors import safe_open

    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as fh:
            out.update({(shard.name, key): fh.get_tensor(key) for key in fh.keys()})
    return out


def _convert_both(src, data, work, *extra):
    logs = {}
    for mode in ("--stream", "--no-stream"):
        out, log = work / f"{src.name}{mode}", work / f"{src.name}{mode}.json"
        proc = invoke(src, "--data", data, "-o", out, "--log", log, "--device", "cpu", "--seed", "5", mode, *extra)
        assert proc.returncode == 0, proc.stderr
        logs[mode] = json.loads(log.read_text())
    return work / f"{src.name}--stream", work / f"{src.name}--no-stream", logs


def _assert_same_output(streamed, whole, logs, exact=True):
    """``exact``: bit for bit; else to float32 rounding (a BLAS kernel may round differently for a
    tensor at another memory alignment, and a tensor read whole and one drawn in place differ there)."""
    a, b = _tensors(streamed), _tensors(whole)
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-6), (key, float((a[key] - b[key]).abs().max()))
    after = [(la["var_after"], lb["var_after"]) for la, lb in zip(logs["--stream"]["layers"], logs["--no-stream"]["layers"])]
    assert len(after) == len(logs["--no-stream"]["layers"])
    assert all(x == y if exact else abs(x - y) < 1e-5 for x, y in after)
    assert logs["--stream"]["counts"] == logs["--no-stream"]["counts"]
    others = {p.name for p in whole.iterdir()} - {p.name for p in whole.glob("*.safetensors")}
    for name in others:  # config, generation config, index: copied as they are
        assert (streamed / name).read_bytes() == (whole / name).read_bytes(), name


def test_sharded_bf16_llama_streams_to_the_same_values(tmp_path):
    """Two shards and their index, bfloat16, the output layer tied to the embedding."""
    model = tiny_model("llama").to(torch.bfloat16)
    src = tmp_path / "llama"
    model.save_pretrained(src, max_shard_size="40KB")
    assert (src / "model.safetensors.index.json").is_file()
    data = batch("llama", tmp_path / "ids.npy")
    streamed, whole, logs = _convert_both(src, data, tmp_path)
    assert any("streamed" in note for note in logs["--stream"]["notes"])
    assert not any("streamed" in note for note in logs["--no-stream"]["notes"])
    assert logs["--stream"]["walker"] == "hooks (streaming)"
    assert len(list(streamed.glob("*.safetensors"))) > 1
    _assert_same_output(streamed, whole, logs)
    assert {t.dtype for t in _tensors(streamed).values()} == {torch.bfloat16}


@pytest.mark.slow
def test_every_architecture_streams_to_the_values_of_a_whole_load(tmp_path):
    """15 architectures, equal to float32 rounding (bit for bit in all but rare last-bit cases, see
    :func:`_assert_same_output`); weight-normed wav2vec2 can't stream and says so."""
    jobs = []
    for name in ARCHITECTURES:
        src = tmp_path / name
        tiny_model(name).save_pretrained(src)
        data = batch(name, tmp_path / f"{name}.npy")
        streamed, whole, logs = _convert_both(src, data, tmp_path)
        notes = logs["--stream"]["notes"]
        if name == "wav2vec2":
            assert any(n.startswith("loaded whole, not streamed: ") and "weight norm" in n for n in notes), notes
        else:
            assert any("streamed" in n for n in notes), (name, notes)
        _assert_same_output(streamed, whole, logs, exact=False)
        jobs.append((streamed, data))
    measured = fresh_variances(jobs)
    for (folder, _), name in zip(jobs, ARCHITECTURES):
        log = json.loads((tmp_path / f"{name}--stream.json").read_text())
        tied = {note.split(":")[0] for note in log["notes"] if "weight tied to" in note}
        layers = measured[str(folder)]
        bad = {k: v for k, v in layers.items() if k not in tied and any(abs(x - 1.0) >= TOL for x in v)}
        assert not bad, (name, bad)


def test_a_refused_streamed_run_leaves_nothing(tmp_path, monkeypatch):
    """A layer refused in the middle of the pass (as a non-finite weight is), after the output's
    headers and the layers before it were written: no output and no temporary folder remain."""
    from lsuv_convert.lsuv import streaming

    src = tmp_path / "llama"
    tiny_model("llama").save_pretrained(src)
    data = batch("llama", tmp_path / "ids.npy")
    before = sorted(p.name for p in tmp_path.iterdir())
    calls = []

    def finite_until_the_fifth(tensor):
        calls.append(1)
        return len(calls) < 5

    monkeypatch.setattr(streaming, "all_finite", finite_until_the_fifth)
    proc = invoke(src, "--data", data, "--device", "cpu")
    assert proc.returncode != 0
    assert "non-finite" in proc.stderr and "nothing was written" in proc.stderr, proc.stderr
    assert len(calls) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary folder


def test_bin_weights_are_loaded_whole_with_a_note(tmp_path):
    from safetensors.torch import load_file

    src = tmp_path / "bert"
    tiny_model("bert").save_pretrained(src)
    torch.save(load_file(str(src / "model.safetensors")), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    data = batch("bert", tmp_path / "ids.npy")
    proc = invoke(src, "--data", data, "--log", tmp_path / "log.json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    notes = json.loads((tmp_path / "log.json").read_text())["notes"]
    assert any(n.startswith("loaded whole, not streamed: ") and "pytorch_model.bin" in n for n in notes), notes


def test_a_model_streaming_cannot_follow_is_run_whole(tmp_path, monkeypatch):
    """A module whose tensors are used without a call of it (simulated: the output layer is never
    materialized) makes the run start again, loaded whole: same output as --no-stream, and a note."""
    from lsuv_convert.lsuv import streaming

    src = tmp_path / "llama"
    tiny_model("llama").save_pretrained(src)
    data = batch("llama", tmp_path / "ids.npy")
    before = streaming.Materializer._before

    def skip_the_head(self, module, args):
        if getattr(module, "out_features", None) != 96:
            before(self, module, args)

    monkeypatch.setattr(streaming.Materializer, "_before", skip_the_head)
    proc = invoke(src, "--data", data, "-o", tmp_path / "a", "--log", tmp_path / "a.json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    notes = json.loads((tmp_path / "a.json").read_text())["notes"]
    assert any(n.startswith("loaded whole, not streamed: the model computes with a module's tensors") for n in notes)
    proc = invoke(src, "--data", data, "-o", tmp_path / "b", "--device", "cpu", "--no-stream")
    assert proc.returncode == 0, proc.stderr
    a, b = _tensors(tmp_path / "a"), _tensors(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left
