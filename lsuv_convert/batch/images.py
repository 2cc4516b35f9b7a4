"""Images as a batch: prepared by the model folder's own image processor (``preprocessor_config.json``:
its size, crop, rescale and ``image_mean`` / ``image_std``), else resized to ``--image-size`` (or the
declared input size), scaled to [0, 1] and normalized with ``--mean`` / ``--std``.

Every image is opened with a guard against decompression bombs; an image that can't be decoded is
an error naming the file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..formats.model_graph import InputSpec
from .processors import Prepared, check_sample_bytes, check_takes_values, feed_outputs


@dataclass
class ImageOptions:
    """How images become a batch without an image processor: resize, scale to [0, 1], then (x - mean) / std."""

    size: tuple[int, int] | None = None  # (height, width); None: the model's declared size
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def given(self) -> list[str]:
        """The options the user set (named as on the command line)."""
        return [name for name, value in (("--image-size", self.size), ("--mean", self.mean), ("--std", self.std))
                if value is not None]


def image_batch(files: list[Path], specs: list[InputSpec], options: ImageOptions, processor=None,
                processor_source: Path | None = None) -> Prepared:
    """``files`` as the model's image input: through ``processor`` when the model folder has one."""
    check_takes_values(specs, "images", files[0])
    if processor is not None:
        return _processed(files, specs, processor, processor_source)
    if len(specs) - sum(s.optional for s in specs) > 1:
        raise DataError("images can feed only single-input models", path=files[0])
    return _resized(files, specs[0], options)


def _processed(files: list[Path], specs: list[InputSpec], processor, source: Path) -> Prepared:
    mode = "L" if _channels(specs[0]) == 1 else "RGB"
    name = type(processor).__name__
    columns: dict[str, list[np.ndarray]] = {}
    for k, f in enumerate(files):
        with _decoded(f, mode) as img:
            try:
                out = processor(images=[img], return_tensors="np")
            except Exception as exc:  # noqa: BLE001 - the processor's own refusal of this image
                raise DataError(f"{name} cannot prepare this image: {exc}", path=f) from None
        for key, value in out.items():
            columns.setdefault(key, []).append(np.asarray(value))
        if k == 0:
            check_sample_bytes(sum(v[0].nbytes for v in columns.values()), len(files), "images", files[0])
    outputs = {key: np.concatenate(parts) for key, parts in columns.items()}
    arrays, names = feed_outputs(outputs, specs, name, files[0])
    return Prepared(arrays, names, f"{len(files)} images prepared by {name} ({source})",
                    processor={"class": name, "source": str(source)}, normalized=True)


def _resized(files: list[Path], spec: InputSpec, options: ImageOptions) -> Prepared:
    from PIL import Image

    shape = spec.shape
    channels = _channels(spec)
    size = options.size
    if size is None:
        if shape is None or len(shape) != 4 or shape[2] is None or shape[3] is None:
            raise DataError("the model declares no image size: pass --image-size H,W", path=files[0].parent)
        size = (shape[2], shape[3])
    if channels not in (1, 3):
        raise DataError(f"images can feed 1- or 3-channel inputs, the model has {channels}", path=files[0].parent)
    check_sample_bytes(channels * size[0] * size[1] * 4, len(files), "images", files[0])
    batch = np.empty((len(files), channels, size[0], size[1]), dtype=np.float32)
    for k, f in enumerate(files):
        with _decoded(f, "L" if channels == 1 else "RGB") as img:
            arr = np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32) / 255.0
        batch[k] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    normalized = options.mean is not None or options.std is not None
    batch = normalize(batch, options, files[0].parent)
    return Prepared([batch], [spec.name], f"{len(files)} images", normalized=normalized)


def _channels(spec: InputSpec) -> int:
    shape = spec.shape
    return shape[1] if shape is not None and len(shape) == 4 and shape[1] is not None else 3


class _decoded:
    """An image file opened and converted to ``mode``; a file that can't be decoded is a DataError."""

    def __init__(self, path: Path, mode: str):
        self.path, self.mode, self.image = path, mode, None

    def __enter__(self):
        from PIL import Image, UnidentifiedImageError

        try:
            with opened_image(self.path) as img:
                self.image = img.convert(self.mode)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image: {exc}", path=self.path) from None
        return self.image

    def __exit__(self, *exc):
        if self.image is not None:
            self.image.close()
        return False


def normalize(a: np.ndarray, image: ImageOptions, path: Path) -> np.ndarray:
    """(a - mean) / std per channel (axis 1); no option given: ``a`` unchanged."""
    if image.mean is None and image.std is None:
        return a
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


MAX_IMAGE_PIXELS = 64_000_000  # far above any input size LSUV needs; a bomb is far above it


def opened_image(path: Path):
    """``Image.open`` that refuses a decompression bomb (an image declaring a huge size) by name,
    before its pixels are decoded."""
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
