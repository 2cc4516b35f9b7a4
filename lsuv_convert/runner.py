"""Running the CLI's commands over many models: outputs, up-to-date checks, progress, summary.

Knows nothing of formats beyond the registry, and nothing of LSUV beyond the pipeline.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .discover import ModelJob, expand, mirrored
from .errors import LsuvError, OutputError, UnconvergedError
from .pipeline import ConvertOptions, convert, finite_json, sidecar_batch


@dataclass
class Outcome:
    model: Path
    output: Path | None
    status: str  # "ok", "skipped", "failed", "unconverged"
    error: str | None = None
    layers: int = 0
    unconverged: int = 0
    seconds: float = 0.0
    exit_code: int = 0
    log: dict | None = field(default=None, repr=False)

    def to_json(self) -> str:
        return json.dumps({
            "model": str(self.model), "output": str(self.output) if self.output else None, "status": self.status,
            "error": self.error, "layers": self.layers, "unconverged": self.unconverged,
            "seconds": round(self.seconds, 3),
        })


class Run:
    """One ``lsuv-convert MODEL...`` invocation."""

    def __init__(self, options: ConvertOptions, *, output, output_dir, log_path, plot_path, force, fail_fast,
                 quiet, json_lines, table, debug):
        from .console import Console

        self.options = options
        self.output = output
        self.output_dir = output_dir
        self.log_path = log_path
        self.plot_path = plot_path
        self.force = force
        self.fail_fast = fail_fast
        self.json_lines = json_lines
        self.debug = debug
        self.console = Console(quiet=quiet, table=table)
        self.many = False

    def run(self, args: list[str]) -> int:
        jobs = expand(args)
        self.many = len(jobs) > 1
        if self.output is not None and len(jobs) > 1:
            raise LsuvError("-o/--output names one file but several models were given; use --output-dir")
        outcomes: list[Outcome] = []
        with self.console.models(len(jobs)) as progress:
            for job in jobs:
                outcome = self._one(job, progress)
                outcomes.append(outcome)
                if self.json_lines:
                    print(outcome.to_json(), flush=True)
                progress.advance()
                if outcome.status in ("failed", "unconverged") and self.fail_fast:
                    break
        if len(jobs) > 1:
            self.console.summary(outcomes)
        codes = [o.exit_code for o in outcomes if o.exit_code]
        return 1 if any(c != 3 for c in codes) else (3 if codes else 0)

    def _one(self, job: ModelJob, progress) -> Outcome:
        from .formats import find_format

        start = time.perf_counter()
        output = None
        try:
            fmt = find_format(job.path)
            output = self._output_for(job, fmt)
            if not (self.force or self.options.in_place) and _up_to_date(output, self._inputs_of(job.path)):
                self.console.skipped(job.path, output)
                return Outcome(job.path, output, "skipped")
            log_path = self._side_path(self.log_path, output, ".json")
            progress.start_model(job.path)
            result = convert(job.path, output, options=self.options, log_path=log_path,
                             on_layer=progress.layer_done, on_targets=progress.set_layers)
            for warning in result.warnings:
                self.console.warn(warning)
            if self.plot_path is not None:
                from .plot import write_plot

                write_plot(result.log, self._side_path(self.plot_path, output, ".png"))
            seconds = time.perf_counter() - start
            self.console.converted(job.path, output, result.log, seconds)
            return Outcome(job.path, output, "ok", layers=len(result.log["layers"]),
                           unconverged=len(result.unconverged), seconds=seconds, log=result.log)
        except LsuvError as exc:
            if self.debug:
                raise
            message = str(exc) if exc.path is not None else f"{job.path}: {exc}"
            self.console.error(message)
            status = "unconverged" if isinstance(exc, UnconvergedError) else "failed"
            return Outcome(job.path, output, status, error=message, seconds=time.perf_counter() - start,
                           exit_code=exc.exit_code)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a bug in one model must not stop the others
            if self.debug:
                raise
            message = f"{job.path}: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"
            self.console.error(message)
            return Outcome(job.path, output, "failed", error=message, seconds=time.perf_counter() - start, exit_code=1)
        finally:
            progress.end_model()

    def _output_for(self, job: ModelJob, fmt) -> Path:
        if self.output is not None:
            return self.output
        if self.options.in_place:
            return fmt.in_place_output(job.path, self.options.weights)
        default = fmt.default_output(job.path)
        if self.output_dir is not None:
            return mirrored(job, self.output_dir, default.name)
        return default

    def _inputs_of(self, model: Path) -> list[Path]:
        paths = [model, self.options.data or sidecar_batch(model), self.options.weights]
        if model.is_dir():  # a folder model (Hugging Face): editing a file inside doesn't touch the folder's time
            paths += [p for p in model.rglob("*") if p.is_file()]
        return [p for p in paths if p is not None]

    def _side_path(self, option: Path | None, output: Path, ext: str) -> Path | None:
        """--log/--plot: the file itself for one model, a folder of NAME.ext for several."""
        if option is None:
            return None
        if self.many or option.is_dir() or str(option).endswith(("/", "\\")):
            return option / (output.name + ext)
        return option


def _up_to_date(output: Path, inputs: list[Path]) -> bool:
    """Make's rule: the output exists and is newer than every input."""
    try:
        out_time = output.stat().st_mtime
    except OSError:
        return False
    for p in inputs:
        try:
            if p.stat().st_mtime > out_time:
                return False
        except OSError:
            return False
    return True


def inspect_model(model: Path, options: ConvertOptions, as_json: bool) -> int:
    from .console import print_inspection
    from .pipeline import inspect

    info = inspect(model, options)
    if as_json:
        print(json.dumps(info))
    else:
        print_inspection(info)
    return 0


def verify_model(model: Path, options: ConvertOptions, as_json: bool) -> int:
    """Re-measure per-layer variance of a written model with its format's own runtime."""
    from .console import print_verification
    from .pipeline import verify

    result = verify(model, options)
    rows = result["layers"]
    settings = options.settings
    if as_json:
        print(json.dumps(finite_json(result)))
    else:
        print_verification(Path(result["model"]), rows, settings.tol, settings.target_var)
    bad = [r for r in rows if not r["ok"]]
    if bad:
        raise OutputError(f"{len(bad)} of {len(rows)} layer(s) out of tolerance, first {bad[0]['name']} "
                          f"(variance {bad[0]['var']:.4g}, target {settings.target_var} +- {settings.tol})",
                          path=result["model"])
    return 0
