"""TorchScript code is checked before torch.jit.load: file, print and custom ops are refused
with one line naming the op, nothing runs; --trust-code loads anyway; stdout stays JSON."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import invoke, run_cli
from safety_helpers import HolderNet, rewrite_code, scripted_bytes, snapshot

from lsuv_convert.formats.shared.archive_guard import open_archive
from lsuv_convert.formats.torchscript.codecheck import first_disallowed, read_sources

SETSTATE = "self.b = (state)[0]"
FORWARD_RETURN = "    d = self.d\n"


@pytest.fixture(scope="module")
def base() -> bytes:
    return scripted_bytes(HolderNet())


@pytest.fixture
def work(tmp_path) -> Path:
    np.save(tmp_path / "batch.npy", np.random.default_rng(0).standard_normal((4, 2, 8, 8)).astype(np.float32))
    (tmp_path / "secret.txt").write_bytes(b"\0" * 12)
    return tmp_path


def hostile(base: bytes, work: Path, kind: str) -> tuple[Path, Path, str]:
    """(model, file its code would write or None, op the refusal names)."""
    side = work / "side_effect.bin"
    cases = {
        "from_file": (SETSTATE, f'self.b = torch.from_file("{work / "secret.txt"}", None, 3)', "aten::from_file"),
        "save": (SETSTATE, f'{SETSTATE}\n    torch.save(self.b, "{side}")', "aten::save"),
        "ops_save": (SETSTATE, f'{SETSTATE}\n    ops.aten.save(self.b, "{side}")', "aten::save"),
        "print": (FORWARD_RETURN, f'{FORWARD_RETURN}    print("HELLO FROM THE MODEL")\n', "prim::Print"),
        "custom_op": (FORWARD_RETURN, f'{FORWARD_RETURN}    _9 = ops.mylib.launch(x)\n', "mylib::launch"),
        "alias": (SETSTATE, f'_f = torch.from_file\n    self.b = _f("{work / "secret.txt"}", None, 3)', "aten::from_file"),
    }
    old, new, op = cases[kind]
    return rewrite_code(base, work / f"{kind}.pt", old, new), side, op


@pytest.mark.parametrize("kind", ["from_file", "save", "ops_save", "print", "custom_op", "alias"])
def test_refused_by_inspect_and_convert_with_no_side_effect(base, work, kind):
    model, side, op = hostile(base, work, kind)
    before = snapshot(work)
    for args in (["inspect", model], [model, "--data", work / "batch.npy"]):
        proc = invoke(*args)
        assert proc.returncode == 1, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and op in lines[0] and "--trust-code" in lines[0] and ".py" in lines[0], proc.stderr
        assert "HELLO" not in proc.stdout + proc.stderr
    assert snapshot(work) == before and not side.exists()


def test_the_checks_are_real_torch_hazards(base, work):
    """Without the check (--trust-code), the same archive does write a file at load time."""
    model, side, _ = hostile(base, work, "save")
    proc = invoke("inspect", model, "--trust-code")
    assert proc.returncode == 0, proc.stderr
    assert side.is_file()


@pytest.mark.slow
def test_trusted_model_prints_but_json_stays_clean(base, work):
    model, _, _ = hostile(base, work, "print")
    proc = run_cli(model, "--data", work / "batch.npy", "--trust-code", "--json", "--allow-unconverged")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "ok"
    assert "HELLO FROM THE MODEL" in proc.stderr
    torch.jit.load(str(work / "print.lsuv.pt"))  # a valid TorchScript file


@pytest.mark.slow
def test_common_architectures_pass_the_check():
    import torchvision

    for model in (torchvision.models.resnet18(num_classes=4), torchvision.models.mobilenet_v3_small(num_classes=4)):
        model.eval()
        for archive in (scripted_bytes(model), _traced_bytes(model)):
            opened = open_archive(io.BytesIO(archive))
            assert first_disallowed(read_sources(opened, opened.root, Path("m.pt"))) is None


def test_large_extra_files_are_refused(work, monkeypatch):
    from lsuv_convert.formats.torchscript import archive

    model = work / "extra.pt"
    torch.jit.save(torch.jit.script(HolderNet()), str(model), _extra_files={"notes.txt": b"x" * 4096})
    monkeypatch.setattr(archive, "MAX_EXTRA_BYTES", 1024)
    proc = invoke("inspect", model)
    assert proc.returncode == 1 and "extra files" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def _traced_bytes(model) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(model, torch.randn(1, 3, 32, 32)), buf)
    return buf.getvalue()


def test_a_checkpoint_pickle_in_a_torchscript_layout_is_named_as_such(base, work):
    """A torch.save pickle dressed as TorchScript (code/ and constants.pkl beside it) is not
    "written by a newer PyTorch": it is a checkpoint, refused without unpickling."""
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, buf)
    checkpoint = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    real = zipfile.ZipFile(io.BytesIO(base))
    prefix = real.namelist()[0].split("/")[0]
    fake = work / "fake.pt"
    with zipfile.ZipFile(fake, "w") as out:
        for name in checkpoint.namelist():
            out.writestr(f"{prefix}/{name.split('/', 1)[1]}", checkpoint.read(name))
        for name in real.namelist():
            if "/code/" in name or name.endswith("constants.pkl"):
                out.writestr(name, real.read(name))
    proc = invoke("inspect", fake)
    assert proc.returncode == 1 and "ordinary pickle" in proc.stderr and "newer" not in proc.stderr, proc.stderr


def test_an_extra_file_that_expands_a_thousandfold_is_refused(work):
    plain = work / "plain.pt"
    torch.jit.save(torch.jit.script(HolderNet()), str(plain), _extra_files={"blob.bin": b"\0" * (4 << 20)})
    bomb = work / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            compress = zipfile.ZIP_DEFLATED if info.filename.endswith("extra/blob.bin") else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info.filename), compress_type=compress)
    assert bomb.stat().st_size < 200_000
    before = snapshot(work)
    proc = invoke(bomb, "--data", work / "batch.npy")
    assert proc.returncode == 1 and "expands" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert snapshot(work) == before


def test_verify_refuses_too_and_trust_code_lets_it_measure(base, work):
    model, _, op = hostile(base, work, "print")
    proc = invoke("verify", model, "--data", work / "batch.npy")
    assert proc.returncode == 1 and op in proc.stderr, proc.stderr
    trusted = invoke("verify", model, "--data", work / "batch.npy", "--trust-code", "--json")
    assert trusted.returncode in (0, 1) and "refused" not in trusted.stderr, trusted.stderr
    assert json.loads(trusted.stdout.splitlines()[-1])["layers"]
