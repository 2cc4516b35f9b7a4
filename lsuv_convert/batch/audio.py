"""Audio clips as a batch: decoded by soundfile (libsndfile: WAV, FLAC, MP3, OGG), down-mixed to mono
(the mean of the channels), resampled with SciPy's polyphase filter (``resample_poly``) to the rate
the model takes, and padded (with silence) or cropped to one length.

The rate: the model folder's feature extractor's ``sampling_rate``; for models without one,
``--sample-rate``, or, when the model declares a fixed input length, the clips' own rate (all clips
must share it). The length: ``--audio-seconds``; else the model's declared input length, or its
feature extractor's fixed length (Whisper's 30 s); else the longest clip, at most 30 s. A feature
extractor then turns the clips into the model's input (``input_values``, ``input_features``, and the
``attention_mask`` where it makes one), padding with its own padding value.
"""

from __future__ import annotations

import inspect
from math import gcd
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..formats.model_graph import InputSpec
from .processors import (Prepared, check_sample_bytes, check_takes_values, feed_outputs, load_feature_extractor,
                         preprocessor_kinds)

MAX_DEFAULT_SECONDS = 30.0


def audio_batch(files: list[Path], specs: list[InputSpec], *, model_folder: Path | None, sample_rate: int | None,
                seconds: float | None) -> Prepared:
    sf = _soundfile(files[0])
    check_takes_values(specs, "audio clips", files[0])
    extractor = load_feature_extractor(model_folder) if "audio" in preprocessor_kinds(model_folder) else None
    infos = [_info(sf, f) for f in files]
    declared = _declared_length(specs[0]) if extractor is None else None
    rate = _rate(extractor, model_folder, sample_rate, declared, infos, files)
    length = _length(extractor, seconds, declared, rate, infos, files[0])
    check_sample_bytes(length * 4 * 2, len(files), "audio clips", files[0])
    clips = [_decoded(sf, f, rate, length) for f in files]
    rates = sorted({info[0] for info in infos})
    what = (f"{len(files)} audio clips ({', '.join(str(r) for r in rates)} Hz) at {rate} Hz, "
            f"{length / rate:.3g} s each")
    if extractor is None:
        batch = np.stack([_padded(c, length) for c in clips])
        if specs[0].shape is not None and len(specs[0].shape) == 3:
            batch = batch[:, None, :]  # (N, 1, L): one channel
        return Prepared([batch], [specs[0].name], what)
    name = type(extractor).__name__
    kwargs = {"sampling_rate": rate, "return_tensors": "np"}
    accepted = inspect.signature(extractor.__call__).parameters
    if all(k in accepted for k in ("padding", "max_length", "truncation")):
        kwargs.update(padding="max_length", max_length=length, truncation=True)
    else:
        clips = [_padded(c, length) for c in clips]
    try:
        outputs = dict(extractor(clips, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the extractor's own refusal
        raise DataError(f"{name} cannot prepare the clips: {exc}", path=files[0]) from None
    main = (getattr(extractor, "model_input_names", None) or [None])[0]
    arrays, names = feed_outputs(outputs, specs, name, files[0], main=main)
    return Prepared(arrays, names, f"{what}, prepared by {name} ({model_folder})",
                    processor={"class": name, "source": str(model_folder)}, normalized=True)


def _soundfile(where: Path):
    try:
        import soundfile
    except (ImportError, OSError):
        raise DataError("audio data needs soundfile: pip install 'lsuv-convert[audio]'", path=where) from None
    return soundfile


def _info(sf, path: Path) -> tuple[int, int]:
    """(sample rate, frames) from the file's header."""
    if path.suffix.lower() == ".mp3" and "MP3" not in sf.available_formats():
        raise DataError(f"this libsndfile ({sf.__libsndfile_version__}) reads no MP3 (1.1 and later do, as in "
                        "soundfile's wheels): convert the clips to WAV or FLAC, or update soundfile", path=path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - libsndfile's refusal, an unreadable file
        raise DataError(f"cannot read audio: {_reason(exc)}", path=path) from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise DataError("the audio clip is empty", path=path)
    return int(info.samplerate), int(info.frames)


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _declared_length(spec: InputSpec) -> int | None:
    shape = spec.shape
    if shape is not None and len(shape) in (2, 3) and isinstance(shape[-1], int):
        return shape[-1]
    return None


def _rate(extractor, folder, asked: int | None, declared: int | None, infos, files) -> int:
    if extractor is not None:
        rate = int(extractor.sampling_rate)
        if asked is not None and asked != rate:
            raise DataError(f"--sample-rate {asked}: the model's feature extractor takes {rate} Hz", path=folder)
        return rate
    if asked is not None:
        return asked
    rates = sorted({info[0] for info in infos})
    if declared is not None and len(rates) == 1:
        return rates[0]
    if declared is not None:
        raise DataError(f"the clips are at {', '.join(str(r) for r in rates)} Hz: pass --sample-rate "
                        "(the rate the model takes)", path=files[0].parent)
    raise DataError("audio data for a model without a feature extractor needs --sample-rate "
                    "(the rate the model takes, in Hz)", path=files[0])


def _length(extractor, seconds: float | None, declared: int | None, rate: int, infos, where: Path) -> int:
    if seconds is not None:
        length = max(1, round(seconds * rate))
        if declared is not None and length != declared:
            raise DataError(f"--audio-seconds {seconds}: the model takes exactly {declared} samples "
                            f"({declared / rate:.3g} s at {rate} Hz)", path=where)
        return length
    if declared is not None:
        return declared
    fixed = getattr(extractor, "n_samples", None)
    if isinstance(fixed, int) and fixed > 0:
        return fixed
    longest = max(frames / native for native, frames in infos)
    return max(1, round(min(longest, MAX_DEFAULT_SECONDS) * rate))


def _decoded(sf, path: Path, rate: int, length: int) -> np.ndarray:
    """The clip as mono float32 at ``rate``, at most ``length`` samples."""
    try:
        data, native = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - soundfile / libsndfile raise many kinds for a bad clip; one line names it
        raise DataError(f"cannot decode audio: {_reason(exc)}", path=path) from None
    if data.size == 0:
        raise DataError("the audio clip is empty", path=path)
    mono = data.mean(axis=1, dtype=np.float64)
    if native != rate:
        mono = _resampled(mono, native, rate, path)
    return mono[:length].astype(np.float32)


def _resampled(x: np.ndarray, native: int, rate: int, path: Path) -> np.ndarray:
    try:
        from scipy.signal import resample_poly
    except ImportError:
        raise DataError("resampling audio needs scipy: pip install 'lsuv-convert[audio]'", path=path) from None
    step = gcd(native, rate)
    return resample_poly(x, rate // step, native // step)


def _padded(clip: np.ndarray, length: int) -> np.ndarray:
    return np.pad(clip, (0, length - clip.shape[0])) if clip.shape[0] < length else clip
