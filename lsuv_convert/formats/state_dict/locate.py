"""Find the model's weights inside a checkpoint as people save them.

A bare ``state_dict``; one nested under ``"state_dict"`` / ``"model"`` / ... beside ``"epoch"``
and ``"optimizer"``; Lightning's ``"model."``-style prefixes; DataParallel's ``"module."``. Every
str-keyed dict holding tensors is a candidate; one matches when, after removing one common
prefix, its tensor keys hold every key of the architecture's state_dict. Its other tensors (a
loss's parameters beside the network's, a Lightning module's own buffers) are not the
architecture's: they are carried through unchanged (``Located.carried``). Of several matches
the one with the fewest such extras is taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ModelFormatError

_MAX_DEPTH = 4


@dataclass
class Located:
    mapping: dict  # the checkpoint's own dict (tensors are updated in it, in place)
    where: list[str]  # keys from the checkpoint's root to ``mapping``
    prefix: str  # what every key carries in front of the architecture's key
    others: list[str]  # other candidates that match too (an EMA copy, ...), left unchanged
    carried: list[str] = field(default_factory=list)  # tensor keys of ``mapping`` the architecture lacks

    def file_key(self, model_key: str) -> str:
        return self.prefix + model_key

    def describe(self) -> str:
        place = "".join(f"[{k!r}]" for k in self.where) or "the file's top level"
        return f"weights found at {place}" + (f", keys prefixed {self.prefix!r}" if self.prefix else "")


def locate(obj, model_keys: list[str], arch: str, path: Path) -> Located:
    """The dict of ``obj`` that holds the architecture's weights, or an error naming the differences."""
    import torch

    wanted = set(model_keys)
    best = None  # (matched, candidate, prefix, tensor keys) of the closest miss
    matches: list[Located] = []
    for where, mapping in _candidates(obj, [], 0):
        keys = [k for k, v in mapping.items() if isinstance(v, torch.Tensor)]
        if not keys:
            continue
        for prefix in _prefixes(keys, model_keys):
            stripped = {k[len(prefix):] for k in keys if k.startswith(prefix)}
            if wanted <= stripped:
                extra = [k for k in keys if not (k.startswith(prefix) and k[len(prefix):] in wanted)]
                matches.append(Located(mapping, where, prefix, [], extra))
                break
            matched = len(stripped & wanted)
            if best is None or matched > best[0]:
                best = (matched, where, prefix, keys)
    if matches:
        matches.sort(key=lambda m: len(m.carried))  # stable: the first found among equals
        found = matches[0]
        found.others = ["".join(f"[{k!r}]" for k in m.where) for m in matches[1:] if m.mapping is not found.mapping]
        return found
    if best is None:
        raise ModelFormatError("holds no tensors keyed by name: not a state_dict checkpoint", path=path)
    _, where, prefix, keys = best
    in_file = {k[len(prefix):] if k.startswith(prefix) else k for k in keys}
    missing = [k for k in model_keys if k not in in_file]
    extra = [k for k in keys if (k[len(prefix):] if k.startswith(prefix) else k) not in wanted]
    parts = [f"{len(missing)} key(s) of {arch} missing from the file: {_first(missing)}"]
    if extra:  # named too: often the missing ones under another spelling
        parts.append(f"{len(extra)} key(s) in the file that {arch} does not have: {_first(extra)}")
    place = "".join(f"[{k!r}]" for k in where) or "top level"
    raise ModelFormatError(f"the checkpoint's keys (at {place}) do not match --arch {arch}: " + "; ".join(parts), path=path)


def _candidates(obj, where: list[str], depth: int):
    if not isinstance(obj, Mapping) or depth > _MAX_DEPTH:
        return
    if all(isinstance(k, str) for k in obj):
        yield where, obj
    for key, value in obj.items():
        if isinstance(key, str) and isinstance(value, Mapping):
            yield from _candidates(value, where + [key], depth + 1)


def _prefixes(keys: list[str], model_keys: list[str]) -> list[str]:
    """"" and every prefix that turns some file key into the architecture's first key."""
    out = [""]
    for anchor in model_keys[:1]:
        for key in keys:
            if key.endswith(anchor) and key != anchor:
                prefix = key[: len(key) - len(anchor)]
                if prefix.endswith(".") and prefix not in out:
                    out.append(prefix)
    return out


def _first(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
