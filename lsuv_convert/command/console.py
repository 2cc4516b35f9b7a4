"""What the CLI shows on stderr: rich progress and tables on a terminal, plain lines otherwise.

On a terminal: a progress bar over models and over the layers of the model in hand, and a
per-layer table after each model. Elsewhere (CI, Make): one line per model. ``quiet``: errors only.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from rich.console import Console as RichConsole
from rich.table import Table
from rich.text import Text


def _fmt(value, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def layer_table(log: dict) -> Table:
    table = Table(title=f"{log['model']} -> {log['output']}", title_justify="left", show_edge=False)
    for col, justify in (("#", "right"), ("layer", "left"), ("op", "left"), ("weight", "left"),
                         ("var before", "right"), ("var after", "right"), ("mean after", "right"),
                         ("iter", "right"), ("scale", "right"), ("", "left")):
        table.add_column(col, justify=justify)
    for layer in log["layers"]:
        mark = "[green]ok[/]" if layer["converged"] else f"[red]{layer.get('reason', 'not converged')}[/]"
        table.add_row(str(layer["index"]), Text(layer["name"]), Text(layer["op"]),
                      "x".join(str(d) for d in layer.get("weight_shape", [])),
                      _fmt(layer.get("var_before")), _fmt(layer.get("var_after")), _fmt(layer.get("mean_after")),
                      str(layer.get("iterations", 0)), _fmt(layer.get("scale"), ".4g"), mark)
    return table


class _NoProgress:
    def advance(self):
        pass

    def start_model(self, path):
        pass

    def set_layers(self, n):
        pass

    def layer_done(self, name, report):
        pass

    def end_model(self):
        pass


class _RichProgress(_NoProgress):
    def __init__(self, progress, total: int):
        self.progress = progress
        self.models = progress.add_task("models", total=total)
        self.layers = None

    def advance(self):
        self.progress.advance(self.models)

    def start_model(self, path):
        self.layers = self.progress.add_task(f"  {Path(path).name}", total=None)

    def set_layers(self, n):
        if self.layers is not None:
            self.progress.update(self.layers, total=n)

    def layer_done(self, name, report):
        if self.layers is not None:
            self.progress.update(self.layers, advance=1, description=f"  {name}")

    def end_model(self):
        if self.layers is not None:
            self.progress.remove_task(self.layers)
            self.layers = None


class Console:
    def __init__(self, *, quiet: bool = False, table: bool | None = None):
        self.err = RichConsole(stderr=True, highlight=False, soft_wrap=True)
        self.tty = sys.stderr.isatty()
        self.quiet = quiet
        self.table = (self.tty if table is None else table) and not quiet
        self.total_models = 0

    @contextlib.contextmanager
    def models(self, total: int):
        self.total_models = total
        if not self.tty or self.quiet:
            yield _NoProgress()
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.err, transient=True) as progress:
            yield _RichProgress(progress, total)

    def _line(self, text: str) -> None:
        if not self.quiet:
            self.err.print(text, markup=False)

    def converted(self, model: Path, output: Path, log: dict, seconds: float) -> None:
        if self.table:
            self.err.print(layer_table(log))
        layers = log["layers"]
        bad = sum(1 for layer in layers if not layer["converged"] and layer.get("reached", True))
        extra = f", {bad} not converged" if bad else ""
        params = log.get("counts")
        if params:
            carried = f", {params['carried']} carried" if params.get("carried") else ""
            extra += (f"; parameters: {params['initialized']} initialized, {params['unreached']} unreached, "
                      f"{params['skipped']} skipped{carried};")
        else:
            extra += ","
        self._line(f"ok    {model} -> {output} ({len(layers)} layers{extra} {log['device']}, {seconds:.2f} s; data: {log['data']})")

    def skipped(self, model: Path, output: Path) -> None:
        self._line(f"skip  {model} -> {output} (up to date; --force rebuilds)")

    def note(self, message: str) -> None:
        self._line(message)

    def warn(self, message: str) -> None:
        self._line(f"lsuv-convert: warning: {message}")

    def error(self, message: str) -> None:
        message = " ".join(message.split())
        self.err.print(f"lsuv-convert: error: {message}", markup=False)

    def summary(self, outcomes) -> None:
        if self.quiet:
            return
        counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("ok", "skipped", "failed", "unconverged")}
        if self.tty:
            table = Table(title="summary", title_justify="left", show_edge=False)
            for col in ("model", "status", "output / error"):
                table.add_column(col)
            for o in outcomes:
                style = {"ok": "green", "skipped": "dim", "failed": "red", "unconverged": "yellow"}[o.status]
                table.add_row(str(o.model), f"[{style}]{o.status}[/]", o.error or str(o.output))
            self.err.print(table)
        failed = [o for o in outcomes if o.status in ("failed", "unconverged")]
        line = (f"{counts['ok']} converted, {counts['skipped']} up to date, {counts['failed']} failed, "
                f"{counts['unconverged']} not converged")
        params = [getattr(o, "log", None) and o.log.get("counts") for o in outcomes]
        params = [p for p in params if p]
        if params:
            total = {k: sum(p.get(k, 0) for p in params) for k in ("initialized", "unreached", "skipped", "carried")}
            line += (f"; parameters: {total['initialized']} initialized, {total['unreached']} unreached, "
                     f"{total['skipped']} skipped" + (f", {total['carried']} carried" if total["carried"] else ""))
        if failed:
            line += "; failed: " + ", ".join(str(o.model) for o in failed)
        self._line(line)


def print_inspection(info: dict) -> None:
    console = RichConsole(highlight=False)
    console.print(f"{info['model']} ({info['format']})", markup=False)
    for spec in info["inputs"]:
        shape = "undeclared" if spec["shape"] is None else "x".join(
            ("N" if i == 0 else "?") if d is None else str(d) for i, d in enumerate(spec["shape"]))
        console.print(f"input {spec['name']}: {shape}" + (" (optional)" if spec.get("optional") else ""), markup=False)
    table = Table(show_edge=False)
    for col in ("#", "layer", "op", "weight"):
        table.add_column(col)
    for t in info["targets"]:
        shape = "?" if t["weight_shape"] is None else "x".join(str(d) for d in t["weight_shape"])
        table.add_row(str(t["index"]), Text(t["name"]), Text(t["op"]), shape)  # Text: "w[q]" is no markup
    console.print(table)
    for note in info["notes"]:
        console.print(f"note: {note}", markup=False)
    for key, value in (info.get("provenance") or {}).items():
        console.print(f"provenance {key}: {json.dumps(value) if not isinstance(value, str) else value}", markup=False)


def print_verification(model: Path, rows: list[dict], tol: float, target: float) -> None:
    console = RichConsole(highlight=False)
    table = Table(title=f"{model}: output variance per layer (target {target} +- {tol})", title_justify="left",
                  show_edge=False)
    for col in ("layer", "variance", "mean", ""):
        table.add_column(col)
    for r in rows:
        table.add_row(Text(r["name"]), _fmt(r["var"]), _fmt(r["mean"]), "[green]ok[/]" if r["ok"] else "[red]out of tolerance[/]")
    console.print(table)
