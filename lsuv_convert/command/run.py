"""Running the CLI's commands over many models: outputs, up-to-date checks, progress, summary.

Knows nothing of formats beyond the registry, and nothing of LSUV beyond the pipeline.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .discovery import ModelJob, expand, mirrored
from ..errors import LsuvError, OutputError, UnconvergedError, UsageError
from ..paths import PathPlan, same_file, identity
from .convert import ConvertOptions, convert, finite_json, sidecar_batch
from .records import digests, forget, is_up_to_date, write_record
from .shards import Shard, select, summary_line


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

    def to_json(self, **extra) -> str:
        return json.dumps({
            "model": str(self.model), "output": str(self.output) if self.output else None, "status": self.status,
            "error": self.error, "layers": self.layers, "unconverged": self.unconverged,
            "seconds": round(self.seconds, 3), **extra,
        })


@dataclass
class Planned:
    """One model of the run with every path it will write, decided before any work."""

    job: ModelJob
    fmt: object | None = None
    output: Path | None = None
    log: Path | None = None
    plot: Path | None = None
    error: LsuvError | None = None  # found while planning (missing file, ...): reported in its turn


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

    def run(self, args: list[str], shard: Shard | None = None) -> int:
        """Convert the models ``args`` name; with ``shard``, only that part of them (a job array's task)."""
        jobs = expand(args)
        _refuse_data_as_models(jobs)
        self.many = len(jobs) > 1
        if self.output is not None and len(jobs) > 1:
            raise UsageError("-o/--output names one file but several models were given; use --output-dir")
        plans = [self._plan(job) for job in jobs]
        self._check_paths(plans)  # before any work, over the whole run: a collision stops every shard
        plans = select(plans, shard, key=lambda plan: plan.job.shard_key)
        if shard is not None:
            origin = f" ({shard.origin})" if shard.origin else ""
            self.console.note(f"shard {shard}{origin}: {len(plans)} of {len(jobs)} model(s)")
        tag = {"shard": shard.as_json()} if shard is not None else {}
        outcomes: list[Outcome] = []
        closed = False
        with self.console.models(len(plans)) as progress:
            for plan in plans:
                outcome = self._one(plan, progress)
                outcomes.append(outcome)
                if self.json_lines and not _emit(outcome.to_json(**tag)):
                    closed = True  # the reader went away: stop after this (complete) model
                    break
                progress.advance()
                if outcome.status in ("failed", "unconverged") and self.fail_fast:
                    break
        if closed:
            return CLOSED_STDOUT
        if len(jobs) > 1:
            self.console.summary(outcomes)
        codes = [o.exit_code for o in outcomes if o.exit_code]
        # one kind of failure keeps its own code (2: usage, 3: unconverged, ...); a mix is 1
        code = 0 if not codes else (codes[0] if len(set(codes)) == 1 else 1)
        if self.json_lines and shard is not None and not _emit(json.dumps(
                summary_line(shard, outcomes, planned=len(plans), run_models=len(jobs), exit_code=code))):
            return CLOSED_STDOUT
        return code

    # ---- planning ---------------------------------------------------------------------------------
    def _plan(self, job: ModelJob) -> Planned:
        from ..formats import find_format

        try:
            fmt = find_format(job.path)
        except LsuvError as exc:
            return Planned(job, error=exc)
        output = self._output_for(job, fmt)
        return Planned(job, fmt, output, self._side_path(self.log_path, job, output, ".json"),
                       self._side_path(self.plot_path, job, output, ".png"))

    def _check_paths(self, plans: list[Planned]) -> None:
        """Every path written vs every path read and every other path written (see :mod:`.paths`)."""
        paths = PathPlan()
        weights = self.options.weights
        paths.read(weights, f"the --weights file {weights}")
        data = self.options.data
        for path in data.read_paths(missing_ok=True):
            paths.read(path, f"the --data {'folder' if path.is_dir() else 'file'} {path}")
        for plan in plans:
            model = plan.job.path
            paths.read(model, f"the input model {model}")
            if not data.given:
                paths.read(sidecar_batch(model), f"the sample batch of {model}")
        for plan in plans:
            if plan.output is None:
                continue
            model = plan.job.path
            own = (model, weights) if self.options.in_place else ()
            folder = plan.fmt.claims_directory(model)
            for k, path in enumerate(plan.fmt.output_files(plan.output)):
                if k == 0:
                    paths.write(path, f"the output of {model}", may_overwrite=own, folder=folder)
                else:
                    paths.write(path, f"a side file of the output of {model}")
            paths.write(plan.log, f"the --log file of {model}")
            paths.write(plan.plot, f"the --plot file of {model}")
            if self.options.in_place:
                named = [identity(model)] + ([identity(weights)] if weights is not None else [])
                if not any(same_file(identity(plan.output), n) for n in named) and plan.output.exists():
                    raise UsageError(f"--in-place would overwrite {plan.output}, which was not named; nothing was "
                                     "done (pass it with --weights to start from it, or choose -o)")
        paths.check()

    def _output_for(self, job: ModelJob, fmt) -> Path:
        if self.output is not None:
            return self.output
        if self.options.in_place:
            return fmt.in_place_output(job.path, self.options.weights)
        default = fmt.default_output(job.path)
        if self.output_dir is not None:
            return mirrored(job, self.output_dir, default.name)
        return default

    def _side_path(self, option: Path | None, job: ModelJob, output: Path, ext: str) -> Path | None:
        """--log/--plot: the file itself for one model, a folder of NAME.ext when several are given
        (two models whose outputs are named alike collide there: a usage error before any work)."""
        if option is None:
            return None
        if self.many or option.is_dir() or str(option).endswith(("/", "\\")):
            return option / (output.name + ext)
        return option

    def _inputs_of(self, model: Path) -> list[Path]:
        data = self.options.data
        paths = [model, *(data.read_paths() if data.given else [sidecar_batch(model)]), self.options.weights]
        return [p for p in paths if p is not None]

    def _fingerprint(self) -> dict:
        """Everything besides the input files that changes what a conversion writes."""
        from dataclasses import asdict

        o = self.options
        return json.loads(json.dumps({
            "settings": asdict(o.settings), "device": o.device, "input_shapes": o.input_shapes,
            "allow_unconverged": o.allow_unconverged,
            "arch": o.request.arch, "trust_code": o.request.trust_code,
            "data": o.data.fingerprint(),
            "weights": os.path.realpath(o.weights) if o.weights is not None else None,
        }, default=str))

    # ---- one model ---------------------------------------------------------------------------------
    def _one(self, plan: Planned, progress) -> Outcome:
        from .streams import model_stdout_to_stderr

        job = plan.job
        start = time.perf_counter()
        output = plan.output
        try:
            if plan.error is not None:
                raise plan.error
            extras = {"log": plan.log, "plot": plan.plot}
            inputs = self._inputs_of(job.path)
            if not (self.force or self.options.in_place) and is_up_to_date(
                    output, settings=self._fingerprint(), inputs=inputs, extras=extras):
                self.console.skipped(job.path, output)
                return Outcome(job.path, output, "skipped")
            input_digests = digests(inputs)  # before the work: a file replaced meanwhile won't match later
            forget(output)
            progress.start_model(job.path)
            with model_stdout_to_stderr():
                result = convert(job.path, output, options=self.options, log_path=plan.log,
                                 on_layer=progress.layer_done, on_targets=progress.set_layers)
            for warning in result.warnings:
                self.console.warn(warning)
            if plan.plot is not None:
                from .plot import write_plot

                write_plot(result.log, plan.plot)
            input_digests.update(digests(p for p in result.read_files if os.path.realpath(p) not in input_digests))
            write_record(output, settings=self._fingerprint(), inputs=input_digests,
                         written=plan.fmt.output_files(output), extras=extras)
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


def _refuse_data_as_models(jobs: list[ModelJob]) -> None:
    """``--data parts/*.npy`` unquoted: the shell hands the second part on as a model. Refused before
    any work, so no model is initialized on part of the sample."""
    from ..batch.sample import looks_like_data

    stray = [job.path for job in jobs if looks_like_data(job.path)]
    if stray:
        raise UsageError(f"{stray[0]} is data, not a model; nothing was done (a glob given to --data must be quoted, "
                         f"e.g. --data '{stray[0].parent / ('*' + stray[0].suffix)}', or the shell expands it)")


CLOSED_STDOUT = 141  # like a shell's status for a command killed by SIGPIPE


def _emit(line: str) -> bool:
    """Print one --json line; False when the reader closed stdout (``| head -1``)."""
    try:
        print(line, flush=True)
        return True
    except BrokenPipeError:
        _silence_stdout()
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's own flush at exit can't fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def inspect_model(model: Path, options: ConvertOptions, as_json: bool) -> int:
    from .console import print_inspection
    from .convert import inspect

    from .streams import model_stdout_to_stderr

    with model_stdout_to_stderr():
        info = inspect(model, options)
    if as_json:
        print(json.dumps(info))
    else:
        print_inspection(info)
    return 0


def verify_model(model: Path, options: ConvertOptions, as_json: bool) -> int:
    """Re-measure per-layer variance of a written model with its format's own runtime."""
    from .console import print_verification
    from .convert import verify

    from .streams import model_stdout_to_stderr

    with model_stdout_to_stderr():
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
