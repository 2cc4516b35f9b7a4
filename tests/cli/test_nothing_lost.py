"""Nothing lost, round 3: links, device files, FIFOs, records, stored tensors, names, one line.

Each case: the right exit code, exactly one line on stderr, inputs byte-identical afterwards and
nothing left behind."""

from __future__ import annotations

import json
import os
import stat
import sys

import numpy as np
import pytest
import torch

from conftest import invoke, run_cli
from safety_helpers import TINY_PROTOTXT, snapshot, tiny_batch, tiny_onnx

from lsuv_convert.atomic import OWNER, TEMP_MARK, clean_stale


def one_error(proc, code, *needles):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lsuv-convert: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in proc.stderr


def nothing_changed(folder, before):
    assert snapshot(folder) == before
    assert not [p for p in folder.rglob(".*") if p.name.endswith((TEMP_MARK, ".lsuv-lock"))]


@pytest.fixture
def work(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    tiny_batch(tmp_path / "m.npy")
    return tmp_path


# ---- Hugging Face folders whose files are links --------------------------------------------------------
@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    work = tmp_path_factory.mktemp("hfsrc")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(work / "bert")
    np.save(work / "ids.npy", np.random.default_rng(0).integers(0, 50, (4, 8)).astype(np.int64))
    return work


def _linked_model(hf_model, tmp_path):
    """``m/`` whose model.safetensors is a link to ``store/model.safetensors``; store has notes.txt."""
    store, m = tmp_path / "store", tmp_path / "m"
    store.mkdir()
    m.mkdir()
    (store / "model.safetensors").write_bytes((hf_model / "bert" / "model.safetensors").read_bytes())
    (store / "notes.txt").write_text("mine")
    (m / "config.json").write_text((hf_model / "bert" / "config.json").read_text())
    os.symlink("../store/model.safetensors", m / "model.safetensors")
    (tmp_path / "ids.npy").write_bytes((hf_model / "ids.npy").read_bytes())
    return m


@pytest.mark.parametrize("args, needles", [
    (["-o", "store"], ["store", "model.safetensors"]),
    (["--log", "store/model.safetensors"], ["--log file", "model.safetensors"]),
    (["--plot", "store/notes.txt/x.png"], ["notes.txt is a file"]),
])
def test_a_folder_model_is_checked_file_by_file(hf_model, tmp_path, args, needles):
    _linked_model(hf_model, tmp_path)
    before = snapshot(tmp_path)
    proc = invoke("m", "--data", "ids.npy", *args, cwd=tmp_path)
    one_error(proc, 2, *needles)
    nothing_changed(tmp_path, before)


def test_a_link_loop_in_a_folder_model_is_not_followed(hf_model, tmp_path):
    m = _linked_model(hf_model, tmp_path)
    os.symlink(".", m / "self")
    before = snapshot(tmp_path)
    proc = invoke("m", "--data", "ids.npy", "--log", "m.json", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before
    out = tmp_path / "m.lsuv"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "self"]
    assert not (out / "model.safetensors").is_symlink()  # the linked file's content, with the new weights
    assert os.readlink(out / "self") == "."  # the link itself, never walked
    assert any("self" in note for note in json.loads((tmp_path / "m.json").read_text())["notes"])


def test_a_folder_lsuv_convert_did_not_write_is_never_replaced(hf_model, tmp_path):
    (tmp_path / "bert").symlink_to(hf_model / "bert")
    (tmp_path / "ids.npy").write_bytes((hf_model / "ids.npy").read_bytes())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    proc = invoke("bert", "--data", "ids.npy", "-o", "mine", cwd=tmp_path)
    one_error(proc, 2, "mine", "did not write")
    nothing_changed(tmp_path, before)


def test_special_files_in_a_folder_model_are_refused_before_reading(hf_model, tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    for name in ("config.json", "model.safetensors"):
        (m / name).write_bytes((hf_model / "bert" / name).read_bytes())
    os.mkfifo(m / "pipe")
    (tmp_path / "ids.npy").write_bytes((hf_model / "ids.npy").read_bytes())
    proc = run_cli("m", "--data", "ids.npy", cwd=tmp_path, process=True, timeout=120)
    one_error(proc, 2, "pipe", "FIFO")
    assert not (tmp_path / "m.lsuv").exists()


# ---- outputs that are not regular files -----------------------------------------------------------------
def _device_like(path):
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # a copy of /dev/full
    except (PermissionError, OSError):
        pytest.skip("creating a device file needs root")


@pytest.mark.parametrize("kind", ["device", "fifo", "link", "dangling"])
def test_outputs_that_are_not_regular_files_are_refused(work, kind):
    target = work / "out.onnx"
    (work / "elsewhere").mkdir()
    if kind == "device":
        _device_like(target)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "link":
        (work / "elsewhere" / "keep.onnx").write_bytes(b"keep")
        target.symlink_to(work / "elsewhere" / "keep.onnx")
    else:
        target.symlink_to(work / "elsewhere" / "nothing.onnx")
    before = snapshot(work)
    mode = os.lstat(target).st_mode
    for flag in ("-o", "--log", "--plot"):
        proc = invoke("m.onnx", flag, target, cwd=work)
        one_error(proc, 2, "out.onnx")
        assert os.lstat(target).st_mode == mode  # still the device / FIFO / link
    nothing_changed(work, before)


def test_standard_streams_are_never_replaced(work):
    before = snapshot(work)
    one_error(invoke("m.onnx", "--log", "/dev/stdout", cwd=work), 2, "symbolic link")
    nothing_changed(work, before)


def test_a_fifo_as_data_is_refused_before_it_is_read(work):
    os.mkfifo(work / "data.npy")
    before = snapshot(work)
    proc = run_cli("m.onnx", "--data", "data.npy", cwd=work, process=True, timeout=120)
    one_error(proc, 2, "data.npy", "FIFO")
    nothing_changed(work, before)


# ---- names ------------------------------------------------------------------------------------------------
def test_control_characters_in_a_name_are_escaped_in_every_line(work):
    name = "-m\nlsuv-convert: error: other.onnx: spoofed\x1b[2K.onnx"
    (work / "m.onnx").rename(work / name)
    proc = invoke("--data", "m.npy", f"./{name}", cwd=work)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ok    "), proc.stderr
    assert "\\n" in lines[0] and "\\x1b" in lines[0] and "\x1b" not in proc.stderr


def test_a_legal_long_output_name_works(work):
    name = "o" * 244 + ".onnx"  # 249 bytes: every temporary name beside it must stay within 255
    proc = invoke("m.onnx", "-o", name, "-q", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in work.iterdir()) == sorted(["m.onnx", "m.npy", name])
    before = snapshot(work)
    one_error(invoke("m.onnx", "--log", "j" * 256, cwd=work), 2, "longer than 255 bytes")
    nothing_changed(work, before)


def test_a_damaged_record_means_rebuild(work, state):
    assert _status(invoke("m.onnx", "--json", cwd=work)) == "ok"
    (record,) = state.glob("*.json")
    data = json.loads(record.read_text())
    for damage in ({"inputs": ["m.onnx"]}, {"inputs": {str(work / "m.onnx"): 5}}, {"outputs": 3}, {"outputs": [1]}):
        record.write_text(json.dumps(dict(data, **damage)))
        assert _status(invoke("m.onnx", "--json", cwd=work)) == "ok"


def test_a_relative_arch_module_is_one_usage_line(tmp_path):
    torch.save({"weight": torch.ones(2, 2)}, tmp_path / "w.pth")
    before = snapshot(tmp_path)
    one_error(invoke("w.pth", "--arch", ".tinynet:build", cwd=tmp_path), 2, "--arch", ".tinynet:build")
    nothing_changed(tmp_path, before)


def test_plot_without_matplotlib_is_refused_up_front(work, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    before = snapshot(work)
    one_error(invoke("m.onnx", "--plot", "m.png", cwd=work), 2, "matplotlib")
    nothing_changed(work, before)


def test_log_and_plot_folders_mirror_same_named_models(tmp_path):
    pytest.importorskip("matplotlib")
    tiny_onnx(tmp_path / "zoo" / "a" / "model.onnx", seed=1)
    tiny_onnx(tmp_path / "zoo" / "b" / "model.onnx", seed=2)
    proc = invoke("zoo", "--output-dir", "out", "--log", "logs", "--plot", "plots", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for side, ext in (("out", ""), ("logs", ".json"), ("plots", ".png")):
        for sub in ("a", "b"):
            assert (tmp_path / side / sub / f"model.lsuv.onnx{ext}").is_file(), (side, sub)


# ---- stored tensors: one rule ----------------------------------------------------------------------------
def _factory_module(tmp_path, name, body="") -> str:
    (tmp_path / f"{name}.py").write_text(
        "import torch\n"
        "def build():\n"
        "    net = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.ReLU(),"
        " torch.nn.Conv2d(2, 2, 3, padding=1))\n" + body + "    return net\n")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 2, 6, 6)).astype(np.float32))
    return f"{name}:build"


def _state(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(2, 2, 3, padding=1)).state_dict()


@pytest.mark.parametrize("case, needles", [
    ("tied", ["0.weight", "2.weight", "share one storage"]),
    ("int8", ["0.weight", "int8"]),
    ("expanded", ["2.weight", "expanded"]),
])
def test_weights_that_cannot_hold_new_values_are_refused(tmp_path, case, needles):
    arch = _factory_module(tmp_path, f"nets_{case}")
    state = _state()
    if case == "tied":
        state["2.weight"] = state["0.weight"]
    elif case == "int8":
        state["0.weight"] = torch.ones_like(state["0.weight"], dtype=torch.int8)
    else:
        state["2.weight"] = torch.ones(1, 1, 1, 1).expand(2, 2, 3, 3)
    torch.save(state, tmp_path / "w.pth")
    before = snapshot(tmp_path)
    proc = invoke("w.pth", "--arch", arch, "--data", "x.npy", cwd=tmp_path)
    one_error(proc, 1, *needles)
    assert {k: v for k, v in snapshot(tmp_path).items() if "__pycache__" not in k} == {
        k: v for k, v in before.items() if "__pycache__" not in k}
    assert not (tmp_path / "w.lsuv.pth").exists()


def test_a_tie_the_architecture_shares_is_kept_with_one_value(tmp_path):
    arch = _factory_module(tmp_path, "nets_shared", "    net[2].weight = net[0].weight\n")
    state = _state()
    state["2.weight"] = state["0.weight"]
    torch.save(state, tmp_path / "w.pth")
    proc = invoke("w.pth", "--arch", arch, "--data", "x.npy", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = torch.load(tmp_path / "w.lsuv.pth", weights_only=True)
    assert written["0.weight"].untyped_storage().data_ptr() == written["2.weight"].untyped_storage().data_ptr()
    assert not torch.equal(written["0.weight"], state["0.weight"])


def test_a_target_variance_that_underflows_is_never_converged(work):
    before = snapshot(work)
    proc = invoke("m.onnx", "--target-var", "1e-300", cwd=work)
    one_error(proc, 3, "did not converge")
    nothing_changed(work, before)


# ---- records ----------------------------------------------------------------------------------------------
@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("LSUV_CONVERT_STATE", str(tmp_path / "state"))
    return tmp_path / "state"


def _status(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])["status"]


def test_a_record_listing_a_fifo_rebuilds_and_never_hangs(work, state):
    assert _status(invoke("m.onnx", "--json", cwd=work)) == "ok"
    os.mkfifo(work / "pipe")
    (record,) = state.glob("*.json")
    data = json.loads(record.read_text())
    data["inputs"][str(work / "pipe")] = "0" * 64
    record.write_text(json.dumps(data))
    proc = run_cli("m.onnx", "--json", cwd=work, process=True, timeout=120,
                   env={"LSUV_CONVERT_STATE": str(state)})
    assert _status(proc) == "ok"


def test_editing_the_arch_factory_rebuilds(tmp_path, state):
    arch = _factory_module(tmp_path, "nets_edited")
    torch.save(_state(), tmp_path / "w.pth")
    args = ("w.pth", "--arch", arch, "--data", "x.npy", "--json")
    assert _status(invoke(*args, cwd=tmp_path)) == "ok"
    assert _status(invoke(*args, cwd=tmp_path)) == "skipped"
    with open(tmp_path / "nets_edited.py", "a") as fh:
        fh.write("# edited\n")
    assert _status(invoke(*args, cwd=tmp_path)) == "ok"


def test_another_caffe_stage_rebuilds(tmp_path, state):
    (tmp_path / "net.prototxt").write_text(TINY_PROTOTXT)
    assert _status(invoke("net.prototxt", "--json", cwd=tmp_path)) == "ok"
    assert _status(invoke("net.prototxt", "--json", cwd=tmp_path)) == "skipped"
    assert _status(invoke("net.prototxt", "--json", "--stage", "deploy", cwd=tmp_path)) == "ok"


def test_the_fingerprint_covers_every_request_field():
    from dataclasses import fields, replace

    from lsuv_convert.command.convert import ConvertOptions
    from lsuv_convert.command.records import fingerprint

    base = ConvertOptions()
    for f in fields(base.request):
        changed = {"weights": "w.caffemodel", "arch": "torchvision:resnet18", "trust_code": True,
                   "stages": ("deploy",)}.get(f.name, "x")
        options = replace(base, request=replace(base.request, **{f.name: changed}))
        assert fingerprint(options) != fingerprint(base), f.name


# ---- stale temporaries ------------------------------------------------------------------------------------
def test_stale_temporaries_of_every_kind_are_cleaned_at_once(tmp_path):
    folder = tmp_path / f".m.lsuv.abcdefgh{TEMP_MARK}"
    (folder / "new").mkdir(parents=True)
    (folder / OWNER).write_bytes(b"")  # its owner died: no lock held on it
    (folder / "new" / "model.safetensors").write_bytes(b"a full copy of the weights")
    (tmp_path / ".m.lsuv.lsuv-lock").write_bytes(b"")
    clean_stale(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # two real processes converting a Hugging Face folder
def test_two_identical_runs_writing_one_folder_both_succeed(hf_model, tmp_path):
    import subprocess

    from conftest import CONSOLE_SCRIPT

    (tmp_path / "bert").symlink_to(hf_model / "bert", target_is_directory=True)
    (tmp_path / "ids.npy").write_bytes((hf_model / "ids.npy").read_bytes())
    cmd = [CONSOLE_SCRIPT, "bert", "--data", "ids.npy", "-o", "out", "--force", "-q"]
    env = dict(os.environ, LSUV_CONVERT_STATE=str(tmp_path / "state"))
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert err == ""
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "ids.npy", "out", "state"]


@pytest.mark.parametrize("args", [["--log", "net.prototxt"], ["-o", "net.prototxt"], ["--plot", "net.prototxt"]])
def test_the_net_a_solver_names_is_an_input_before_any_work(tmp_path, args):
    (tmp_path / "net.prototxt").write_text(TINY_PROTOTXT)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\n')
    before = snapshot(tmp_path)
    proc = invoke("solver.prototxt", *args, cwd=tmp_path)
    one_error(proc, 2, "net.prototxt", "solver.prototxt")
    nothing_changed(tmp_path, before)


def test_an_external_data_file_found_at_load_is_never_written(tmp_path):
    tiny_onnx(tmp_path / "m.onnx", external=True)
    before = snapshot(tmp_path)
    proc = invoke("m.onnx", "--log", "m.onnx.data", cwd=tmp_path)
    one_error(proc, 2, "m.onnx.data", "--log file")
    nothing_changed(tmp_path, before)


def test_folders_left_by_older_versions_are_restored_and_cleaned(tmp_path):
    import time

    building, moved = tmp_path / ".m.lsuv.ab12cd34.tmp", tmp_path / ".m.lsuv.zz99yy88.old"
    (building / "sub").mkdir(parents=True)
    (moved / "m.lsuv").mkdir(parents=True)
    (moved / "m.lsuv" / "model.safetensors").write_bytes(b"the previous output")
    past = time.time() - 7 * 3600
    for folder in (building, moved):
        os.utime(folder, (past, past))
    clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.lsuv"]
    assert (tmp_path / "m.lsuv" / "model.safetensors").read_bytes() == b"the previous output"


@pytest.mark.slow  # a Hugging Face conversion
def test_in_place_on_a_folder_keeps_every_file_its_mode_and_its_links(hf_model, tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    for name in ("config.json", "model.safetensors"):
        (m / name).write_bytes((hf_model / "bert" / name).read_bytes())
        (m / name).chmod(0o640)
    (m / "docs").mkdir()
    (m / "docs" / "README.md").write_text("card")
    os.symlink("docs", m / "card")
    (tmp_path / "ids.npy").write_bytes((hf_model / "ids.npy").read_bytes())
    before = snapshot(m)
    proc = invoke("m", "--data", "ids.npy", "--in-place", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    after = snapshot(m)
    assert sorted(after) == sorted(before) and after["model.safetensors"] != before["model.safetensors"]
    assert all(after[k] == before[k] for k in after if k != "model.safetensors")
    assert stat.S_IMODE(os.stat(m / "model.safetensors").st_mode) == 0o640
    assert os.readlink(m / "card") == "docs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.npy", "m"]


def _two_convs(tied: bool):
    """conv 0 and conv 2 on one storage: one Parameter (tied in the module) or two views of it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(2, 2, 3, padding=1))
    if tied:
        net[2].weight = net[0].weight
    else:
        shared = torch.randn(2, 2, 3, 3)
        net[0].weight, net[2].weight = torch.nn.Parameter(shared), torch.nn.Parameter(shared.view(2, 2, 3, 3))
    return net


@pytest.mark.parametrize("kind", ["torchscript", "pt2"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied-in-module", "two-weights-one-storage"])
def test_the_storage_rule_holds_in_programs_too(tmp_path, kind, tied):
    import warnings

    net = _two_convs(tied).eval()
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 2, 6, 6)).astype(np.float32))
    name = "net.pt" if kind == "torchscript" else "net.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "torchscript":
            torch.jit.script(net).save(str(tmp_path / name))
        else:
            torch.export.save(torch.export.export(net, (torch.randn(4, 2, 6, 6),)), str(tmp_path / name))
    before = snapshot(tmp_path)
    proc = invoke(name, "--data", "x.npy", "-q", cwd=tmp_path)
    if tied:  # one weight used twice: kept tied, scaled once
        assert proc.returncode == 0, proc.stderr
        verified = invoke("verify", tmp_path / name.replace(".pt", ".lsuv.pt"), "--data", "x.npy", cwd=tmp_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    else:
        one_error(proc, 1, "0.weight", "2.weight", "share one storage")
        nothing_changed(tmp_path, before)


def test_a_folder_with_an_integer_weight_is_refused(hf_model, tmp_path):
    from safetensors.torch import load_file, save_file

    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text((hf_model / "bert" / "config.json").read_text())
    tensors = load_file(str(hf_model / "bert" / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("query.weight"))
    tensors[key] = torch.ones_like(tensors[key], dtype=torch.int8)
    save_file(tensors, str(m / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "ids.npy").write_bytes((hf_model / "ids.npy").read_bytes())
    before = snapshot(tmp_path)
    one_error(invoke("m", "--data", "ids.npy", cwd=tmp_path), 1, "query.weight", "int8")
    nothing_changed(tmp_path, before)
