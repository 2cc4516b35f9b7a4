"""One model through the tool: load -> batch -> prepare -> LSUV -> save, with the variance log.

This is the only place that strings the stages together; the CLI calls it per model and the
formats and the engine know nothing of each other.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..atomic import write_bytes_atomic
from ..batch.load import DataOptions, load_batch
from ..errors import DataError, DeviceError, OutputError, UnconvergedError, UsageError, first_few, shown
from ..formats import find_format
from ..formats.contract import LoadRequest
from ..lsuv.account import IncompleteError, check_strict, counts, rename_layer
from ..lsuv.settings import DEFAULTS, LsuvSettings
from ..paths import PathPlan
from ..timings import recording, stage


@dataclass
class ConvertOptions:
    """Everything about a run that isn't the model path itself."""

    data: DataOptions | Path | str | None = None  # --data and the options that prepare it (a path: just that file)
    request: LoadRequest = field(default_factory=LoadRequest)  # --weights, --arch, --trust-code
    settings: LsuvSettings = field(default_factory=lambda: replace(DEFAULTS, seed=0))
    device: str = "auto"
    input_shapes: list[tuple[int, ...]] | None = None
    allow_unconverged: bool = False
    in_place: bool = False
    strict: bool = False  # unreached / skipped conv, linear or attention weights fail the run (exit 3)

    def __post_init__(self):
        if not isinstance(self.data, DataOptions):
            self.data = DataOptions(sources=(self.data,) if self.data is not None else ())

    @property
    def seed(self) -> int:
        return self.settings.seed if self.settings.seed is not None else 0

    @property
    def weights(self) -> Path | None:
        return self.request.weights


@dataclass
class Result:
    """What one conversion produced: the log (as written) and the warnings worth showing."""

    log: dict
    warnings: list[str]
    read_files: list[Path] = field(default_factory=list)  # every file the conversion read (for the record)

    @property
    def unconverged(self) -> list[dict]:
        """Layers LSUV ran on but could not scale (unreached layers are warned about instead)."""
        return [layer for layer in self.log["layers"] if not layer["converged"] and layer.get("reached", True)]


def convert(model: Path | str, output: Path | str | None = None, *, options: ConvertOptions | None = None,
            log_path: Path | str | None = None, on_layer: Callable | None = None,
            on_targets: Callable[[int], None] | None = None, fmt=None, paths: PathPlan | None = None) -> Result:
    """Initialize ``model`` and write it (same format) to ``output`` (default ``NAME.lsuv.EXT``).

    Raises an :class:`LsuvError` for every expected failure; nothing is written then. A run whose
    layers don't all converge raises :class:`UnconvergedError` unless ``allow_unconverged``.
    ``fmt`` and ``paths`` are what the runner already found: the model's format and the checked
    plan of every path of the run (files the format reads once loaded are checked against it);
    without them, they are found and checked here.
    """
    from ..lsuv.streaming import StreamingError

    seconds: dict[str, float] = {}
    with recording(seconds):
        options = options or ConvertOptions()
        try:
            return _convert(Path(model), output, options, log_path, on_layer, on_targets, seconds, fmt, paths)
        except StreamingError as exc:  # nothing was written: run it again, loaded whole
            options = replace(options, request=replace(options.request, stream=False))
            seconds.clear()
            return _convert(Path(model), output, options, log_path, on_layer, on_targets, seconds, fmt, paths,
                            notes=[f"loaded whole, not streamed: {exc.args[0]}"])


def _convert(model: Path, output, options: ConvertOptions, log_path, on_layer, on_targets, seconds: dict[str, float],
             fmt, paths: PathPlan | None, notes: list[str] = ()) -> Result:
    with stage("imports"):  # torch and the engine (a format's own imports are timed in its load)
        from ..lsuv.api import lsuv_init, resolve_device

    settings = replace(options.settings, seed=options.seed)
    fmt = fmt if fmt is not None else find_format(model)
    output = Path(output) if output is not None else fmt.default_output(model)
    if paths is None:
        paths = _checked_paths(model, output, options, fmt, log_path)
    try:
        device = resolve_device(options.device)
    except ValueError as exc:
        raise DeviceError(str(exc)) from None

    with stage("load"):
        loaded = fmt.load(model, options.request)
    data = _data_for(loaded, options)
    paths.check_reads([*fmt.read_files(loaded), *data.read_paths(missing_ok=True)],
                      f"a file {shown(model)} reads:")  # before any write
    with stage("batch"):
        batch, inputs = _batch_for(loaded, data, options)
    with stage("prepare"):
        graph = fmt.prepare(loaded, inputs)
    graph.notes.extend(notes)
    if on_targets is not None:
        on_targets(len(graph.targets))

    source_name = _source_names(graph)

    def layer_done(report):
        if on_layer is not None:
            on_layer(source_name(report.name), report)

    # A streamed model (fmt.stream_of) is written during the LSUV pass, into a temporary that
    # save() puts in place, so the provenance its headers carry is settled before the pass.
    made_by = provenance(options, batch)
    stream = fmt.stream_of(graph)
    try:
        report = lsuv_init(
            graph.module, tuple(graph.run_inputs), settings, device=device,
            targets=[t.module_path for t in graph.targets], walker=graph.engine_path, on_layer=layer_done,
            source=stream.source if stream is not None else None,
            sink=stream.open(output, made_by) if stream is not None else None,
        )
        seconds.update(report.seconds)

        log = {
            "model": str(model),
            "output": str(output),
            "format": fmt.name,
            "device": report.device,
            "seed": options.seed,
            "settings": settings.to_log(),
            "data": batch.description,
            "walker": f"{graph.engine_path}" + (f" ({report.walker})" if report.walker != graph.engine_path else ""),
            "notes": list(graph.notes),
            "seconds": seconds,
            "layers": _layer_entries(graph, report),
        }
        account = fmt.account(graph, report.layers)
        log.update(batch=batch.to_log(), counts=counts(account), account=[e.to_dict() for e in account])
        log["provenance"] = made_by
        if options.weights is not None:
            log["weights"] = str(options.weights)
        result = Result(log, list(batch.warnings) + _unreached_warning(model, log["layers"]),
                        read_files=fmt.read_files(loaded) + batch.files)
        if result.unconverged and not options.allow_unconverged:
            names = first_few((f"{layer['name']} ({layer.get('reason')})" for layer in result.unconverged), 3)
            if log_path is not None:
                write_log(log, log_path)
            raise UnconvergedError(
                f"{len(result.unconverged)} layer(s) did not converge: {names}; nothing written "
                "(--allow-unconverged writes it anyway)", path=model,
            )
        if options.strict:
            try:
                check_strict(account, path=model)
            except IncompleteError:
                if log_path is not None:
                    write_log(log, log_path)
                raise
        with stage("save"):
            fmt.save(graph, output, log["provenance"])
    finally:
        if stream is not None:
            stream.discard()  # nothing once save() put the output in place; else its temporary goes
    log["notes"] = list(graph.notes)  # save may add notes (what it had to untie, ...)
    if log_path is not None:
        write_log(log, log_path)
    return result


def inspect(model: Path | str, options: ConvertOptions | None = None) -> dict:
    """What ``convert`` would work on: the declared inputs and the target layers with their weight
    shapes (built for the batch when one can be had, else as the file declares them)."""
    options = options or ConvertOptions()
    model = Path(model)
    fmt = find_format(model)
    loaded = fmt.load(model, options.request)
    targets, module, inputs = loaded.targets, None, loaded.inputs
    try:
        _, batch_inputs = _batch_for(loaded, _data_for(loaded, options), options)
    except DataError:
        batch_inputs = None  # no declared shape and no data: list the targets the file declares
    if batch_inputs is not None:
        graph = fmt.prepare(loaded, batch_inputs, check=False)
        targets, module, inputs = graph.targets, graph.module, graph.inputs
    info = {
        "model": str(model), "format": fmt.name,
        "inputs": [{"name": s.name, "shape": list(s.shape) if s.shape is not None else None, "dtype": s.dtype,
                    **({"optional": True} if s.optional else {})} for s in inputs],
        "targets": [{"index": i, "name": t.name, "op": t.op,
                     "weight_shape": _weight_shape(module.get_submodule(t.module_path)) if module is not None else None}
                    for i, t in enumerate(targets)],
        "notes": list(loaded.notes),
    }
    if loaded.provenance:
        info["provenance"] = loaded.provenance
    return info


def _weight_shape(layer) -> list[int]:
    """A target's weight shape (an attention target: its packed or q projection weight)."""
    for attr in ("weight", "in_proj_weight", "q_proj_weight"):
        weight = getattr(layer, attr, None)
        if weight is not None:
            return list(weight.shape)
    return []


def provenance(options: ConvertOptions, batch) -> dict:
    """What made an output: formats with a metadata slot that doesn't touch the computation store it."""
    from ..version import __version__

    return {"tool": "lsuv-convert", "version": __version__, "seed": options.seed,
            "settings": options.settings.to_log(), "batch_sha256": batch.sha256}


def verify(model: Path | str, options: ConvertOptions | None = None) -> dict:
    """Each target layer's output variance in a written model, re-measured by the format's own
    runtime (onnxruntime, OpenCV, torch.jit) on the batch; ``ok`` per layer against the settings."""
    options = options or ConvertOptions()
    settings = options.settings
    fmt = find_format(model, written=True)
    model, weights = fmt.written_pair(Path(model), options.weights)
    request = replace(options.request, weights=weights)
    loaded = fmt.load(model, request)
    _, inputs = _batch_for(loaded, _data_for(loaded, options), options)
    stats = fmt.measure(model, weights, inputs, [t.name for t in loaded.targets], request=request)
    rows = []
    for name, (var, mean) in stats.items():
        ok = abs(var - settings.target_var) < settings.tol
        rows.append({"name": name, "var": var, "mean": mean, "ok": bool(ok)})
    return {"model": str(model), "weights": str(weights) if weights else None, "layers": rows,
            "ok": all(r["ok"] for r in rows)}


def _data_for(loaded, options: ConvertOptions) -> DataOptions:
    """``--data``, else the model's sidecar batch, else none (a synthetic batch)."""
    return options.data if options.data.given else options.data.with_sources(sidecar_batch(loaded.source))


def _batch_for(loaded, data: DataOptions, options: ConvertOptions):
    """The batch ``data`` names (synthetic when it names none) as tensors, one per fed input; a
    model folder's own tokenizer / processors prepare text, audio and images."""
    import torch

    folder = loaded.source if Path(loaded.source).is_dir() else None
    batch = load_batch(data, loaded.inputs, seed=options.seed, input_shapes=options.input_shapes, model_folder=folder)
    return batch, [torch.from_numpy(a) for a in batch.arrays]


def _layer_entries(graph, report) -> list[dict]:
    """Log entries named as in the source file, in execution order; unreached targets last.

    A slice of a packed weight (q / k / v) is named ``LAYER[q]``; it belongs to ``LAYER``."""
    by_path = graph.target_by_path()
    source_name = _source_names(graph)
    entries = []
    for layer in report.layers:
        target = by_path.get(_target_path(layer.name, by_path))
        entry = layer.to_dict()
        entry.update(name=source_name(layer.name), op=target.op if target else layer.op)
        if layer.uses > 1:
            entry["note"] = f"used {layer.uses} times; scaled once, at its first use"
        else:
            entry.pop("uses")
        entries.append(entry)
    reached = {_target_path(layer.name, by_path) for layer in report.layers}
    for target in graph.targets:
        if target.module_path not in reached:
            entries.append({"index": len(entries), "name": target.name, "op": target.op, "converged": False,
                            "reached": False, "iterations": 0,
                            "reason": "not reached by the batch: keeps its pre-init, unscaled"})
    return entries


def _target_path(layer_name: str, by_path: dict) -> str:
    """The target a report entry belongs to: ``a[q]`` and ``a.out_proj`` (attention ``a``) -> ``a``."""
    path = layer_name.partition("[")[0]
    while path not in by_path and "." in path:
        path = path.rpartition(".")[0]
    return path if path in by_path else layer_name.partition("[")[0]


def _source_names(graph) -> Callable[[str], str]:
    """Engine layer name (module path, maybe with a ``[q]`` slice) -> the layer's name in the file."""
    by_path = graph.target_by_path()
    return lambda name: rename_layer(name, lambda p: by_path[p].name if p in by_path else p)


def _unreached_warning(model: Path, entries: list[dict]) -> list[str]:
    names = [e["name"] for e in entries if e.get("reached") is False]
    if not names:
        return []
    return [f"{model}: {len(names)} target layer(s) never ran on this batch and keep their pre-init: "
            f"{first_few(names)}"]


def sidecar_batch(model: Path) -> Path | None:
    """``NAME.npy`` / ``NAME.npz`` beside ``NAME.EXT``: the model's own sample batch, if shipped."""
    for ext in (".npz", ".npy"):
        candidate = model.with_suffix(ext)
        if os.path.isfile(candidate):
            return candidate
    return None


def _checked_paths(model: Path, output: Path, options: ConvertOptions, fmt, log_path) -> PathPlan:
    """The API's own guard (the CLI checks every path of a run before it starts, see :mod:`..paths`).
    A folder output (Hugging Face) replaces an existing folder only when it is empty, is the
    model itself (``in_place``) or was written by this tool."""
    from .records import written_by_us

    paths = PathPlan()
    paths.read(model, f"the input model {shown(model)}")
    paths.read(options.weights, f"the --weights file {shown(options.weights)}")
    for path in options.data.read_paths(missing_ok=True):
        paths.read(path, f"the data {shown(path)}")
    paths.write(output, f"the output of {shown(model)}", may_overwrite=(model, options.weights) if options.in_place else (),
                folder=fmt.claims_directory(model), ours=written_by_us(output))
    paths.write(log_path, f"the log of {shown(model)}")
    try:
        paths.check()
    except UsageError as exc:  # the API's guard: an OutputError, as before (the CLI's plan: a usage error)
        raise OutputError(str(exc)) from None
    return paths


def write_log(log: dict, path: Path | str) -> None:
    """The log as JSON; non-finite numbers become null (JSON has no NaN)."""
    text = json.dumps(finite_json(log), indent=1, allow_nan=False, default=str)
    write_bytes_atomic(Path(path), (text + "\n").encode())


def finite_json(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
