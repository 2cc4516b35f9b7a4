"""Documentation that can't rot: the recipes of README.md and docs/*.md run, their options exist,
the option tables are the CLI's own help, and local links lead somewhere.

Markers (an HTML comment on the line(s) right before a fence):

- ``<!-- runnable -->``: run the block in a fresh temporary folder holding a copy of
  ``sample_models/`` (the layout of a fresh clone); ``bash`` / ``sh`` / ``console`` blocks run with
  ``bash -e``, ``python`` blocks with this interpreter, a ``make`` block is saved as ``Makefile``
  and ``make`` is run with the arguments of ``make="..."``. ``pip install`` commands and the test
  suite itself (``python -m pytest``) are skipped. Attributes: ``slow`` (only in the full suite),
  ``exit=N`` (expected exit status, default 0), ``id=NAME`` and ``after=NAME`` (run block NAME
  first, in the same folder), ``env=KEY=VALUE`` (repeatable).
- ``<!-- creates: PATH ... -->``: files (``PATH/``: folders) that must not exist before the block
  runs and must exist after.
- ``<!-- runnable: pending N -->``: a recipe for a feature that issue N brings from another
  branch; not run (its ``lsuv-convert`` options may include the file's pending options).
- ``<!-- not runnable: REASON -->``: a shell / Python block that only illustrates.
  Every ``bash`` / ``sh`` / ``console`` / ``python`` / ``make`` block must carry one of these.
- ``<!-- pending-options: --a --b -->``: options of features not on this branch yet, which the
  file may name; the test fails once the CLI has them (flip the pending recipes then).
- ``<!-- foreign-options: --a --b -->``: options of other programs (sbatch, ...) the page's text names.
- ``<!-- options: COMMAND -->`` ... ``<!-- /options -->``: the command's option table, generated
  from click's help records (``python tests/docs/test_docs.py --write`` rewrites them).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_models"
PAGES = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
CHECKED_LANGUAGES = SHELL_LANGUAGES | {"python", "make"}
FOREIGN_PROGRAMS = {"pip", "python", "pytest", "make", "sbatch", "#SBATCH", "srun", "xargs", "git", "kubectl", "ruff",
                    "torchrun", "parallel", "find", "jq", "qsub"}
README_TEST_COMMAND = "pip install '.[test]' && python -m pytest"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
COMMENT = re.compile(r"^\s*<!--(.*?)-->\s*$")
TIMEOUT = 600


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    markers: list[str] = field(default_factory=list)  # bodies of the comments right before the fence

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    def marker(self, prefix: str) -> str | None:
        for body in self.markers:
            if body == prefix or body.startswith(prefix + " ") or body.startswith(prefix + ":"):
                return body
        return None

    @property
    def runnable(self) -> list[str] | None:
        """The attributes of a ``runnable`` marker (``[]`` when bare); None when not runnable now."""
        body = self.marker("runnable")
        if body is None or body.startswith("runnable:"):
            return None
        return shlex.split(body)[1:]

    @property
    def pending(self) -> str | None:
        """The issue number of a ``runnable: pending N`` marker; "" for a malformed ``runnable:``."""
        body = self.marker("runnable")
        if body is None or not body.startswith("runnable:"):
            return None
        found = re.fullmatch(r"runnable:\s*pending\s+(\d+)", body)
        return found.group(1) if found else ""

    def attribute(self, key: str) -> list[str]:
        return [a.split("=", 1)[1] for a in self.runnable or [] if a.startswith(key + "=")]

    @property
    def creates(self) -> list[str]:
        body = self.marker("creates")
        return shlex.split(body.split(":", 1)[1]) if body else []


def read_blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page`` with the comments on the lines right before it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        fence, language = opened.group(1), opened.group(2).lower()
        markers, j = [], i - 1
        while j >= 0 and COMMENT.match(lines[j]):
            markers.insert(0, COMMENT.match(lines[j]).group(1).strip())
            j -= 1
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence[0] * len(fence)):
            end += 1
        blocks.append(Block(page, i + 1, language, "\n".join(lines[i + 1:end]) + "\n", markers))
        i = end + 1
    return blocks


def prose(page: Path) -> str:
    """The page without its fenced blocks and HTML comments."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    kept, inside = [], None
    for line in text.splitlines():
        opened = FENCE.match(line)
        if inside is None and opened:
            inside = opened.group(1)[0]
        elif inside is not None and line.strip().startswith(inside * 3):
            inside = None
        elif inside is None:
            kept.append(line)
    return "\n".join(kept)


ALL_BLOCKS = [b for page in PAGES for b in read_blocks(page)]
BY_ID = {name: b for b in ALL_BLOCKS for name in b.attribute("id")}


# ---------------------------------------------------------------- the CLI's own options

def _commands():
    import click

    from lsuv_convert.command.cli import main

    return click, main


def help_text(command: str) -> str:
    """What ``lsuv-convert [COMMAND] --help`` prints."""
    from click.testing import CliRunner

    click, main = _commands()
    result = CliRunner().invoke(main, [*([command] if command else []), "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def help_options() -> dict[str, set[str]]:
    """Long options each command's ``--help`` names ("" is the group: --help, --version)."""
    _, main = _commands()
    return {name: set(OPTION.findall(help_text(name))) for name in ["", *main.commands]}


def options_table(command: str) -> str:
    """The command's option table, made of the help records ``--help`` prints."""
    click, main = _commands()
    cmd = main.commands[command]
    group = click.Context(main, info_name="lsuv-convert", **main.context_settings)  # -h, --help as the CLI has it
    ctx = click.Context(cmd, info_name=command, parent=group)
    rows = ["| option | meaning |", "|---|---|"]
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if not isinstance(param, click.Option) or record is None:
            continue
        names, text = (" ".join(part.split()).replace("|", "\\|") for part in record)
        rows.append(f"| `{names}` | {text} |")
    return "\n".join(rows)


TABLE = re.compile(r"(<!-- options: (\w+)[^>]*-->\n)(.*?)(<!-- /options -->)", re.DOTALL)


def rewrite_tables(text: str) -> str:
    return TABLE.sub(lambda m: f"{m.group(1)}{options_table(m.group(2))}\n{m.group(4)}", text)


def command_lines(block: Block) -> list[tuple[str, list[str]]]:
    """(subcommand, options) of each ``lsuv-convert`` call in a shell or make block."""
    text = re.sub(r"\\\n", " ", block.text)
    calls = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
        except ValueError:
            tokens = line.split()
        for k, token in enumerate(tokens):
            if token != "lsuv-convert":
                continue
            rest = tokens[k + 1:]
            command = rest[0] if rest and rest[0] in ("inspect", "verify", "convert") else "convert"
            options = []
            for word in rest:
                if word in ("&&", "||", "|", ";", ")", "&"):
                    break
                if word.startswith("--"):
                    options.append(word.split("=", 1)[0])
            calls.append((command, options))
    return calls


def declared_options(page: Path, kind: str) -> set[str]:
    """Options a ``<!-- KIND-options: ... -->`` comment of the page declares."""
    found = re.findall(rf"<!--\s*{kind}-options:(.*?)-->", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {o for body in found for o in OPTION.findall(body)}


def pending_options(page: Path) -> set[str]:
    return declared_options(page, "pending")


# ---------------------------------------------------------------- running a recipe

def runnable_params():
    params = []
    for block in ALL_BLOCKS:
        if block.runnable is None:
            continue
        marks = [pytest.mark.slow] if "slow" in block.runnable else []
        params.append(pytest.param(block, id=block.where, marks=marks))
    return params


def _script(block: Block) -> str:
    """The block as run here: ``pip install`` and the test suite itself left out."""
    kept = []
    for line in block.text.splitlines():
        parts = [p for p in re.split(r"\s*&&\s*", line)
                 if not re.match(r"\s*(python -m )?pip install\b", p) and not re.match(r"\s*python -m pytest\b", p)]
        kept.append(" && ".join(parts))
    return "\n".join(kept) + "\n"


def _environment(block: Block, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["LSUV_CONVERT_STATE"] = str(work / ".lsuv-convert-state")  # records beside the run, not in ~/.cache
    env.pop("LSUV_CONVERT_MEMORY_LIMIT", None)
    for pair in block.attribute("env"):
        key, value = pair.split("=", 1)
        env[key] = value
    return env


def _command(block: Block, work: Path) -> list[str]:
    if block.language in SHELL_LANGUAGES:
        (work / ".recipe.sh").write_text(_script(block))
        return ["bash", "-e", ".recipe.sh"]
    if block.language == "python":
        (work / ".recipe.py").write_text(block.text)
        return [sys.executable, ".recipe.py"]
    if block.language == "make":
        (work / "Makefile").write_text(block.text)
        return ["make", *shlex.split(" ".join(block.attribute("make")))]
    raise AssertionError(f"{block.where}: cannot run a {block.language or 'plain'} block")


def run_block(block: Block, work: Path, chain: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    for name in block.attribute("after"):
        assert name in BY_ID, f"{block.where}: after={name}: no block has id={name}"
        assert name not in chain, f"{block.where}: after={name} is a cycle"
        first = run_block(BY_ID[name], work, (*chain, name))
        assert first.returncode == int((BY_ID[name].attribute("exit") or ["0"])[0]), \
            f"{BY_ID[name].where} (run before {block.where}) failed:\n{first.stdout}\n{first.stderr}"
    return subprocess.run(_command(block, work), cwd=work, env=_environment(block, work), capture_output=True,
                          text=True, timeout=TIMEOUT)


def fresh_clone_folder(tmp_path: Path) -> Path:
    """A folder laid out as a fresh clone's root, with the sample models (not their outputs)."""
    work = tmp_path / "clone"
    (work / "sample_models").mkdir(parents=True)
    for path in SAMPLES.iterdir():
        if path.is_file() and ".lsuv." not in path.name and not path.name.startswith("."):
            shutil.copy2(path, work / "sample_models" / path.name)
    return work


@pytest.mark.parametrize("block", runnable_params())
def test_recipe_runs(block: Block, tmp_path):
    if block.language == "make" and shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = fresh_clone_folder(tmp_path)
    for path in block.creates:
        assert not (work / path).exists(), f"{block.where}: {path} exists before the recipe runs"
    proc = run_block(block, work)
    expected = int((block.attribute("exit") or ["0"])[0])
    assert proc.returncode == expected, (
        f"{block.where}: exit {proc.returncode}, the page says {expected}\n"
        f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    for path in block.creates:
        target = work / path
        assert (target.is_dir() if path.endswith("/") else target.is_file()), \
            f"{block.where}: the page says {path} appears, it did not\n--- stderr\n{proc.stderr[-3000:]}"


# ---------------------------------------------------------------- what the pages say

def test_every_command_block_is_marked():
    """A shell / Python / make block is run, pending, or says why it is not runnable."""
    unmarked = [b.where for b in ALL_BLOCKS if b.language in CHECKED_LANGUAGES and b.marker("runnable") is None
                and b.marker("not runnable") is None]
    assert not unmarked, f"mark these blocks <!-- runnable -->, pending or <!-- not runnable: why -->: {unmarked}"
    malformed = [b.where for b in ALL_BLOCKS if b.pending == ""]
    assert not malformed, f"write <!-- runnable: pending ISSUE -->: {malformed}"
    misplaced = [b.where for b in ALL_BLOCKS if b.attribute("make") and b.language != "make"]
    assert not misplaced, f"make= belongs on a make block: {misplaced}"


def test_options_named_in_code_blocks_exist():
    """Each ``lsuv-convert`` call in a block names only options of its own command's ``--help``."""
    known = help_options()
    wrong = []
    for block in ALL_BLOCKS:
        if block.language not in SHELL_LANGUAGES | {"make", "text", ""}:
            continue
        allowed_pending = pending_options(block.page) if block.pending is not None else set()
        for command, options in command_lines(block):
            wrong += [f"{block.where}: lsuv-convert {command} {o}" for o in options
                      if o not in known[command] and o not in allowed_pending]
    assert not wrong, "options not in the command's --help:\n" + "\n".join(wrong)


def test_options_named_in_prose_exist():
    """``--options`` in the text are options of some lsuv-convert command (or pending ones)."""
    known = help_options()
    every = set().union(*known.values())
    wrong = []
    for page in PAGES:
        text = prose(page)
        allowed = every | pending_options(page) | declared_options(page, "foreign")
        spans = re.findall(r"`([^`\n]+)`", text)
        outside = re.sub(r"`[^`\n]+`", " ", text)
        for span in spans:
            words = span.split()
            if words and words[0] in FOREIGN_PROGRAMS:
                continue
            scope = known.get(words[1], every) if words[:1] == ["lsuv-convert"] and len(words) > 1 else allowed
            if words[:1] == ["lsuv-convert"] and len(words) > 1 and words[1] not in known:
                scope = known["convert"]
            wrong += [f"{page.name}: `{span}`" for o in OPTION.findall(span) if o not in scope | pending_options(page)]
        wrong += [f"{page.name}: {o}" for o in OPTION.findall(outside) if o not in allowed]
    assert not wrong, "options the CLI doesn't have:\n" + "\n".join(wrong)


def test_pending_options_are_still_pending():
    """Once a pending option is in the CLI, its recipes must be flipped to runnable."""
    every = set().union(*help_options().values())
    arrived = {f"{p.name}: {o}" for p in PAGES for o in pending_options(p) if o in every}
    assert not arrived, ("these options are now in the CLI: mark their recipes <!-- runnable --> and drop them "
                         f"from <!-- pending-options -->: {sorted(arrived)}")


def test_option_tables_are_the_cli_help():
    """The docs' option tables say what ``--help`` says (regenerate: python tests/docs/test_docs.py --write)."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        found += [m.group(2) for m in TABLE.finditer(text)]
        assert rewrite_tables(text) == text, (
            f"{page.relative_to(REPO)}: an option table differs from the CLI's --help; "
            "run `python tests/docs/test_docs.py --write` and review the change")
    _, main = _commands()
    assert sorted(found) == sorted(main.commands), f"option tables for {sorted(found)}, commands {sorted(main.commands)}"


def test_the_checker_reads_blocks_as_the_pages_mean(tmp_path):
    """Markers, each call's subcommand and options, and what is left out of a run."""
    page = tmp_path / "page.md"
    page.write_text("<!-- runnable slow exit=3 -->\n<!-- creates: a b/ -->\n```bash\n"
                    "pip install . && lsuv-convert inspect m.onnx --json --bogus && lsuv-convert m.onnx --log=x \\\n"
                    "    --tol 0.1  # a comment --not-an-option\npip install '.[test]' && python -m pytest\n```\n"
                    "<!-- runnable: pending 25 -->\n```bash\nlsuv-convert m --shard 0/2\n```\n")
    first, second = read_blocks(page)
    assert first.runnable == ["slow", "exit=3"] and first.attribute("exit") == ["3"] and first.creates == ["a", "b/"]
    assert command_lines(first) == [("inspect", ["--json", "--bogus"]), ("convert", ["--log", "--tol"])]
    assert _script(first).splitlines() == ["lsuv-convert inspect m.onnx --json --bogus && lsuv-convert m.onnx --log=x \\",
                                           "    --tol 0.1  # a comment --not-an-option", ""]
    assert second.runnable is None and second.pending == "25"
    known = help_options()
    assert "--bogus" not in known["inspect"] and "--log" not in known["inspect"] and "--log" in known["convert"]


def test_readme_setup_commands_are_what_ci_runs():
    """The README's two set-up lines, and CI runs its test command."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "pip install . && lsuv-convert sample_models/fitnet1.onnx\n" + README_TEST_COMMAND + "\n" in text
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install '.[test]'" in ci and re.search(r"\bpython -m pytest\s*$", ci, flags=re.MULTILINE), \
        ".ci/run no longer installs '.[test]' and runs `python -m pytest` as the README says"


def test_readme_is_a_front_door():
    """Short enough to read in five minutes; the reference lives in docs/."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 150, f"README.md has {len(lines)} lines; move reference text to docs/"


def test_named_source_files_exist():
    """Source files the pages point to (``lsuv_convert/formats/contract.py``, ...) are there."""
    named = {m for page in PAGES for m in re.findall(r"`((?:lsuv_convert|tests|benchmarks|sample_models)/[\w/.-]+\.py)",
                                                     page.read_text(encoding="utf-8"))}
    assert named, "the pages name no source file: is the pattern still right?"
    missing = sorted(m for m in named if not (REPO / m).is_file())
    assert not missing, f"the pages name files that are not there: {missing}"


def test_readme_links_every_page():
    """Each reference page is reachable from the front door."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in PAGES[1:] if f"](docs/{p.name}" not in text]
    assert not missing, f"README.md links none of: {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower()).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.*)$", prose(page), flags=re.MULTILINE)}


def test_local_links_resolve():
    """Every relative link of the pages names a file (and heading) that exists."""
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/docs/test_docs.py --write   (regenerates the docs' option tables)")
    sys.path.insert(0, str(REPO))
    for page in PAGES:
        old = page.read_text(encoding="utf-8")
        new = rewrite_tables(old)
        if new != old:
            page.write_text(new, encoding="utf-8")
            print(f"rewrote {page.relative_to(REPO)}")
