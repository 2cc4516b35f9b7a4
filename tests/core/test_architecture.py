"""The layering, checked on the source: who may import whom (lazy imports inside functions count).

- The engine side (engine, api, orthonormal, settings, graph, statistics) never imports a
  format plug-in, the pipeline or the CLI: it knows no file.
- A format plug-in never imports another plug-in, the pipeline, the runner or the CLI.
- No module imports itself back through others (no import circles, lazy ones included).
- Discovering formats (the registry, ``--help``) imports no heavy library.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lsuv_convert"
ENGINE_SIDE = {"engine", "api", "orthonormal", "settings", "graph", "statistics"}
UPPER = {"pipeline", "runner", "cli", "console"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


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
            found.add(target)
            for alias in node.names:  # ``from . import convert`` imports a submodule
                candidate = f"{target}.{alias.name}"
                if _exists(candidate):
                    found.add(candidate)
    found.discard(name)
    return {m for m in found if _exists(m)}


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def plugin_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "formats" and parts[2] not in ("base", "__init__"):
        return parts[2]
    return None


def test_engine_side_knows_no_file_format():
    edges = graph()
    for module, targets in edges.items():
        if module.split(".")[-1] in ENGINE_SIDE and module.count(".") == 1:
            bad = {t for t in targets if t.startswith("lsuv_convert.formats") or t.split(".")[-1] in UPPER}
            assert not bad, f"{module} imports {sorted(bad)}"


def test_plugins_import_no_other_plugin_nor_the_layers_above():
    edges = graph()
    checked = 0
    for module, targets in edges.items():
        mine = plugin_of(module)
        if mine is None:
            continue
        checked += 1
        for target in targets:
            other = plugin_of(target)
            assert other in (None, mine), f"{module} (plug-in {mine}) imports {target} (plug-in {other})"
            assert target.split(".")[-1] not in UPPER or target.count(".") > 1, f"{module} imports {target}"
    assert checked > 20  # the walk really saw the plug-ins


def test_no_import_circles():
    edges = graph()
    # the registry imports its plug-ins by name at run time (importlib), not through these edges
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if _is_ancestor_package(nxt, node):
                continue  # importing one's own package's __init__ is how Python runs anyway
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


def _is_ancestor_package(candidate: str, module: str) -> bool:
    return module.startswith(candidate + ".")


def test_discovering_formats_imports_no_heavy_library():
    code = ("import sys; from lsuv_convert.formats import all_formats, model_extensions; all_formats(); "
            "model_extensions(); import lsuv_convert.cli; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'onnx2torch', 'cv2', 'numpy', 'transformers') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported at discovery: {out.stdout.strip()}"
