"""The data batch: read from .npy / .npz / a folder of images, or made up from the input shape.

Every path returns one numpy array per model input, in the model's input order, of the type
the input declares (:class:`~lsuv_convert.formats.model_graph.InputSpec` ``dtype``): float inputs get float32
(``uint8`` arrays are images, divided by 255; other integer arrays are cast), integer and bool
inputs (token ids, masks) keep integer / bool values (cast to the declared width). A float
array for an integer input is an error naming the input. Synthetic integer inputs draw ids
below the declared bound ``high`` (the embedding size), synthetic bool masks are all True.
Nothing here unpickles: arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..formats.model_graph import InputSpec

log = logging.getLogger("lsuv_convert")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_BATCH = 16


@dataclass
class ImageOptions:
    """How a folder of images becomes a batch: resize, scale to [0, 1], then (x - mean) / std."""

    size: tuple[int, int] | None = None  # (height, width); None: the model's declared size
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    limit: int = 64  # images read at most (sorted by name)


@dataclass
class Batch:
    arrays: list[np.ndarray]
    description: str  # for the log: where the batch came from
    warnings: list[str]
    names: list[str] | None = None  # the model input each array feeds

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the arrays as fed (dtype, shape and bytes of each, in input order); computed once."""
        digest = hashlib.sha256()
        for a in self.arrays:
            digest.update(f"{a.dtype.str}{tuple(a.shape)}".encode())
            digest.update(np.ascontiguousarray(a).tobytes())
        return digest.hexdigest()

    def stats(self) -> list[dict]:
        """Per input: name, shape, dtype, mean and variance (for the log)."""
        out = []
        for i, a in enumerate(self.arrays):
            values = a.astype(np.float64, copy=False)
            out.append({"name": self.names[i] if self.names and i < len(self.names) else f"input{i}",
                        "shape": list(a.shape), "dtype": str(a.dtype),
                        "mean": float(values.mean()) if a.size else None, "var": float(values.var()) if a.size else None})
        return out

    def to_log(self) -> dict:
        return {"sha256": self.sha256, "inputs": self.stats()}


def load_batch(path: Path | None, specs: list[InputSpec], *, seed: int = 0, image: ImageOptions | None = None,
               input_shapes: list[tuple[int, ...]] | None = None) -> Batch:
    """The batch for a model with inputs ``specs``: from ``path`` if given, else synthetic."""
    names = [s.name for s in specs]
    if path is None:
        arrays, desc = synthetic(specs, seed=seed, shapes=input_shapes), None
        shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
        kind = "seeded N(0,1)" if all(a.dtype.kind == "f" for a in arrays) else "seeded synthetic (N(0,1) floats, valid ids)"
        desc = f"{kind} batch of shape {shapes} (seed {seed}); pass --data for real data"
        return Batch(arrays, desc, [], names)
    path = Path(path)
    if not path.exists():
        raise DataError("data file not found", path=path)
    if path.is_dir():
        arrays = [_read_images(path, specs, image or ImageOptions())]
        desc = f"{arrays[0].shape[0]} images from {path}"
    else:
        arrays = _read_array_file(path, specs)
        desc = f"{path} {', '.join(str(tuple(a.shape)) for a in arrays)}"
    arrays = [as_input_type(a, spec_for(specs, i), path) for i, a in enumerate(arrays)]
    normalized = image is not None and (image.mean is not None or image.std is not None)
    if normalized and not path.is_dir():
        arrays = [_normalize(a, image, path) if a.dtype.kind == "f" else a for a in arrays]
    warnings = _check_values(arrays, path)
    if not normalized:
        warnings += unnormalized_warnings(arrays, names, path)
    return Batch(arrays, desc, warnings, names)


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
    """Seeded N(0,1) arrays of the declared input shapes (a free batch dim becomes 16)."""
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


def _check_array_header(path: Path) -> None:
    """A .npy header declaring more bytes than the file holds (or than memory) is refused
    before numpy allocates the array it declares."""
    with open(path, "rb") as fh:
        _check_declared_array(fh, path.stat().st_size, path, "")


def _check_npz_members(path: Path) -> None:
    """Each member of a .npz is unpacked in memory: its header, like a .npy's, must match its
    size, and all of them together must fit."""
    from ..budget import check_allocation

    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            for info in infos:
                with zf.open(info) as fh:
                    _check_declared_array(fh, info.file_size, path, f"member {info.filename}: ")
    except (zipfile.BadZipFile, OSError):
        return  # np.load reports it
    check_allocation(sum(info.file_size for info in infos), "the arrays of this .npz", path=path)


def _check_declared_array(fh, size: int, path: Path, label: str) -> None:
    from ..budget import check_allocation

    try:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh, max_header_size=10000)
        data_start = fh.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        return  # np.load reports a malformed header itself
    if dtype.hasobject:
        return
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = size - data_start
    if needed > held:
        raise DataError(f"{label}its header declares an array of shape {tuple(shape)} ({needed} bytes) but the file "
                        f"holds {held} bytes (truncated or forged file)", path=path)
    check_allocation(needed, f"{label}the array of shape {tuple(shape)}", path=path)


def _read_array_file(path: Path, specs: list[InputSpec]) -> list[np.ndarray]:
    suffix = path.suffix.lower()
    magic = {".npy": b"\x93NUMPY", ".npz": b"PK"}.get(suffix)
    if magic is not None:
        with open(path, "rb") as fh:
            if fh.read(len(magic)) != magic:
                raise DataError(f"not a {suffix} file (numpy's header is missing)", path=path)
    try:
        if suffix == ".npz":
            _check_npz_members(path)
            with np.load(path, allow_pickle=False) as archive:
                named = {k: archive[k] for k in archive.files}
            return _match_named(named, specs, path)
        if suffix == ".npy":
            _check_array_header(path)
            return [np.load(path, allow_pickle=False)]
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError("holds pickled Python objects, which are never loaded; save a numeric array", path=path) from None
        raise DataError(f"not a valid numpy file ({exc})", path=path) from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read numpy data ({exc.__class__.__name__}: {exc})", path=path) from None
    raise DataError("unsupported data file: use .npy, .npz (one array per input) or a folder of images", path=path)


def _match_named(named: dict[str, np.ndarray], specs: list[InputSpec], path: Path) -> list[np.ndarray]:
    if not named:
        raise DataError("the .npz archive holds no arrays", path=path)
    if len(specs) == 1 and len(named) == 1:
        return list(named.values())
    missing = [s.name for s in specs if s.name not in named]
    if missing:
        raise DataError(
            f"no array for model input(s) {', '.join(missing)}; the archive holds {', '.join(sorted(named))}",
            path=path,
        )
    return [named[s.name] for s in specs]


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


def _normalize(a: np.ndarray, image: ImageOptions, path: Path) -> np.ndarray:
    channels = a.shape[1] if a.ndim >= 2 else 1
    shape = (1, channels) + (1,) * (a.ndim - 2)
    mean = _per_channel(image.mean, channels, "--mean", path, 0.0)
    std = _per_channel(image.std, channels, "--std", path, 1.0)
    return ((a - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)


def _per_channel(values, channels: int, option: str, path: Path, default: float) -> np.ndarray:
    if values is None:
        return np.full(channels, default, dtype=np.float32)
    if not all(np.isfinite(v) for v in values) or (option == "--std" and not all(v > 0 for v in values)):
        need = "finite numbers > 0" if option == "--std" else "finite numbers"
        raise DataError(f"{option} must be {need}, got {', '.join(str(v) for v in values)}", path=path)
    if len(values) == 1:
        return np.full(channels, values[0], dtype=np.float32)
    if len(values) != channels:
        raise DataError(f"{option} has {len(values)} values but the data has {channels} channels", path=path)
    return np.asarray(values, dtype=np.float32)


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


def _read_images(folder: Path, specs: list[InputSpec], options: ImageOptions) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if len(specs) != 1:
        raise DataError("a folder of images can feed only single-input models", path=folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[: options.limit]
    if not files:
        raise DataError("the folder holds no images (" + ", ".join(IMAGE_EXTENSIONS) + ")", path=folder)
    shape = specs[0].shape
    channels = shape[1] if shape is not None and len(shape) == 4 and shape[1] is not None else 3
    size = options.size
    if size is None:
        if shape is None or len(shape) != 4 or shape[2] is None or shape[3] is None:
            raise DataError("the model declares no image size: pass --image-size H,W", path=folder)
        size = (shape[2], shape[3])
    if channels not in (1, 3):
        raise DataError(f"images can feed 1- or 3-channel inputs, the model has {channels}", path=folder)
    batch = []
    for f in files:
        try:
            with _opened_image(f) as img:
                img = img.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image: {exc}", path=f) from None
        batch.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
    a = np.stack(batch)
    return _normalize(a, options, folder)


MAX_IMAGE_PIXELS = 64_000_000  # far above any input size LSUV needs; a bomb is far above it


def _opened_image(path: Path):
    """``Image.open`` that refuses a decompression bomb (an image declaring a huge size) by name,
    before its pixels are decoded."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # one error line, not a warning too
        try:
            img = Image.open(path)
        except Image.DecompressionBombWarning as exc:
            raise DataError(f"image refused (a decompression bomb?): {exc}", path=path) from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise DataError(f"image of {width}x{height} pixels is larger than the {MAX_IMAGE_PIXELS} pixels "
                        "lsuv-convert decodes (a decompression bomb?); resize it first", path=path)
    return img
