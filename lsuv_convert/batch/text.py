"""Text as a batch: one text per line of a ``.txt`` file (blank lines skipped), or the ``text`` field
of each line of a ``.jsonl`` file, tokenized by the model folder's own tokenizer (or ``--tokenizer``).

Length: a model that declares a fixed sequence length gets exactly that many tokens per text.
Otherwise ``--max-length N`` truncates and pads every text to N tokens; without it, texts are
truncated at the model's position limit or 128 tokens, whichever is smaller, and padded to the
longest text of the sample (so that padding, which LSUV's statistics see, stays small). The
tokenizer's ``input_ids``, ``attention_mask`` and ``token_type_ids`` feed the model's inputs of
those names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..formats.model_graph import InputSpec
from .processors import Prepared, check_sample_bytes, feed_outputs, has_tokenizer, load_tokenizer, takes_ids

DEFAULT_MAX_LENGTH = 128
# config.json keys that give a text model's position limit (BERT-like, GPT-2, others)
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def read_texts(files: list[Path], samples: int | None) -> tuple[list[str], list[Path]]:
    """(texts, the files read): every file's texts in order, the first ``samples`` of them."""
    texts, read = [], []
    for f in files:
        if samples is not None and len(texts) >= samples:
            break
        texts.extend(_texts_of(f))
        read.append(f)
    return texts[:samples] if samples is not None else texts, read


def _texts_of(path: Path) -> list[str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the text file: {exc.strerror or exc}", path=path) from None
    if not raw:
        raise DataError("the text file is empty (one text per line is expected)", path=path)
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"is not UTF-8 text ({exc.reason} at byte {exc.start})", path=path) from None
    lines = content.splitlines()
    if path.suffix.lower() == ".jsonl":
        texts = [_jsonl_text(line, n, path) for n, line in enumerate(lines, 1) if line.strip()]
    else:
        texts = [line for line in lines if line.strip()]
    if not texts:
        raise DataError("the text file holds no text (every line is blank)", path=path)
    return texts


def _jsonl_text(line: str, number: int, path: Path) -> str:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise DataError(f"line {number} is not JSON ({exc})", path=path) from None
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise DataError(f"line {number} has no \"text\" string field", path=path)
    return text


def text_batch(files: list[Path], specs: list[InputSpec], *, tokenizer_path: Path | None,
               model_folder: Path | None, max_length: int | None, samples: int | None) -> tuple[Prepared, list[Path]]:
    """(the tokenized sample, every file read)."""
    first = files[0]
    if not specs:
        raise DataError("the model declares no input for text", path=first)
    main = specs[0]
    if not takes_ids(main):
        raise DataError(f"text data feeds token ids, but the model's input {main.name!r} takes {main.dtype} values",
                        path=first)
    texts, read = read_texts(files, samples)
    source = tokenizer_path if tokenizer_path is not None else (model_folder if has_tokenizer(model_folder) else None)
    if source is None:
        raise DataError("text data needs a tokenizer, and the model has none: pass --tokenizer PATH_OR_FOLDER "
                        "(a tokenizer folder or tokenizer.json)", path=first)
    tokenizer = load_tokenizer(source)
    length, padding = _length(main, tokenizer, model_folder, max_length, first)
    check_sample_bytes(length * 8 * 3, len(texts), "texts", first)
    name = type(tokenizer).__name__
    if tokenizer.pad_token is None:  # GPT-2, a bare tokenizer.json: a padding token it has (the mask hides it)
        fallback = _padding_token(tokenizer)
        if fallback is None:
            raise DataError(f"{name} defines no padding token to make texts of one length", path=source)
        tokenizer.pad_token = fallback
    try:
        encoded = tokenizer(texts, padding=padding, truncation=True, max_length=length, return_tensors="np")
    except Exception as exc:  # noqa: BLE001 - the tokenizer's own refusal
        raise DataError(f"{name} cannot tokenize the text: {exc}", path=first) from None
    outputs = {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()}
    arrays, names = feed_outputs(outputs, specs, name, first, main="input_ids")
    more = f" and {len(read) - 1} more file(s)" if len(read) > 1 else ""
    desc = (f"{len(texts)} texts from {read[0]}{more}, tokenized by {name} ({source}) to "
            f"{arrays[0].shape[1]} tokens" + (" (padded to the longest)" if padding == "longest" else ""))
    prepared = Prepared(arrays, names, desc, processor={"class": name, "source": str(source)}, normalized=True)
    return prepared, read + ([tokenizer_path] if tokenizer_path is not None else [])


PADDING_TOKENS = ("[PAD]", "<pad>", "<PAD>", "<|pad|>", "<|endoftext|>")


def _padding_token(tokenizer) -> str | None:
    """A token to pad with when the tokenizer names none: a usual padding token of its vocabulary,
    else its end or unknown token."""
    vocab = tokenizer.get_vocab()
    for token in PADDING_TOKENS:
        if token in vocab:
            return token
    return tokenizer.eos_token or tokenizer.unk_token


def _length(main: InputSpec, tokenizer, folder: Path | None, asked: int | None, where: Path) -> tuple[int, str]:
    """(tokens per text, padding strategy); see the module docstring."""
    shape = main.shape
    fixed = shape[1] if shape is not None and len(shape) == 2 and isinstance(shape[1], int) else None
    if fixed is not None:
        if asked is not None and asked != fixed:
            raise DataError(f"--max-length {asked}: the model takes exactly {fixed} tokens per text", path=where)
        return fixed, "max_length"
    limit = _position_limit(folder, tokenizer)
    if asked is not None:
        if limit is not None and asked > limit:
            raise DataError(f"--max-length {asked} is more than the model's {limit} positions", path=where)
        return asked, "max_length"
    return min(DEFAULT_MAX_LENGTH, limit or DEFAULT_MAX_LENGTH), "longest"


def _position_limit(folder: Path | None, tokenizer) -> int | None:
    """The most tokens the model takes: its config's position count, the tokenizer's own limit."""
    limits = []
    if folder is not None and (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        for key in POSITION_KEYS:
            value = config.get(key) if isinstance(config, dict) else None
            if isinstance(value, int) and value > 0:
                limits.append(value)
                break
    own = getattr(tokenizer, "model_max_length", None)
    if isinstance(own, int) and 0 < own < 1_000_000:  # transformers' "no limit" is 1e30
        limits.append(own)
    return min(limits) if limits else None
