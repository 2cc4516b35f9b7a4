"""Bad input through the real console script: one clear line on stderr, the right exit code,
no traceback, nothing written, inputs untouched."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CONSOLE_SCRIPT, REPO, run_cli

SAMPLES = REPO / "sample_models"


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_clean_failure(proc, folder: Path, before: dict, code: int, *needles: str):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("lsuv-convert: error", "Error:"))]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle.lower() in proc.stderr.lower(), (needle, proc.stderr)
    assert snapshot(folder) == before, "files were written or inputs changed"


@pytest.fixture
def work(tmp_path) -> Path:
    for name in ("fitnet1.onnx", "fitnet1.npy", "fitnet_mnist.prototxt", "fitnet_mnist.npy", "small_tanh.pt"):
        shutil.copy(SAMPLES / name, tmp_path / name)
    return tmp_path


def _random_bytes(n=2000):
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


BAD_MODELS = {
    "empty.onnx": b"",
    "random.onnx": _random_bytes(),
    "empty.prototxt": b"",
    "random.prototxt": _random_bytes(),
    "syntax.prototxt": b'name: "x"\nlayer {\n  name: "a"\n  type: "Convolution"\n  bottom: "data"\n  top: "a"\n  convolution_param { num_output: }\n}\n',
    "unknown.prototxt": b'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\nlayer { name: "odd" type: "FancyLayer" bottom: "data" top: "y" }\n',
    "missing_bottom.prototxt": b'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\nlayer { name: "c" type: "Convolution" bottom: "nowhere" top: "y" convolution_param { num_output: 2 kernel_size: 1 } }\n',
    "empty.pt": b"",
    "random.pt": _random_bytes(),
    "model.xyz": b"whatever",
}
EXPECTED = {
    "syntax.prototxt": ["line 7"],
    "unknown.prototxt": ["FancyLayer", "odd"],
    "missing_bottom.prototxt": ["nowhere"],
    "model.xyz": ["unknown model format"],
}


@pytest.mark.parametrize("name", sorted(BAD_MODELS))
def test_bad_model_files(work, name):
    (work / name).write_bytes(BAD_MODELS[name])
    before = snapshot(work)
    proc = run_cli(work / name, "--data", work / "fitnet1.npy")
    assert_clean_failure(proc, work, before, 1, name, *EXPECTED.get(name, []))


@pytest.mark.parametrize("src", ["fitnet1.onnx", "small_tanh.pt"])
def test_truncated_model_files(work, src):
    data = (work / src).read_bytes()
    cut = work / ("cut" + Path(src).suffix)
    cut.write_bytes(data[: len(data) // 2])
    before = snapshot(work)
    proc = run_cli(cut, "--data", work / "fitnet1.npy")
    assert_clean_failure(proc, work, before, 1, cut.name)


def test_onnx_custom_domain_op(work):
    import onnx
    from onnx import TensorProto, helper

    import numpy as np
    from onnx import numpy_helper

    # a node neither torch nor onnxruntime can run, before the layer (after it, it would never run)
    node = helper.make_node("Frobnicate", ["x"], ["f"], domain="com.example")
    conv = helper.make_node("Conv", ["f", "w"], ["y"])
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([node, conv], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(work / "custom.onnx"))
    before = snapshot(work)
    proc = run_cli(work / "custom.onnx")
    assert_clean_failure(proc, work, before, 1, "Frobnicate")


def test_pickled_checkpoint_given_as_torchscript(work):
    torch.save({"w": torch.zeros(3)}, work / "ckpt.pt")
    (work / "marker.txt").write_text("x")
    before = snapshot(work)
    proc = run_cli(work / "ckpt.pt", "--data", work / "fitnet1.npy")
    assert_clean_failure(proc, work, before, 1, "ckpt.pt", "--arch")  # a state_dict: its architecture is needed
    assert not (work / "pwned").exists()


def test_pickle_payload_in_a_pt_zip_is_never_executed(work):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {work / 'pwned'}",))

    with zipfile.ZipFile(work / "evil.pt", "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(Evil()))
    before = snapshot(work)
    proc = run_cli(work / "evil.pt", "--data", work / "fitnet1.npy")
    assert_clean_failure(proc, work, before, 1, "evil.pt")
    assert not (work / "pwned").exists()


def _data_case(work: Path, kind: str) -> Path:
    path = work / f"{kind}.npy"
    rng = np.random.default_rng(0)
    arrays = {
        "rank": rng.standard_normal((4, 3, 32), dtype=np.float32),
        "channels": rng.standard_normal((4, 1, 32, 32), dtype=np.float32),
        "spatial": rng.standard_normal((4, 3, 30, 32), dtype=np.float32),
        "nan": np.full((4, 3, 32, 32), np.nan, dtype=np.float32),
        "inf": np.where(rng.random((4, 3, 32, 32)) > 0.5, np.inf, 0).astype(np.float32),
        "constant": np.full((4, 3, 32, 32), 0.5, dtype=np.float32),
    }
    if kind == "object":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "text":
        path = work / "data.txt"
        path.write_text("1 2 3")
    elif kind == "unsupported":
        path = work / "data.csv"
        path.write_text("1,2,3")
    elif kind == "notnpy":
        path.write_bytes(b"definitely not numpy")
    elif kind == "missing":
        path = work / "nowhere.npy"
    else:
        np.save(path, arrays[kind])
    return path


DATA_CASES = {
    "rank": ["rank 4", "rank 3"],
    "channels": ["channels 1", "(N, 3, 32, 32)"],
    "spatial": ["30"],
    "nan": ["NaN"],
    "inf": ["Inf"],
    "constant": ["constant"],
    "object": ["pickle"],
    "text": ["token ids", "float32"],  # text for an image model
    "unsupported": ["unsupported", ".npy"],
    "notnpy": ["numpy"],
    "missing": ["not found"],
}


@pytest.mark.parametrize("kind", sorted(DATA_CASES))
def test_bad_data(work, kind):
    data = _data_case(work, kind)
    before = snapshot(work)
    proc = run_cli(work / "fitnet1.onnx", "--data", data)
    assert_clean_failure(proc, work, before, 1, *DATA_CASES[kind])


def test_batch_of_one_warns_but_works(work):
    np.save(work / "one.npy", np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32))
    proc = run_cli(work / "fitnet1.onnx", "--data", work / "one.npy", "--allow-unconverged")
    assert proc.returncode == 0, proc.stderr
    assert "batch size 1" in proc.stderr


def test_output_equal_to_input_needs_in_place(work):
    before = snapshot(work)
    proc = run_cli(work / "fitnet1.onnx", "-o", work / "fitnet1.onnx")
    assert_clean_failure(proc, work, before, 2, "--in-place")
    ok = run_cli(work / "fitnet1.onnx", "--in-place")
    assert ok.returncode == 0, ok.stderr
    assert snapshot(work)["fitnet1.onnx"] != before["fitnet1.onnx"]


def test_missing_output_folder_is_created(work):
    proc = run_cli(work / "fitnet1.onnx", "-o", work / "new" / "deeper" / "out.onnx")
    assert proc.returncode == 0, proc.stderr
    assert (work / "new" / "deeper" / "out.onnx").is_file()


def test_read_only_output_folder(work, tmp_path):
    if os.geteuid() == 0:
        target = Path("/sys/fs/lsuv-out.onnx")  # root ignores permission bits; sysfs is read-only
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "out.onnx"
    before = snapshot(work)
    proc = run_cli(work / "fitnet1.onnx", "-o", target)
    assert_clean_failure(proc, work, before, 1, "cannot write")
    assert not target.exists()


DISK_FULL = """
import errno, os, sys
import lsuv_convert.atomic as atomic
def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
atomic.os.fsync = full
from lsuv_convert.command.cli import main
sys.argv = ["lsuv-convert"] + sys.argv[1:]
main()
"""

INTERRUPT_IN_SAVE = """
import sys
import lsuv_convert.atomic as atomic
def interrupted(fd):
    raise KeyboardInterrupt
atomic.os.fsync = interrupted
from lsuv_convert.command.cli import main
sys.argv = ["lsuv-convert"] + sys.argv[1:]
main()
"""


@pytest.mark.parametrize("src,data", [pytest.param("fitnet1.onnx", "fitnet1.npy", marks=pytest.mark.slow),
                                      ("fitnet_mnist.prototxt", "fitnet_mnist.npy"), ("small_tanh.pt", "fitnet1.npy")])
def test_disk_full_leaves_nothing(work, src, data):
    before = snapshot(work)
    proc = subprocess.run([sys.executable, "-c", DISK_FULL, str(work / src), "--data", str(work / data)],
                          capture_output=True, text=True, timeout=600)
    assert_clean_failure(proc, work, before, 1, "disk full")


@pytest.mark.slow  # a real process
def test_interrupt_during_save_leaves_nothing(work):
    before = snapshot(work)
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_IN_SAVE, str(work / "fitnet1.onnx")],
                          capture_output=True, text=True, timeout=600)
    assert_clean_failure(proc, work, before, 130, "interrupted")


@pytest.mark.slow  # a real process and a large model
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_in_the_middle_of_a_large_model(tmp_path, sig):
    """A real signal while a large model is being initialized: no output, no temp file."""
    import torchvision

    model = torch.jit.trace(torchvision.models.vgg11(weights=None).eval(), torch.zeros(1, 3, 64, 64))
    torch.jit.save(model, str(tmp_path / "vgg.pt"))
    np.save(tmp_path / "b.npy", np.random.default_rng(0).standard_normal((8, 3, 64, 64), dtype=np.float32))
    before = snapshot(tmp_path)
    # A suite started with nohup or in the background passes SIGINT on as ignored, and Python
    # (like any well-behaved program) keeps it so: give the child a terminal's default.
    proc = subprocess.Popen([CONSOLE_SCRIPT, str(tmp_path / "vgg.pt"), "--data", str(tmp_path / "b.npy")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(6)  # well into loading / pre-init / LSUV of ~130M parameters
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args,needle", [
    (["--tol", "-1"], "--tol"), (["--max-iter", "0"], "--max-iter"), (["--device", "tpu"], "--device"),
    (["--pre-init", "xavier"], "--pre-init"), (["--target-var", "0"], "--target-var"),
])
def test_usage_errors_exit_2(work, args, needle):
    before = snapshot(work)
    proc = run_cli(work / "fitnet1.onnx", *args)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(work) == before


def test_cuda_asked_for(work):
    proc = run_cli(work / "fitnet1.onnx", "--device", "cuda", "-o", work / "cuda.onnx")
    if torch.cuda.is_available():
        assert proc.returncode == 0, proc.stderr
    else:
        before = snapshot(work)
        assert_clean_failure(proc, work, before, 1, "CUDA is not available")


@pytest.mark.slow  # a real process
def test_debug_shows_the_traceback(work):
    (work / "bad.onnx").write_bytes(b"")
    proc = run_cli(work / "bad.onnx", "--debug", process=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_unconverged_layer_exits_3_and_writes_nothing(work):
    """A net with a dead layer (its input is always zero): exit 3 unless --allow-unconverged."""
    from torch import nn

    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.b(self.a(x) * 0.0)

    torch.jit.save(torch.jit.script(Dead()), str(work / "dead.pt"))
    before = snapshot(work)
    proc = run_cli(work / "dead.pt", "--data", work / "fitnet1.npy", "--log", work / "log.json")
    assert proc.returncode == 3, proc.stderr
    assert "did not converge" in proc.stderr and "Traceback" not in proc.stderr
    assert not (work / "dead.lsuv.pt").exists()
    written = set(snapshot(work)) - set(before)
    assert written == {"log.json"}  # the log says why; the model is not written
    ok = run_cli(work / "dead.pt", "--data", work / "fitnet1.npy", "--allow-unconverged")
    assert ok.returncode == 0 and (work / "dead.lsuv.pt").is_file()


def test_interrupt_swallowed_by_a_library_still_stops_the_write(tmp_path, capsys):
    """A Ctrl-C whose KeyboardInterrupt some library code catches must not let the run write
    its output: the signal is remembered and checked before the output is renamed into place."""
    from lsuv_convert.atomic import write_bytes_atomic
    from lsuv_convert.command.cli import _guarded

    dest = tmp_path / "out.bin"

    def action():
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # SIGINT may be ignored where the suite runs (nohup)
            time.sleep(1)  # the handler runs here and raises
        except BaseException:  # noqa: BLE001 - what a careless library does
            pass
        write_bytes_atomic(dest, b"data")
        return 0

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert _guarded(action, debug=False) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored
    write_bytes_atomic(dest, b"data")  # and the record with them: later writes in this process work
    assert dest.read_bytes() == b"data"
