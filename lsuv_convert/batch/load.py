"""The data batch: a sample read from what ``--data`` names (arrays, text, audio, images; see
:mod:`.sample`), or made up from the declared input shapes.

Every path returns one numpy array per fed model input, in the model's input order (optional
inputs, such as an attention mask, are fed when the data has them), of the type the input declares
(:class:`~lsuv_convert.formats.model_graph.InputSpec` ``dtype``): float inputs get float32
(``uint8`` arrays are images, divided by 255; other integer arrays are cast), integer and bool
inputs (token ids, masks) keep integer / bool values (cast to the declared width). A float
array for an integer input is an error naming the input. Synthetic integer inputs draw ids
below the declared bound ``high`` (the embedding size), synthetic bool masks are all True.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..formats.model_graph import InputSpec, required_count
from .arrays import read_arrays
from .audio import audio_batch
from .images import ImageOptions, image_batch, normalize
from .processors import PREPROCESSOR_CONFIG, Prepared, load_image_processor, preprocessor_kinds
from .sample import KIND_NAMES, DataOptions, SampleFiles, sample_files
from .text import text_batch

__all__ = ["Batch", "DataOptions", "ImageOptions", "load_batch", "synthetic", "as_input_type"]

DEFAULT_BATCH = 16


@dataclass
class Batch:
    arrays: list[np.ndarray]
    description: str  # for the log: where the batch came from
    warnings: list[str]
    names: list[str] | None = None  # the model input each array feeds
    files: list[Path] = field(default_factory=list)  # every data file read (the up-to-date record hashes them)
    processor: dict | None = None  # {"class", "source"} of the tokenizer / feature extractor / image processor

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the arrays as fed (dtype, shape and bytes of each, in input order); computed once,
        without a copy of the sample."""
        digest = hashlib.sha256()
        for a in self.arrays:
            digest.update(f"{a.dtype.str}{tuple(a.shape)}".encode())
            digest.update(memoryview(np.ascontiguousarray(a)).cast("B"))
        return digest.hexdigest()

    def stats(self) -> list[dict]:
        """Per input: name, shape, dtype, mean and variance over the whole sample (for the log); an
        image-like input (N, C, H, W) with at most 4 channels also per channel."""
        out = []
        for i, a in enumerate(self.arrays):
            mean, var = moments(a) if a.size else (None, None)
            entry = {"name": self.names[i] if self.names and i < len(self.names) else f"input{i}",
                     "shape": list(a.shape), "dtype": str(a.dtype),
                     "mean": float(mean) if a.size else None, "var": float(var) if a.size else None}
            if a.dtype.kind == "f" and a.ndim == 4 and a.shape[1] <= 4 and a.size:
                mean, var = moments(a, (0, 2, 3))
                entry["channel_mean"] = [float(m) for m in mean.ravel()]
                entry["channel_var"] = [float(v) for v in var.ravel()]
            out.append(entry)
        return out

    def to_log(self) -> dict:
        log = {"sha256": self.sha256, "samples": int(self.arrays[0].shape[0]) if self.arrays and self.arrays[0].ndim else None,
               "files": len(self.files), "inputs": self.stats()}
        if self.processor is not None:
            log["processor"] = self.processor
        return log


MOMENTS_CHUNK = 1 << 22  # float64 values converted at a time: a sample's statistics never copy it whole


def moments(a: np.ndarray, axes: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) of ``a`` over ``axes`` (None: every element), in float64, a slab of rows at a
    time (Chan et al.'s pairwise update), so a large sample is never copied whole as float64."""
    if a.ndim == 0:
        return np.float64(a), np.float64(0.0)
    step = max(1, MOMENTS_CHUNK // max(1, int(np.prod(a.shape[1:], dtype=np.int64))))
    count, mean, m2 = 0, np.float64(0.0), np.float64(0.0)
    for start in range(0, a.shape[0], step):
        chunk = a[start:start + step].astype(np.float64)
        k = chunk.size if axes is None else chunk.size // int(np.prod([chunk.shape[d] for d in range(a.ndim) if d not in axes]))
        chunk_mean = chunk.mean(axis=axes, keepdims=axes is not None)
        chunk_m2 = ((chunk - chunk_mean) ** 2).sum(axis=axes, keepdims=axes is not None)
        delta, total = chunk_mean - mean, count + k
        mean = mean + delta * (k / total)
        m2 = m2 + chunk_m2 + delta ** 2 * (count * k / total)
        count = total
    return mean, m2 / count


def load_batch(data: DataOptions | Path | str | None, specs: list[InputSpec], *, seed: int = 0,
               image: ImageOptions | None = None, input_shapes: list[tuple[int, ...]] | None = None,
               model_folder: Path | None = None) -> Batch:
    """The batch for a model with inputs ``specs``: the sample ``data`` names (a path, or the run's
    :class:`DataOptions`), else synthetic. ``model_folder``: the model's own folder (Hugging Face),
    whose tokenizer / feature extractor / image processor prepares text, audio and images."""
    if not isinstance(data, DataOptions):
        data = DataOptions(sources=(data,) if data is not None else (), image=image or ImageOptions())
    names = [s.name for s in specs]
    if not data.given:
        _check_applicable(None, data)
        arrays = synthetic(specs, seed=seed, shapes=input_shapes)
        shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
        kind = "seeded N(0,1)" if all(a.dtype.kind == "f" for a in arrays) else "seeded synthetic (N(0,1) floats, valid ids)"
        desc = f"{kind} batch of shape {shapes} (seed {seed}); pass --data for real data"
        return Batch(arrays, desc, [], names[: len(arrays)])
    sample = sample_files(data)
    _check_applicable(sample.kind, data)
    where = data.where()
    prepared, files = _prepared(sample, specs, data, model_folder, where)
    arrays = [as_input_type(a, spec_for(specs, i), where) for i, a in enumerate(prepared.arrays)]
    normalized = prepared.normalized or data.image.mean is not None or data.image.std is not None
    if sample.kind in ("npy", "npz") and normalized:
        arrays = [normalize(a, data.image, where) if a.dtype.kind == "f" else a for a in arrays]
    warnings = _check_values(arrays, where)
    if not normalized:
        warnings += unnormalized_warnings(arrays, prepared.names, where)
    return Batch(arrays, prepared.description, warnings, prepared.names, files=files, processor=prepared.processor)


def _prepared(sample: SampleFiles, specs: list[InputSpec], data: DataOptions, folder: Path | None,
              where) -> tuple[Prepared, list[Path]]:
    """The sample prepared for the model's inputs, and every file read."""
    kind, files = sample.kind, sample.files
    if kind == "text":
        return text_batch(files, specs, tokenizer_path=data.tokenizer, model_folder=folder,
                          max_length=data.max_length, samples=data.samples)
    if kind in ("npy", "npz"):
        arrays, names, desc, used = read_arrays(files, specs, data.samples, where)
        return Prepared(arrays, names, desc), used
    files = files[: data.samples] if data.samples is not None else files
    if kind == "audio":
        prepared = audio_batch(files, specs, model_folder=folder, sample_rate=data.sample_rate,
                               seconds=data.audio_seconds)
        return prepared, files
    processor = None
    if "image" in preprocessor_kinds(folder):
        if data.image.given:
            given = data.image.given
            raise DataError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to models without an image "
                            f"processor; {PREPROCESSOR_CONFIG} says how this model's images are prepared", path=folder)
        processor = load_image_processor(folder)
    return image_batch(files, specs, data.image, processor, folder), files


# The data options that mean something for each kind of data (None: a synthetic batch).
_APPLICABLE = {
    "--max-length": ("text",), "--tokenizer": ("text",),
    "--sample-rate": ("audio",), "--audio-seconds": ("audio",),
    "--image-size": ("image",), "--samples": ("npy", "npz", "text", "audio", "image"),
    "--mean": ("npy", "npz", "image", None), "--std": ("npy", "npz", "image", None),  # a synthetic batch ignores them
}


def _check_applicable(kind: str | None, data: DataOptions) -> None:
    """An option that does nothing for this data is a mistake worth one clear line."""
    given = {"--max-length": data.max_length, "--tokenizer": data.tokenizer, "--sample-rate": data.sample_rate,
             "--audio-seconds": data.audio_seconds, "--image-size": data.image.size, "--samples": data.samples,
             "--mean": data.image.mean, "--std": data.image.std}
    for option, value in given.items():
        if value is not None and kind not in _APPLICABLE[option]:
            if kind is None:
                raise DataError(f"{option} applies to the data given with --data, and there is none")
            kinds = " or ".join(KIND_NAMES[k] for k in _APPLICABLE[option] if k is not None)
            raise DataError(f"{option} applies to {kinds}, "
                            f"but the data is {KIND_NAMES[kind]}", path=data.where())


def spec_for(specs: list[InputSpec], index: int) -> InputSpec | None:
    return specs[index] if index < len(specs) else None


def _declared(spec: InputSpec | None) -> np.dtype:
    try:
        return np.dtype(spec.dtype) if spec is not None and spec.dtype else np.dtype(np.float32)
    except TypeError:
        return np.dtype(np.float32)


def as_input_type(a: np.ndarray, spec: InputSpec | None, path: Path) -> np.ndarray:
    """``a`` as the input ``spec`` takes it (see the module docstring for the rule)."""
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise DataError(f"array of dtype {a.dtype} is not numeric data", path=path)
    want = _declared(spec)
    if want.kind not in "biu":
        return _to_float(a, path)
    name = spec.name if spec is not None else "input"
    if a.dtype.kind == "f":
        raise DataError(
            f"input {name!r} takes {want} values (token ids / masks) but the data for it is {a.dtype}; "
            "save it as an integer array", path=path)
    if want.kind == "b":
        return a.astype(bool, copy=False)
    if a.size and spec is not None and spec.high is not None:
        low, top = int(a.min()), int(a.max())
        if low < 0 or top >= spec.high:
            raise DataError(f"input {name!r} holds values in [{low}, {top}] but takes ids in [0, {spec.high})", path=path)
    return np.ascontiguousarray(a, dtype=want)


def synthetic(specs: list[InputSpec], *, seed: int, shapes: list[tuple[int, ...]] | None = None) -> list[np.ndarray]:
    """Seeded N(0,1) arrays of the declared input shapes (a free batch dim becomes 16), for the
    required inputs (optional ones too when ``shapes`` gives a shape for each)."""
    if shapes is None or len(shapes) != len(specs):
        specs = specs[: required_count(specs)]
    if shapes is not None:
        if len(shapes) != len(specs):
            raise DataError(f"model has {len(specs)} input(s) but {len(shapes)} --input-shape value(s) were given")
        dims = [tuple(s) for s in shapes]
    else:
        dims = []
        for spec in specs:
            if spec.shape is None or any(d is None for d in spec.shape[1:]):
                raise DataError(
                    f"the model declares no complete shape for input {spec.name!r}; "
                    "pass --data BATCH.npy (or --input-shape N,C,H,W)"
                )
            batch = spec.shape[0] if spec.shape and spec.shape[0] is not None else DEFAULT_BATCH
            dims.append((batch, *spec.shape[1:]))
    _check_synthetic_budget(dims)
    rng = np.random.default_rng(seed)
    return [_synthetic_one(rng, d, spec) for d, spec in zip(dims, specs)]


SAFE_HIGH = 2  # ids drawn for an integer input whose valid range is unknown: 0 and 1 are valid almost anywhere


def _synthetic_one(rng, dims: tuple[int, ...], spec: InputSpec) -> np.ndarray:
    want = _declared(spec)
    if want.kind == "b":
        return np.ones(dims, dtype=bool)  # masks: attend everywhere
    if want.kind in "iu":
        if spec.high is None and "mask" in spec.name.lower():
            return np.ones(dims, dtype=want)  # an integer mask: attend everywhere
        high = spec.high if spec.high is not None and spec.high > 0 else SAFE_HIGH
        return rng.integers(0, high, size=dims).astype(want)
    return rng.standard_normal(dims, dtype=np.float32)


def _check_synthetic_budget(dims: list[tuple[int, ...]]) -> None:
    """A declared input of 1M x 1M must be an error, not an allocation of terabytes."""
    from ..budget import check_allocation

    total = sum(int(np.prod(d, dtype=object)) for d in dims) * 4
    check_allocation(total, f"a synthetic batch of shape {', '.join(str(tuple(d)) for d in dims)}",
                     hint="pass --input-shape with a smaller shape, or --data")


def _to_float(a: np.ndarray, path: Path) -> np.ndarray:
    """uint8 arrays are images: scaled to [0, 1]. Other integer/bool arrays are cast unchanged."""
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise DataError(f"array of dtype {a.dtype} is not numeric data", path=path)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype.kind == "f" and a.dtype.itemsize > 4 and a.size:
        finite = a[np.isfinite(a)]
        largest = float(np.abs(finite).max()) if finite.size else 0.0
        if largest > float(np.finfo(np.float32).max):
            raise DataError(f"{a.dtype} values up to {largest:.3g} overflow float32 (largest {np.finfo(np.float32).max:.3g}), "
                            "which the model computes in: rescale the data", path=path)
    return np.ascontiguousarray(a, dtype=np.float32)


def _check_values(arrays: list[np.ndarray], path: Path) -> list[str]:
    warnings = []
    for a in arrays:
        if a.size == 0:
            raise DataError("the data array is empty", path=path)
        if a.dtype.kind != "f":  # ids and masks: any values the model takes, constant masks included
            continue
        if not np.isfinite(a).all():
            raise DataError("the data contains NaN or Inf values", path=path)
        if float(a.max()) == float(a.min()):
            raise DataError("the data is constant (zero variance): LSUV needs a real data batch", path=path)
        if a.ndim >= 1 and a.shape[0] == 1:
            warnings.append(f"{path}: batch size 1: variances are estimated from a single sample")
    return warnings


def unnormalized_warnings(arrays: list[np.ndarray], names: list[str], path: Path) -> list[str]:
    """One warning when an image-like float batch looks unnormalized (0-255 values, or
    per-channel means / variances far from the 0 / 1 that normalized data has)."""
    for i, a in enumerate(arrays):
        if a.dtype.kind != "f" or a.ndim != 4:
            continue
        axis = 1 if a.shape[1] in (1, 3, 4) else (3 if a.shape[3] in (1, 3, 4) else None)
        if axis is None:
            continue
        reduce = tuple(d for d in range(4) if d != axis)
        mean = a.mean(axis=reduce, dtype=np.float64)
        var = a.var(axis=reduce, dtype=np.float64)
        top = float(a.max())
        pixel_range = float(a.min()) >= 0 and 2.0 < top <= 255.0
        off = bool((np.abs(mean) > 1.0).any() or (var < 0.1).any() or (var > 10.0).any())
        if not (pixel_range or off):
            continue
        name = names[i] if i < len(names) else f"input{i}"
        what = "values in 0-255" if pixel_range else "per-channel statistics far from normalized data"
        return [f"{path}: input {name!r} looks unnormalized ({what}: per-channel mean "
                + ", ".join(f"{m:.3g}" for m in mean) + "; variance " + ", ".join(f"{v:.3g}" for v in var)
                + "): LSUV scales to this data as it is; pass --mean/--std to normalize it "
                "(e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 for [0,1] ImageNet-style images)"]
    return []
