"""A model folder's own preprocessing, loaded by the library that defines it: transformers'
``AutoTokenizer``, ``AutoFeatureExtractor`` and ``AutoImageProcessor``, from local files only
(``local_files_only=True``: a folder path never reaches the network) and never with remote code
(``trust_remote_code=False``: a folder whose processor needs its own Python code is refused).

Also what every kind of data shares: :class:`Prepared` (the arrays for the model's inputs, named),
matching a processor's outputs to the declared inputs by name, and the memory check of a sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, first_line
from ..formats.model_graph import InputSpec, required_count

PREPROCESSOR_CONFIG = "preprocessor_config.json"
# Files one of which every tokenizer saved by transformers (or the tokenizers library) leaves in its folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "tokenizer.model", "sentencepiece.bpe.model")


@dataclass
class Prepared:
    """The data as the model takes it: one array per fed input (a prefix of the declared inputs)."""

    arrays: list[np.ndarray]
    names: list[str]
    description: str
    processor: dict | None = None  # {"class": ..., "source": ...} of the processor that prepared it
    normalized: bool = False  # prepared as the model expects: no "looks unnormalized" warning


def has_tokenizer(folder: Path | None) -> bool:
    return folder is not None and folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)


def preprocessor_kinds(folder: Path | None) -> set[str]:
    """What the folder's ``preprocessor_config.json`` prepares: ``{"image"}``, ``{"audio"}``, both or none."""
    if folder is None or not (folder / PREPROCESSOR_CONFIG).is_file():
        return set()
    try:
        config = json.loads((folder / PREPROCESSOR_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{PREPROCESSOR_CONFIG} is not valid JSON: {exc}", path=folder) from None
    if not isinstance(config, dict):
        return set()
    kinds = set()
    if "image_processor_type" in config or "image_mean" in config or "crop_size" in config:
        kinds.add("image")
    if "feature_extractor_type" in config and "sampling_rate" in config:
        kinds.add("audio")
    return kinds


def _transformers(where: Path):
    try:
        import transformers
    except ImportError:
        raise DataError("preparing data with a tokenizer or processor needs transformers: "
                        "pip install 'lsuv-convert[hf]'", path=where) from None
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _from_folder(auto: str, folder: Path, what: str):
    transformers = _transformers(folder)
    try:
        return getattr(transformers, auto).from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - a missing file, remote code required, an unknown type, ...
        raise DataError(f"transformers cannot load the folder's {what} (processors that need remote code "
                        f"are not run): {first_line(exc)}", path=folder) from None


def load_tokenizer(source: Path):
    """The tokenizer of a folder (``AutoTokenizer``) or of one ``tokenizer.json`` file."""
    if source.is_dir():
        return _from_folder("AutoTokenizer", source, "tokenizer")
    if not source.is_file():
        raise DataError("tokenizer not found", path=source)
    if source.suffix.lower() != ".json":
        raise DataError("--tokenizer takes a folder of tokenizer files or a tokenizer.json file", path=source)
    transformers = _transformers(source)
    try:
        return transformers.PreTrainedTokenizerFast(tokenizer_file=str(source))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own kinds for a bad file; one line names it
        raise DataError(f"not a tokenizer file the tokenizers library reads: {first_line(exc)}", path=source) from None


def load_feature_extractor(folder: Path):
    return _from_folder("AutoFeatureExtractor", folder, "feature extractor")


def load_image_processor(folder: Path):
    return _from_folder("AutoImageProcessor", folder, "image processor")


def feed_outputs(outputs: dict, specs: list[InputSpec], processor: str, where: Path,
                 main: str | None = None) -> tuple[list[np.ndarray], list[str]]:
    """The processor's outputs for the model's declared inputs, matched by name, in the declared
    order: optional inputs are fed while the processor gives them. A model with one required
    input named otherwise (an ONNX ``input.1``) takes the processor's main output (``main``)."""
    arrays, names = [], []
    required = required_count(specs)
    for i, spec in enumerate(specs):
        if spec.name in outputs:
            value = outputs[spec.name]
        elif spec.optional:
            break
        elif i == 0 and required == 1 and (main or next(iter(outputs), None)) in outputs:
            value = outputs[main or next(iter(outputs))]
        else:
            raise DataError(f"the model's input {spec.name!r} is not among what {processor} gives "
                            f"({', '.join(outputs) or 'nothing'})", path=where)
        arrays.append(np.asarray(value))
        names.append(spec.name)
    return arrays, names


def takes_ids(spec: InputSpec) -> bool:
    """Whether the input takes integers (token ids) rather than values."""
    try:
        return np.dtype(spec.dtype or "float32").kind in "iub"
    except TypeError:
        return False


def check_takes_values(specs: list[InputSpec], kind: str, where: Path) -> None:
    """Audio and images feed float values: a model whose first input takes token ids gets one clear line."""
    if not specs:
        raise DataError(f"the model declares no input for {kind}", path=where)
    if takes_ids(specs[0]):
        raise DataError(f"{kind} feed float values, but the model's input {specs[0].name!r} takes {specs[0].dtype} "
                        "token ids (text data feeds those)", path=where)


def check_sample_bytes(per_sample: int, count: int, what: str, where: Path) -> None:
    """The whole sample must fit the memory budget: checked from the first sample's size."""
    from ..budget import available_bytes, check_allocation, human

    fit = available_bytes() // max(per_sample, 1)
    check_allocation(per_sample * count, f"the sample of {count} {what} ({human(per_sample)} each)", path=where,
                     hint=f"pass --samples N to use fewer ({fit} fit)")
