"""Stopping: a closed stdout ends the run quietly after the current model (exit 141); a second
Ctrl-C during a long TorchScript call ends the process at once, with no partial output."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import onnx
import pytest
import torch

from conftest import CONSOLE_SCRIPT
from safety_helpers import tiny_batch, tiny_onnx


@pytest.mark.slow
def test_json_into_a_closed_pipe(tmp_path):
    for k in range(4):
        tiny_onnx(tmp_path / f"m{k}.onnx", seed=k)
        tiny_batch(tmp_path / f"m{k}.npy")
    proc = subprocess.run(f'"{CONSOLE_SCRIPT}" m0.onnx m1.onnx m2.onnx m3.onnx --json | head -1; '
                          'echo "status=${PIPESTATUS[0]}"', shell=True, executable="/bin/bash", cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert "status=141" in proc.stdout, (proc.stdout, proc.stderr)
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    written = sorted(tmp_path.glob("*.lsuv.onnx"))
    assert 1 <= len(written) < 4
    for path in written:
        onnx.load(str(path))  # every output that exists is complete


class Spinner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        print("ENTERED")
        y = x
        for _ in range(2_000_000_000):
            y = torch.add(y, 0.0)
        return self.c(y)


@pytest.mark.slow
@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)], ids=["ctrl-c-twice", "sigterm"])
def test_second_ctrl_c_stops_a_stuck_torchscript_call(tmp_path, signals):
    model = tmp_path / "spin.pt"
    torch.jit.save(torch.jit.script(Spinner()), str(model))
    tiny_batch(tmp_path / "spin.npy")
    child = subprocess.Popen([CONSOLE_SCRIPT, model, "--trust-code"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = ""
        deadline = time.monotonic() + 300
        os.set_blocking(child.stderr.fileno(), False)
        while "ENTERED" not in seen and time.monotonic() < deadline and child.poll() is None:
            try:
                seen += os.read(child.stderr.fileno(), 65536).decode(errors="replace")
            except BlockingIOError:
                pass
            time.sleep(0.2)
        assert "ENTERED" in seen, seen
        child.send_signal(signals[0])
        time.sleep(1.0)
        assert child.poll() is None  # the first one can't interrupt the native loop
        for signum in signals[1:]:
            child.send_signal(signum)
        child.wait(timeout=30)  # a SIGTERM nobody answered ends it after a few seconds
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130
    rest = seen + child.stderr.read().decode(errors="replace")
    assert "stopped at once" in rest, rest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spin.npy", "spin.pt"]
