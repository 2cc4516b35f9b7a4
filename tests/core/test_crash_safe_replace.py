"""The crash-safe replace, tested by killing the process at each step and running again.

A folder output (what the Hugging Face writer does: ``atomic_folder`` + ``copy_folder``) and a unit of files (an ONNX model and
its ``.data``) are replaced in a child process that dies (``os._exit``, as a SIGKILL would leave
things: no cleanup runs) right after a chosen step of the protocol. The next run settles what it
left before doing anything else: the model and the previous output are each intact at their
path (old or new, never a mix), and nothing is left behind. Two processes writing one output
at the same time both succeed and leave one complete output."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

from lsuv_convert.command.discovery import settle_beside

STEPS = ["build", "journal", "old moved", "new moved", "journal removed"]

FOLDER_WRITER = r"""
import os, sys
from pathlib import Path
from lsuv_convert import folders
step, src, dest, factor = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
swap_in, sync_tree = folders.swap_in, folders.sync_tree
def die_at(name):
    if name == step:
        os._exit(9)
def building(folder):
    die_at("build")
    sync_tree(folder)
folders.sync_tree = building
folders.swap_in = lambda private, new, d, between=None: swap_in(private, new, d, between=die_at)
for _ in range(int(sys.argv[5]) if len(sys.argv) > 5 else 1):  # what the Hugging Face writer does
    with folders.atomic_folder(dest) as new:
        folders.copy_folder(src, new, skip={"model.safetensors"})
        (new / "model.safetensors").write_bytes(b"weights scaled by " + factor.encode() * 1000)
"""

PAIR_WRITER = r"""
import os, sys
from pathlib import Path
from lsuv_convert import atomic
kill_after, dests = int(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
replace, done = os.replace, []
def dying(a, b):
    replace(a, b)
    if Path(b) in dests:
        done.append(b)
        if len(done) == kill_after:
            os._exit(9)
atomic.os.replace = dying
with atomic.atomic_paths(dests) as tmps:
    for tmp in tmps:
        tmp.write_bytes(b"new " + tmp.name.encode())
"""


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def everything(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def run(script: str, *args, check_code=None):
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    if check_code is not None:
        assert proc.returncode == check_code, proc.stderr
    return proc


@pytest.fixture
def model(tmp_path):
    src = tmp_path / "m"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"model_type": "bert"}')
    (src / "sub" / "vocab.txt").write_text("a\nb\n")
    (src / "model.safetensors").write_bytes(b"the trained weights")
    return src


def _expected(tmp_path, src, factor) -> dict[str, str]:
    """What a complete write of ``src`` scaled by ``factor`` holds (written once, elsewhere)."""
    out = tmp_path / "expected" / f"x{factor}"
    run(FOLDER_WRITER, "never", src, out, factor, check_code=0)
    return snapshot(out)


@pytest.mark.parametrize("in_place", [False, True], ids=["beside", "in-place"])
@pytest.mark.parametrize("step", STEPS)
def test_a_folder_replace_killed_at_each_step_is_settled_by_the_next_run(tmp_path, model, step, in_place):
    dest = model if in_place else tmp_path / "m.lsuv"
    if not in_place:
        run(FOLDER_WRITER, "never", model, dest, 2.0, check_code=0)  # the previous output
    model_before, dest_before = snapshot(model), snapshot(dest)
    new = _expected(tmp_path, model, 3.0)
    proc = run(FOLDER_WRITER, step, model, dest, 3.0)
    assert proc.returncode == 9, proc.stderr  # died right after the step, no cleanup ran

    settle_beside(str(model))  # what the next run does first
    replaced = STEPS.index(step) >= STEPS.index("new moved")
    assert snapshot(dest) == (new if replaced else dest_before)
    if not in_place:
        assert snapshot(model) == model_before
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == (["expected", "m"] if in_place else ["expected", "m", "m.lsuv"]), everything(tmp_path)

    run(FOLDER_WRITER, "never", model, dest, 3.0, check_code=0)  # and the rerun completes
    assert snapshot(dest) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == names


@pytest.mark.parametrize("kill_after", [1, 2])
def test_a_unit_of_files_killed_half_way_is_all_old_or_all_new(tmp_path, kill_after):
    model, data = tmp_path / "m.onnx", tmp_path / "m.onnx.data"
    model.write_bytes(b"old model")
    data.write_bytes(b"old data")
    proc = run(PAIR_WRITER, kill_after, model, data)
    assert proc.returncode == 9, proc.stderr
    settle_beside(str(model))
    if kill_after == 1:  # one of two renamed: the unit goes back to the old pair
        assert (model.read_bytes(), data.read_bytes()) == (b"old model", b"old data")
    else:  # both renamed, only the journal's removal was cut: the new pair stays
        assert (model.read_bytes(), data.read_bytes()) == (b"new m.onnx", b"new m.onnx.data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_two_processes_writing_one_folder_both_finish_with_a_complete_output(tmp_path, model):
    dest = tmp_path / "m.lsuv"
    outputs = {f: _expected(tmp_path, model, f) for f in (2.0, 5.0)}
    procs = [subprocess.Popen([sys.executable, "-c", FOLDER_WRITER, "never", str(model), str(dest), str(f), "6"],
                              cwd=REPO, stderr=subprocess.PIPE, text=True) for f in outputs]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert snapshot(dest) in outputs.values()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expected", "m", "m.lsuv"]
