"""The map of the package, checked on the source: who may import whom (lazy imports count).

Rooms, lowest first; a module may import its own room and the rooms below it, never above:

- base: the modules directly in ``lsuv_convert/`` (errors, paths, atomic, ...): import only each other.
- ``lsuv``: the method; knows no file.
- ``formats`` core (``formats/__init__``, ``contract``, ``model_graph``, ``registry``) and
  ``formats/shared``; then each plug-in, which never imports another plug-in.
- ``batch``: the data batch; may read the input declarations (``formats.model_graph``) only.
- ``command``: the CLI; may import everything.
- the package's ``__init__`` is the front door and may reach any room (lazily).

No import circles, no import of an ancestor package (``from .. import X`` counts as importing
module ``X`` when ``X`` is a module), at most 12 modules directly in ``lsuv_convert/``, and
discovering formats imports no heavy library.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lsuv_convert"
FORMATS_CORE = {"lsuv_convert.formats", "lsuv_convert.formats.contract", "lsuv_convert.formats.model_graph",
                "lsuv_convert.formats.registry"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """Every lsuv_convert module ``path`` imports, at module level or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("lsuv_convert"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("lsuv_convert"):
                continue
            submodules = {f"{target}.{alias.name}" for alias in node.names if _exists(f"{target}.{alias.name}")}
            if submodules and len(submodules) == len(node.names):
                found.update(submodules)  # ``from . import convert`` imports the submodule, not the package
            else:
                found.add(target)
                found.update(submodules)
    found.discard(name)
    return {m for m in found if _exists(m)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def room(module: str) -> str:
    """The room a module lives in: base, lsuv, formats, shared, plugin:NAME, batch, command, front."""
    parts = module.split(".")
    if module == "lsuv_convert":
        return "front"
    if len(parts) == 2 and parts[1] not in ("lsuv", "formats", "batch", "command"):
        return "base"
    if parts[1] == "formats":
        if module in FORMATS_CORE:
            return "formats"
        if parts[2] == "shared":
            return "shared"
        return f"plugin:{parts[2]}"
    return parts[1]


ALLOWED = {
    "base": {"base"},
    "lsuv": {"base", "lsuv"},
    "formats": {"base", "lsuv", "formats"},
    "shared": {"base", "lsuv", "formats", "shared"},
    "batch": {"base", "formats", "batch"},
}


def test_each_room_imports_only_itself_and_the_rooms_below():
    checked = 0
    for module, targets in graph().items():
        mine = room(module)
        if mine in ("front", "command"):
            continue
        allowed = ALLOWED.get(mine) or {"base", "lsuv", "formats", "shared", mine}
        for target in targets:
            theirs = room(target)
            if mine == "batch" and theirs == "formats":
                assert target == "lsuv_convert.formats.model_graph", f"{module} imports {target}"
            assert theirs in allowed, f"{module} ({mine}) imports {target} ({theirs})"
            checked += 1
    assert checked > 100  # the walk really saw the package


def test_no_module_imports_an_ancestor_package():
    for module, targets in graph().items():
        upward = sorted(t for t in targets if module.startswith(t + "."))
        assert not upward, f"{module} imports its ancestor package(s) {upward}"


def test_at_most_twelve_modules_directly_in_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top


def test_every_room_says_what_lives_there():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        if init.parent.parent.name == "formats" and init.parent.name != "shared":
            assert doc, f"plug-in {init.parent.name} has no docstring"
            continue
        assert doc and "May import" in doc or init.parent == PACKAGE, f"{init} does not say what it may import"


def test_no_import_circles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if state.get(node) is None:
            visit(node)


def test_discovering_formats_imports_no_heavy_library():
    code = ("import sys; from lsuv_convert.formats import all_formats, model_extensions; all_formats(); "
            "model_extensions(); import lsuv_convert.command.cli; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'onnx2torch', 'cv2', 'numpy', 'transformers') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported at discovery: {out.stdout.strip()}"
