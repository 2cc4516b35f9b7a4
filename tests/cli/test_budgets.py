"""Resource bombs and bad option values: clear one-line errors naming the file (or option) and
the size, before anything is allocated or written."""

from __future__ import annotations

import struct
import zlib

import pytest

from conftest import invoke
from safety_helpers import TINY_PROTOTXT, snapshot, tiny_batch, tiny_onnx


def one_error(proc, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "internal error" not in lines[0] and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_huge_declared_onnx_input_without_data(tmp_path):
    tiny_onnx(tmp_path / "m.onnx", input_shape=(1_000_000, 2, 1_000_000, 1))
    before = snapshot(tmp_path)
    one_error(invoke("m.onnx", cwd=tmp_path), 1, "synthetic batch", "TiB", "--input-shape")
    assert snapshot(tmp_path) == before


def test_npy_header_declaring_terabytes(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1024, 1024, 1024, 1024), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    (tmp_path / "big.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 64)
    one_error(invoke("m.onnx", "--data", "big.npy", cwd=tmp_path), 1, "big.npy", "(1024, 1024, 1024, 1024)", "forged")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(100_000, 100_000), (10_000, 9_000)])
def test_png_decompression_bomb_names_the_image(tmp_path, size):
    tiny_onnx(tmp_path / "m.onnx", input_shape=(4, 1, 8, 8))
    (tmp_path / "images").mkdir()
    import PIL.Image

    PIL.Image.new("L", (8, 8), 7).save(tmp_path / "images" / "a.png")
    (tmp_path / "images" / "bomb.png").write_bytes(_png_header_only(*size))
    one_error(invoke("m.onnx", "--data", "images", cwd=tmp_path), 1, "bomb.png")


def test_deeply_nested_prototxt(tmp_path):
    (tmp_path / "deep.prototxt").write_text(TINY_PROTOTXT + "layer { " * 10_000 + "}" * 10_000)
    one_error(invoke("deep.prototxt", cwd=tmp_path), 1, "deep.prototxt", "nested deeper")


def test_huge_num_output(tmp_path):
    (tmp_path / "wide.prototxt").write_text(TINY_PROTOTXT.replace("num_output: 4", "num_output: 2000000000"))
    one_error(invoke("wide.prototxt", cwd=tmp_path), 1, "wide.prototxt", "num_output 2000000000")


def test_long_garbage_is_quoted_short(tmp_path):
    (tmp_path / "junk.prototxt").write_text('name: "x"\ninput: "data"\n' + "layer { name: " + "A" * 100_000 + " }")
    line = one_error(invoke("junk.prototxt", cwd=tmp_path), 1, "junk.prototxt")
    assert len(line) < 400


def test_solver_net_outside_its_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.prototxt"
    secret.write_text("password: hunter2\n")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "solver.prototxt").write_text(f'net: "{secret}"\nbase_lr: 0.01\n')
    line = one_error(invoke("solver.prototxt", cwd=tmp_path / "proj"), 1, "outside")
    assert "hunter2" not in line


@pytest.mark.parametrize("args, option", [
    (["--tol", "inf"], "--tol"), (["--tol", "nan"], "--tol"), (["--target-var", "nan"], "--target-var"),
    (["--seed", "-1"], "--seed"), (["--seed", str(2**70)], "--seed"), (["--std", "0"], "--std"),
    (["--mean", "nan"], "--mean"), (["--max-iter", "0"], "--max-iter"),
])
def test_bad_option_values_are_usage_errors(tmp_path, args, option):
    tiny_onnx(tmp_path / "m.onnx")
    tiny_batch(tmp_path / "m.npy")
    before = snapshot(tmp_path)
    proc = invoke("m.onnx", *args, cwd=tmp_path)
    assert proc.returncode == 2 and option in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr
    assert snapshot(tmp_path) == before


def test_npz_member_header_declaring_terabytes(tmp_path):
    import zipfile

    tiny_onnx(tmp_path / "m.onnx")
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1024, 1024, 1024, 1024), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as zf:
        zf.writestr("x.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 64)
    one_error(invoke("m.onnx", "--data", "big.npz", cwd=tmp_path), 1, "big.npz", "member x.npy", "forged")
