"""state_dict checkpoints as packages ship them: entries beside the architecture's weights (a
speaker encoder's similarity scale, a Lightning module's ``shift`` buffer under ``model.``-prefixed
weights, optimizer states) carried through unchanged and counted; a model that keeps state between
calls run once; a legacy weight-normed conv written as the weight it was fitted to. Outputs are read
back with ``torch.load(weights_only=True)`` into a freshly built architecture and measured there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import state_dict_helpers as helpers
from conftest import invoke
from lsuv_convert.formats import find_format

TESTS = Path(__file__).resolve().parents[2]
TOL = 0.02 + 1e-3


def _outputs(model, x) -> dict[str, float]:
    """Output variance of every linear / conv module, one run."""
    stats = {}

    def hook_for(name):
        def hook(module, inputs, output):
            stats.setdefault(name, float(output.double().var(unbiased=False)))

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return stats


def _convert(path, data, arch, *extra):
    log = path.with_suffix(".json")
    proc = invoke(path, "--arch", arch, "--data", data, "--device", "cpu", "--log", log, *extra, cwd=TESTS)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(log.read_text())


def test_a_stateful_model_runs_once(tmp_path):
    torch.manual_seed(0)
    torch.save(helpers.stateful().state_dict(), tmp_path / "beat.pt")
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    fmt = find_format(tmp_path / "beat.pt")
    loaded = fmt.load(tmp_path / "beat.pt", arch="state_dict_helpers:stateful")
    fmt.prepare(loaded, [torch.from_numpy(x)])
    assert loaded.state.model.calls == 0  # preparing runs nothing: the LSUV pass is the one run

    _convert(tmp_path / "beat.pt", tmp_path / "x.npy", "state_dict_helpers:stateful")
    fresh = helpers.stateful()
    fresh.load_state_dict(torch.load(tmp_path / "beat.lsuv.pt", weights_only=True))
    stats = _outputs(fresh, torch.from_numpy(x))
    assert fresh.calls == 1
    assert all(abs(v - 1.0) < TOL for v in stats.values()), stats


def test_a_batch_that_does_not_fit_is_one_clear_line(tmp_path):
    torch.save(helpers.stateful().state_dict(), tmp_path / "beat.pt")
    np.save(tmp_path / "bad.npy", np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32))
    proc = invoke(tmp_path / "beat.pt", "--arch", "state_dict_helpers:stateful", "--data", tmp_path / "bad.npy",
                  "--device", "cpu", cwd=TESTS)
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lsuv-convert: error:") and "cannot run on the batch of shape (4, 5)" in line
    assert not (tmp_path / "beat.lsuv.pt").exists()


def test_extra_entries_beside_the_weights_are_carried(tmp_path):
    torch.manual_seed(0)
    state = helpers.speaker().state_dict()
    extra = {"similarity_weight": torch.tensor([10.0]), "similarity_bias": torch.tensor([-5.0])}
    torch.save({"model_state": {**state, **extra}, "step": 315000}, tmp_path / "encoder.pt")
    np.save(tmp_path / "mel.npy", np.random.default_rng(0).standard_normal((6, 10, 8)).astype(np.float32))
    proc, log = _convert(tmp_path / "encoder.pt", tmp_path / "mel.npy", "state_dict_helpers:speaker")
    assert "2 carried" in proc.stderr
    assert sorted(e["name"] for e in log["account"] if e["status"] == "carried") == sorted(extra)
    written = torch.load(tmp_path / "encoder.lsuv.pt", weights_only=True)
    assert written["step"] == 315000 and list(written["model_state"]) == list(state) + list(extra)
    assert all(torch.equal(written["model_state"][k], v) for k, v in extra.items())
    fresh = helpers.speaker()
    fresh.load_state_dict({k: v for k, v in written["model_state"].items() if k not in extra})
    stats = _outputs(fresh, torch.from_numpy(np.load(tmp_path / "mel.npy")))
    assert abs(stats["linear"] - 1.0) < TOL


def test_a_lightning_checkpoint_with_a_buffer_of_its_own(tmp_path):
    torch.manual_seed(0)
    net = helpers.pitch()
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    shift = torch.tensor(0.25)
    ckpt = {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.4.0",
            "state_dict": {**state, "shift": shift},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-3}]}],
            "hyper_parameters": {"bins_per_semitone": 3}}
    torch.save(ckpt, tmp_path / "pesto.ckpt")
    np.save(tmp_path / "cqt.npy", np.random.default_rng(0).standard_normal((8, 1, 32)).astype(np.float32))
    proc, log = _convert(tmp_path / "pesto.ckpt", tmp_path / "cqt.npy", "state_dict_helpers:pitch")
    assert "1 carried" in proc.stderr
    assert [e["name"] for e in log["account"] if e["status"] == "carried"] == ["shift"]
    written = torch.load(tmp_path / "pesto.lsuv.ckpt", weights_only=True)
    assert torch.equal(written["state_dict"]["shift"], shift)
    assert written["optimizer_states"][0]["param_groups"] == [{"lr": 1e-3}] and written["epoch"] == 3
    fresh = helpers.pitch()
    fresh.load_state_dict({k[len("model."):]: v for k, v in written["state_dict"].items() if k.startswith("model.")})
    stats = _outputs(fresh, torch.from_numpy(np.load(tmp_path / "cqt.npy")))
    assert all(abs(v - 1.0) < TOL for v in stats.values()), stats

    del ckpt["state_dict"]["model.2.weight"]
    torch.save(ckpt, tmp_path / "broken.ckpt")
    proc = invoke(tmp_path / "broken.ckpt", "--arch", "state_dict_helpers:pitch", "--data", tmp_path / "cqt.npy",
                  "--device", "cpu", cwd=TESTS)
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "missing from the file: 2.weight" in line


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_weight_normed_checkpoint_is_written_as_the_fitted_weight(tmp_path):
    torch.save(helpers.weight_normed().state_dict(), tmp_path / "wn.pt")
    x = np.random.default_rng(0).standard_normal((16, 4, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    _convert(tmp_path / "wn.pt", tmp_path / "x.npy", "state_dict_helpers:weight_normed")
    written = torch.load(tmp_path / "wn.lsuv.pt", weights_only=True)
    assert list(written) == list(torch.load(tmp_path / "wn.pt", weights_only=True))  # weight_g / weight_v kept
    fresh = helpers.weight_normed()
    fresh.load_state_dict(written)
    stats = _outputs(fresh, torch.from_numpy(x))
    assert set(stats) == {"0", "2", "5"} and all(abs(v - 1.0) < TOL for v in stats.values()), stats
