"""The benchmark scripts run from a clean checkout and print every row they promise.

Both run with ``--quick`` in subprocesses, exactly as a user would start them; the tables
are parsed back from their markdown output.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
NUMBER = re.compile(r"^-?\d+(\.\d+)?x?$")

pytestmark = pytest.mark.slow


def run_script(name: str, *args: str, timeout: float) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown tables by the ``### `` heading above them: rows of cells, header row first."""
    found: dict[str, list[list[str]]] = {}
    heading = None
    for line in text.splitlines():
        if line.startswith("### "):
            heading = line[4:].strip()
        elif line.startswith("|") and heading is not None and not set(line) <= set("|- "):
            found.setdefault(heading, []).append([c.strip() for c in line.strip().strip("|").split("|")])
    return found


def table_starting(found: dict[str, list[list[str]]], prefix: str) -> list[list[str]]:
    matches = [rows for heading, rows in found.items() if heading.startswith(prefix)]
    assert len(matches) == 1, f"no single table under a heading starting {prefix!r}: {list(found)}"
    return matches[0]


def test_speed_quick_prints_every_row_with_numbers():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import speed
    finally:
        sys.path.remove(str(BENCHMARKS))
    found = tables(run_script("speed.py", "--quick", timeout=600))

    lsuv = table_starting(found, "LSUV")
    assert lsuv[0] == speed.LSUV_HEADERS
    assert [row[0] for row in lsuv[1:]] == list(speed.LSUV_MODELS)
    for row in lsuv[1:]:
        for cell in row[3:]:  # forward, ours, ratios, reference, speed-up
            assert NUMBER.match(cell), f"{row[0]}: {cell!r} is not a number"
        assert float(row[4]) > 0 and float(row[6]) > 0

    small = table_starting(found, "At small sizes")
    assert small[0] == speed.SMALL_HEADERS
    assert [row[0] for row in small[1:]] == list(speed.LSUV_MODELS)
    assert all(NUMBER.match(cell) for row in small[1:] for cell in row[2:])

    ortho = table_starting(found, "Orthonormal")
    assert [row[0] for row in ortho[1:]] == list(speed.ORTHO_MODELS)
    for row in ortho[1:]:
        assert all(NUMBER.match(cell) for cell in row[3:]), row

    cli = table_starting(found, "CLI")
    assert cli[0] == speed.CLI_HEADERS
    assert [row[0] for row in cli[1:]] == list(speed.CLI_CASES)
    for row in cli[1:]:  # the CLI and every format plug-in are part of the package: real numbers only
        assert all(NUMBER.match(cell) for cell in row[2:]), f"{row[0]}: {row[1:]}"
    torch_floor = table_starting(found, "The same CLI runs against the torch floor")
    assert torch_floor[0] == speed.TORCH_FLOOR_HEADERS
    assert [row[0] for row in torch_floor[1:]] == [name for name in speed.CLI_CASES if "ONNX" in name]
    for row in torch_floor[1:]:
        assert all(NUMBER.match(cell) for cell in row[2:]), f"{row[0]}: {row[1:]}"
    zoo = table_starting(found, "Zoo")
    assert zoo[0] == speed.ZOO_HEADERS and len(zoo) == 2
    assert all(NUMBER.match(cell) for cell in zoo[1][1:]), zoo[1]


def test_paper_table3_quick_prints_every_cell_and_writes_the_figure(tmp_path):
    plot = tmp_path / "curves.png"
    found = tables(run_script("paper_table3.py", "--quick", "--plot", str(plot), timeout=600))

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import paper_table3
    finally:
        sys.path.remove(str(BENCHMARKS))
    table = table_starting(found, "Test accuracy")
    assert table[0] == ["init", *paper_table3.ACTIVATIONS]
    assert [row[0] for row in table[1:]] == list(paper_table3.INITS)
    cell = re.compile(r"^(n/c|\d+\.\d ± \d+\.\d( \(\d+/\d+ n/c\))?)$")
    for row in table[1:]:
        assert len(row) == 1 + len(paper_table3.ACTIVATIONS)
        assert all(cell.match(c) for c in row[1:]), row
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
