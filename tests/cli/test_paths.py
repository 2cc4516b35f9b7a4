"""No path is both read and written: collisions are usage errors (exit 2) before any work."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import invoke
from safety_helpers import TINY_PROTOTXT, snapshot, tiny_batch, tiny_onnx

from lsuv_convert.atomic import TEMP_MARK, atomic_path, atomic_paths, clean_stale
from lsuv_convert.command.discovery import expand
from lsuv_convert.errors import OutputError


@pytest.fixture
def work(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    tiny_batch(tmp_path / "m.npy")
    return tmp_path


def assert_usage_error(proc, folder, before, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    assert snapshot(folder) == before, "an input changed or an output was written"


@pytest.mark.parametrize("args, needles", [
    (["--log", "m.onnx"], ["--log file", "input model"]),
    (["--plot", "m.onnx"], ["--plot file", "input model"]),
    (["--log", "m.npy"], ["--log file", "sample batch"]),
    (["--data", "m.npy", "--log", "m.npy"], ["--log file", "--data file"]),
    (["-o", "m.npy", "--force"], ["output of", "sample batch"]),
    (["-o", "out.onnx", "--log", "out.onnx"], ["written twice", "--log file"]),
    (["-o", "out.onnx", "--plot", "out.onnx.data"], ["written twice", "side file"]),
    (["-o", "m.onnx"], ["input model", "--in-place"]),
    (["--in-place", "--log", "m.onnx"], ["--log file", "input model"]),
    (["-o", "m.npy/out.onnx"], ["m.npy is a file, not a folder"]),
])
def test_collisions_are_usage_errors(work, args, needles):
    before = snapshot(work)
    proc = invoke("m.onnx", *args, cwd=work)
    assert_usage_error(proc, work, before, *needles)


def test_hard_and_symbolic_links_to_an_input_count_as_the_input(work):
    os.link(work / "m.npy", work / "hard.npy")
    os.symlink(work / "m.onnx", work / "soft.onnx")
    before = snapshot(work)
    assert_usage_error(invoke("m.onnx", "-o", "hard.npy", cwd=work), work, before, "sample batch")
    assert_usage_error(invoke("m.onnx", "--log", "soft.onnx", cwd=work), work, before, "input model")


def test_writing_into_a_data_folder_is_refused(work):
    images = work / "images"
    images.mkdir()
    import PIL.Image

    PIL.Image.new("L", (8, 8), 3).save(images / "a.png")
    before = snapshot(work)
    proc = invoke("m.onnx", "--data", "images", "--plot", "images/plot.png", cwd=work)
    assert_usage_error(proc, work, before, "--data folder")


@pytest.mark.slow
def test_two_models_with_one_name_do_not_share_an_output(tmp_path):
    tiny_onnx(tmp_path / "zoo" / "a" / "m.onnx", seed=1)
    tiny_onnx(tmp_path / "zoo" / "b" / "m.onnx", seed=2)
    before = snapshot(tmp_path)
    proc = invoke("zoo/a/m.onnx", "zoo/b/m.onnx", "--output-dir", "out", cwd=tmp_path)
    assert_usage_error(proc, tmp_path, before, "written twice", "zoo/a/m.onnx", "zoo/b/m.onnx")
    proc = invoke("zoo/a/m.onnx", "zoo/b/m.onnx", "--log", "logs", cwd=tmp_path)
    assert_usage_error(proc, tmp_path, before, "written twice", "--log file")
    # a glob mirrors the folders: two outputs, and two logs in a --log folder mirrored the same way
    proc = invoke("zoo/*/m.onnx", "--output-dir", "out", "--log", "logs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out/a/m.lsuv.onnx").is_file() and (tmp_path / "out/b/m.lsuv.onnx").is_file()
    assert (tmp_path / "logs/a/m.lsuv.onnx.json").is_file() and (tmp_path / "logs/b/m.lsuv.onnx.json").is_file()
    assert proc.stderr.count("ok    ") == 2


def test_caffe_in_place_without_weights_keeps_an_unnamed_caffemodel(tmp_path):
    (tmp_path / "net.prototxt").write_text(TINY_PROTOTXT)
    (tmp_path / "net.caffemodel").write_bytes(b"trained weights nobody named")
    before = snapshot(tmp_path)
    proc = invoke("net.prototxt", "--in-place", cwd=tmp_path)
    assert_usage_error(proc, tmp_path, before, "net.caffemodel", "--weights")


def test_in_place_rewrites_exactly_the_model(work):
    proc = invoke("m.onnx", "--in-place", "-q", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in work.iterdir()) == ["m.npy", "m.onnx"]


def test_temporary_files_are_never_models(work):
    leftover = work / f".m.onnx.x1y2{TEMP_MARK}"
    leftover.mkdir()
    tiny_onnx(leftover / "m.onnx")  # what a killed run leaves: a complete-looking model
    assert [j.path.name for j in expand([str(work)])] == ["m.onnx"]
    assert [j.path for j in expand([str(work / "**" / "*.onnx")])] == [work / "m.onnx"]


def test_stale_temporary_folders_are_cleaned_and_fresh_ones_kept(tmp_path):
    old, young = tmp_path / f".a.onnx.old{TEMP_MARK}", tmp_path / f".b.onnx.new{TEMP_MARK}"
    for folder in (old, young):
        folder.mkdir()
        (folder / "x").write_bytes(b"partial")
    past = time.time() - 7 * 3600
    os.utime(old, (past, past))
    clean_stale(tmp_path)
    assert not old.exists() and young.exists()


def test_failed_write_leaves_nothing(tmp_path):
    dest = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
            fh.write(b"half")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        with atomic_path(tmp_path / "file" / "out.bin"):
            pass


def test_a_unit_of_files_is_replaced_together_or_not_at_all(tmp_path):
    model, data = tmp_path / "m.onnx", tmp_path / "m.onnx.data"
    model.write_bytes(b"old model")
    data.write_bytes(b"old data")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "keep").write_bytes(b"")  # a non-empty folder: the last rename fails
    with pytest.raises(OutputError):
        with atomic_paths([data, model, blocker]) as tmps:
            for tmp in tmps:
                tmp.write_bytes(b"new")
    assert data.read_bytes() == b"old data" and model.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "m.onnx", "m.onnx.data"]


def test_onnx_external_pair_survives_a_failed_rebuild(tmp_path, monkeypatch):
    from lsuv_convert.formats.onnx import files

    source = tiny_onnx(tmp_path / "src" / "m.onnx", external=True)
    model, external = files.read_model(source)
    out = tmp_path / "m.lsuv.onnx"
    files.write_model(_copy(model), out, set(external))
    before = snapshot(tmp_path)
    assert (tmp_path / "m.lsuv.onnx.data").is_file()

    def broken(*args):
        raise OutputError("serialization failed")

    monkeypatch.setattr(files, "_serialize", broken)
    with pytest.raises(OutputError):
        files.write_model(_copy(model), out, set(external))
    assert snapshot(tmp_path) == before  # the old pair, complete; no temporary file


def _copy(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


ROLES = st.sampled_from(["m.onnx", "m.npy", "data.npy", "out.onnx", "logs", "m.lsuv.onnx", "sub/x.json"])


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(output=st.one_of(st.none(), ROLES), log=st.one_of(st.none(), ROLES), plot=st.one_of(st.none(), ROLES),
       in_place=st.booleans(), data=st.booleans())
def test_no_combination_of_options_changes_an_input(tmp_path_factory, output, log, plot, in_place, data):
    work = tmp_path_factory.mktemp("prop")
    tiny_onnx(work / "m.onnx")
    tiny_batch(work / "m.npy")
    tiny_batch(work / "data.npy", seed=5)
    read = "data.npy" if data else "m.npy"  # the batch this run reads (the other is just a file)
    inputs = {read: (work / read).read_bytes()}
    model = (work / "m.onnx").read_bytes()
    args = ["m.onnx", "-q"]
    for flag, value in (("-o", output), ("--log", log), ("--plot", plot)):
        if value is not None:
            args += [flag, value]
    if in_place:
        args.append("--in-place")
    if data:
        args += ["--data", "data.npy"]
    proc = invoke(*args, cwd=work)
    assert proc.returncode in (0, 2), proc.stderr
    assert {name: (work / name).read_bytes() for name in inputs} == inputs
    if not (in_place and proc.returncode == 0 and output in (None, "m.onnx")):
        assert (work / "m.onnx").read_bytes() == model
