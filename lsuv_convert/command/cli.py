"""Command line: ``lsuv-convert MODEL... [options]``, ``lsuv-convert inspect``, ``lsuv-convert verify``.

Thin by design: parse options, expand model arguments, and hand each model to
:func:`lsuv_convert.command.convert.convert`. torch and onnx are imported only once there is work to
do, so ``--help`` and ``--version`` are instant.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import click

from .. import interrupt
from ..version import __version__
from ..errors import LsuvError, shown
from ..lsuv.settings import DEFAULTS, PRE_INIT_MODES, SEED_RANGE
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DefaultCommandGroup(click.Group):
    """A group whose first argument, when it isn't a sub-command, belongs to ``convert``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["convert", *args]
        return super().parse_args(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's usage errors as one line, like every other error (click prints three)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `lsuv-convert`: the help, as click shows it
                click.echo(exc.format_message(), err=True)
                sys.exit(exc.exit_code)
            error_line(f"{exc.format_message()} (see lsuv-convert convert --help)")
            sys.exit(exc.exit_code)
        except click.Abort:
            error_line("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a shape like 16,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise click.BadParameter(f"{text!r} is not a shape like 16,3,224,224")
    return dims


def _floats(text: str | None, option: str = "", *, positive: bool = False) -> tuple[float, ...] | None:
    """Comma-separated finite numbers (``positive``: each > 0, e.g. --std, which divides)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint=option or None) from None
    if not values or not all(math.isfinite(v) for v in values):
        raise click.BadParameter(f"{text!r}: use finite numbers", param_hint=option or None)
    if positive and not all(v > 0 for v in values):
        raise click.BadParameter(f"{text!r}: every value must be > 0 (the data is divided by it)",
                                 param_hint=option or None)
    return values


class _Positive(click.ParamType):
    """A finite number > 0 (click's FloatRange lets inf and nan through)."""

    name = "number > 0"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not (number > 0 and number != float("inf")):
            self.fail(f"{value!r} is not a finite number > 0", param, ctx)
        return number


POSITIVE = _Positive()
SEED = click.IntRange(*SEED_RANGE)


_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _arch(ctx, param, value: str | None) -> str | None:
    """``--arch SOURCE:NAME``: a library name or an importable (absolute) module path."""
    if value is None:
        return None
    source, _, name = value.partition(":")
    if not name.strip() or not _MODULE_RE.match(source.strip()):
        raise click.BadParameter(f"{shown(value)!r} is not torchvision:NAME, timm:NAME or package.module:factory "
                                 "(an absolute module path, importable from the working folder)")
    return value


def _device(ctx, param, value: str) -> str:
    if not _DEVICE_RE.match(value):
        raise click.BadParameter(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")
    return value


@click.group(cls=DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lsuv-convert")
def main():
    """Orthonormal + LSUV initialization of ONNX, Caffe, TorchScript, torch.export, checkpoint and Hugging Face models.

    \b
      lsuv-convert MODEL... [--data BATCH] [options]   initialize models (default command)
      lsuv-convert inspect MODEL                        list target layers and input shapes
      lsuv-convert verify OUTPUT --data BATCH           re-measure a written model's variances

    Run `lsuv-convert convert --help` for every option of the default command.
    """


DATA_HELP = ("Data: .npy / .npz arrays (one array per input), text (.txt, .jsonl), audio clips, images, or a folder "
             "of images or clips; repeat it, or quote a glob ('parts/*.npy'), for a sample of several files.")


def _data_options(command):
    """The options that say how --data becomes a sample (see lsuv_convert.batch.sample.DataOptions)."""
    options = [
        click.option("--samples", type=click.IntRange(min=1), help="Use the first N samples of the data (sorted order). Default: all, if they fit in memory."),
        click.option("--max-length", type=click.IntRange(min=1), help="Tokens per text (truncated and padded to it). Default: the model's positions or 128, whichever is smaller; padded to the longest text."),
        click.option("--tokenizer", type=click.Path(path_type=Path), help="Tokenizer folder or tokenizer.json for text data, for models without their own (ONNX, TorchScript, ...)."),
        click.option("--sample-rate", type=click.IntRange(min=1), help="Hz audio is resampled to, for models without a feature extractor."),
        click.option("--audio-seconds", type=POSITIVE, help="Length audio clips are padded or cropped to. Default: the model's length, else the longest clip (at most 30 s)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("convert")
@click.argument("models", nargs=-1, required=True)
@click.option("--data", multiple=True, metavar="PATH", help=DATA_HELP + " Default: NAME.npy beside the model, else a seeded N(0,1) batch of the declared input shape.")
@_data_options
@click.option("--weights", type=click.Path(path_type=Path), help="Existing weights to start from (Caffe .caffemodel); use with --pre-init keep to only rescale them.")
@click.option("--arch", callback=_arch, help="Architecture of a checkpoint that holds only tensors: torchvision:NAME, timm:NAME, or package.module:factory (runs that code).")
@click.option("--trust-code", is_flag=True, help="Load model files the trust checks refuse (denied operators, pickled objects, custom code): runs that code.")
@click.option("--stage", "stages", multiple=True, help="Net stage that selects layers (Caffe include/exclude { stage }); repeatable.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file (one model only). Default: NAME.lsuv.EXT beside the input.")
@click.option("--output-dir", type=click.Path(path_type=Path), help="Write outputs here, mirroring the input folders.")
@click.option("--in-place", is_flag=True, help="Allow the output over its own input model (Caffe: over --weights); nothing else.")
@click.option("--log", "log_path", type=click.Path(path_type=Path), help="Per-layer variance log (JSON); a folder when several models are given.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="PNG of per-layer variance before/after (needs matplotlib); a folder when several models are given.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the pre-init (and of the synthetic batch).")
@click.option("--tol", type=POSITIVE, default=DEFAULTS.tol, show_default=True, help="Tolerance on |Var - target|.")
@click.option("--max-iter", type=click.IntRange(min=1), default=DEFAULTS.max_iter, show_default=True, help="Most scaling steps per layer.")
@click.option("--target-var", type=POSITIVE, default=DEFAULTS.target_var, show_default=True, help="Output variance each layer is scaled to.")
@click.option("--pre-init", type=click.Choice(PRE_INIT_MODES), default=DEFAULTS.pre_init, show_default=True, help="Weights before LSUV: orthonormal (Saxe), gaussian, or keep the given ones.")
@click.option("--center", is_flag=True, default=DEFAULTS.center, help="Also set biases so each layer's output has zero mean.")
@click.option("--device", default="auto", show_default=True, callback=_device, help="auto (CUDA when available), cpu, cuda or cuda:N.")
@click.option("--input-shape", "input_shapes", multiple=True, help="Shape of the synthetic batch, e.g. 16,3,224,224 (repeat per input).")
@click.option("--image-size", help="H,W (or S) images of a --data folder are resized to.")
@click.option("--mean", help="Per-channel mean subtracted from the data (images after scaling to [0,1], float arrays), e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Per-channel std the data is divided by after --mean, e.g. 0.229,0.224,0.225.")
@click.option("--force", is_flag=True, help="Rebuild outputs even when their up-to-date record matches (same inputs, settings and outputs).")
@click.option("--fail-fast", is_flag=True, help="Stop at the first model that fails.")
@click.option("--shard", metavar="I/N|auto", help="Convert only part I of N (0 <= I < N) of the models, for job arrays; auto: from Slurm's SLURM_ARRAY_TASK_* or a Kubernetes Indexed Job's JOB_COMPLETION_INDEX with LSUV_CONVERT_SHARD_COUNT.")
@click.option("--allow-unconverged", is_flag=True, help="Write the output even if some layer could not be scaled (exit 0).")
@click.option("--strict", is_flag=True, help="Fail (exit 3, nothing written) if any conv / linear / attention weight is unreached by the batch or skipped.")
@click.option("--stream/--no-stream", default=True, show_default=True, help="Stream the model layer by layer (memory of about one layer; Hugging Face folders and safetensors checkpoints) or load it whole.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
@click.option("--json", "json_lines", is_flag=True, help="Print one JSON summary line per model on stdout (with --shard, then one line for the shard).")
@click.option("--table/--no-table", default=None, help="Per-layer table on stderr (default: when stderr is a terminal).")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
def convert_command(models, data, weights, arch, trust_code, stages, output, output_dir, in_place, log_path, plot_path, seed, tol, max_iter,
                    target_var, pre_init, center, device, input_shapes, image_size, mean, std, force, fail_fast,
                    allow_unconverged, strict, stream, shard, quiet, json_lines, table, debug, **sample):
    """Initialize MODELS (files, folders, globs) and write them back in their own format."""
    from ..batch.load import ImageOptions
    from .run import Run

    size = None
    if image_size:
        dims = _shape(image_size)
        if len(dims) not in (1, 2):
            raise click.BadParameter("use H,W or S", param_hint="--image-size")
        size = (dims[0], dims[-1])
    image = ImageOptions(size=size, mean=_floats(mean, "--mean"), std=_floats(std, "--std", positive=True))
    options = _options(data=_data(data, sample, image), weights=weights, arch=arch, trust_code=trust_code, stages=stages, stream=stream,
                       seed=seed, settings=dict(pre_init=pre_init, tol=tol, max_iter=max_iter, target_var=target_var, center=center),
                       device=device, input_shapes=[_shape(s) for s in input_shapes] or None,
                       allow_unconverged=allow_unconverged, in_place=in_place, strict=strict)
    run = Run(options, output=output, output_dir=output_dir, log_path=log_path, plot_path=plot_path, force=force,
              fail_fast=fail_fast, quiet=quiet, json_lines=json_lines, table=table, debug=debug)
    sys.exit(_guarded(lambda: run.run(list(models), shard=_shard(shard)), debug))


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--weights", type=click.Path(path_type=Path), help="Existing weights (Caffe .caffemodel).")
@click.option("--arch", callback=_arch, help="Architecture of a checkpoint that holds only tensors (see convert --help).")
@click.option("--trust-code", is_flag=True, help="Load model files the trust checks refuse (denied operators, pickled objects, custom code).")
@click.option("--stage", "stages", multiple=True, help="Net stage that selects layers (Caffe include/exclude { stage }); repeatable.")
@click.option("--data", multiple=True, metavar="PATH", help="Data to build the net for (as for convert; default: the declared input shape).")
@_data_options
@click.option("--input-shape", "input_shapes", multiple=True, help="Shape to build the net for, e.g. 1,3,224,224 (repeat per input).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
def inspect_command(model, weights, arch, trust_code, stages, data, input_shapes, as_json, debug, **sample):
    """List MODEL's target layers (name, op, weight shape) and its declared inputs; changes nothing."""
    from .run import inspect_model

    options = _options(data=_data(data, sample), weights=weights, arch=arch, trust_code=trust_code, stages=stages,
                       input_shapes=[_shape(s) for s in input_shapes] or None)
    sys.exit(_guarded(lambda: inspect_model(model, options, as_json), debug))


@main.command("verify")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", multiple=True, metavar="PATH", help="The data, as given to convert (default: NAME.npy beside the model, else seeded N(0,1)).")
@_data_options
@click.option("--weights", type=click.Path(path_type=Path), help="Written weights (Caffe: the .caffemodel; MODEL is then the prototxt).")
@click.option("--arch", callback=_arch, help="Architecture of a checkpoint that holds only tensors (see convert --help).")
@click.option("--trust-code", is_flag=True, help="Load model files the trust checks refuse (denied operators, pickled objects, custom code).")
@click.option("--stage", "stages", multiple=True, help="Net stage that selects layers, as given to convert (Caffe include/exclude { stage }); repeatable.")
@click.option("--input-shape", "input_shapes", multiple=True, help="Shape of the synthetic batch, e.g. 16,3,224,224 (repeat per input).")
@click.option("--tol", type=POSITIVE, default=DEFAULTS.tol, show_default=True, help="Tolerance on |Var - target| each layer must meet.")
@click.option("--target-var", type=POSITIVE, default=DEFAULTS.target_var, show_default=True, help="Output variance each layer should have.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the synthetic batch.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
def verify_command(model, data, weights, arch, trust_code, stages, input_shapes, tol, target_var, seed, as_json, debug,
                   **sample):
    """Re-measure each target layer's output variance of a written MODEL with the format's own
    runtime (onnxruntime, OpenCV, torch.jit); exit 1 if any layer is out of tolerance."""
    from .run import verify_model

    options = _options(data=_data(data, sample), weights=weights, arch=arch, trust_code=trust_code, stages=stages, seed=seed,
                       settings=dict(tol=tol, target_var=target_var),
                       input_shapes=[_shape(s) for s in input_shapes] or None)
    sys.exit(_guarded(lambda: verify_model(model, options, as_json), debug))


def _shard(text: str | None):
    """--shard's value (None: every model); a bad value or an unreadable job array is a usage error."""
    if text is None:
        return None
    from .shards import parse_shard

    return parse_shard(text, os.environ)


def _data(sources: tuple[str, ...], sample: dict, image=None):
    """The run's data options: the --data values and the options that prepare them."""
    from ..batch.load import DataOptions, ImageOptions

    return DataOptions(sources=tuple(sources), image=image or ImageOptions(), **sample)


def _options(*, data=None, weights=None, arch=None, trust_code=False, stages=(), stream=True, seed=0, settings=None,
             **rest):
    """The pipeline's ConvertOptions from option values (one place for every command)."""
    from dataclasses import replace

    from ..formats.contract import LoadRequest
    from .convert import ConvertOptions

    return ConvertOptions(data=data, request=LoadRequest(weights=weights, arch=arch, trust_code=trust_code,
                                                         stages=tuple(stages), stream=stream),
                          settings=replace(DEFAULTS, seed=seed, **(settings or {})), **rest)


def _guarded(action, debug: bool) -> int:
    """Run ``action``; expected errors become one stderr line, SIGTERM behaves like Ctrl-C."""
    with interrupt.handled():
        try:
            code = action()
            interrupt.check()
            return code
        except LsuvError as exc:
            if debug:
                raise
            error_line(str(exc))
            return exc.exit_code
        except KeyboardInterrupt:
            error_line("interrupted; no partial output was left")
            return 130
        except Exception as exc:  # a bug: one line unless --debug
            if debug:
                raise
            error_line(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
            return 1


def error_line(message: str) -> None:
    message = shown(" ".join(str(message).split()))  # one line, whatever a name in it holds
    click.echo(f"lsuv-convert: error: {message}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
