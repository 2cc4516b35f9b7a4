"""Job arrays: which models of a run one array task converts (``--shard I/N``, ``--shard auto``).

Every task of an array expands the same command line into the same list of models, then keeps
its own part. The split must agree between tasks that never talk to each other and run on
different machines, so it depends only on a key per model that every machine computes alike
(the model's path below the argument that found it, see
:attr:`lsuv_convert.command.discovery.ModelJob.shard_key`), never on the order a shell or a file
system lists files, nor on where the zoo is mounted. The models are sorted by that key and dealt
out like cards: shard ``I`` of ``N`` takes positions ``I, I+N, I+2N, ...``. So every model is in
exactly one shard and the shards' sizes differ by at most one model.

``--shard auto`` reads the index and the count from the job array the process runs in: a Slurm
array (``SLURM_ARRAY_TASK_ID`` etc.) or a Kubernetes Indexed Job (``JOB_COMPLETION_INDEX``, with
the count in :data:`COUNT_VARIABLE`, since Kubernetes puts ``spec.completions`` in no variable).
Anything ambiguous is refused with one usage line rather than guessed: a wrong guess would
silently skip or duplicate models across the array.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..errors import UsageError

COUNT_VARIABLE = "LSUV_CONVERT_SHARD_COUNT"  # the Indexed Job's spec.completions, set in its manifest
_NUMBER = r"[0-9]{1,9}"  # ASCII digits only; no sign; small enough for any array
_SPEC = re.compile(rf"({_NUMBER})/({_NUMBER})")
_HINT = "use --shard I/N with 0 <= I < N (e.g. --shard 0/4), or --shard auto inside a job array"

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (0-based) of ``count`` parts of a run; ``origin``: the job array it was read from."""

    index: int
    count: int
    origin: str = ""

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def as_json(self) -> dict:
        return {"index": self.index, "count": self.count}


def parse_shard(text: str, environ: Mapping[str, str]) -> Shard:
    """``--shard``'s value: ``I/N`` or ``auto`` (read from ``environ``); UsageError otherwise."""
    value = text.strip()
    if value.lower() == "auto":
        return from_job_array(environ)
    found = _SPEC.fullmatch(value)
    if found is None:
        raise UsageError(f"--shard {text!r} is not I/N; {_HINT}")
    index, count = int(found.group(1)), int(found.group(2))
    if count == 0:
        raise UsageError(f"--shard {text!r}: the count N must be at least 1; {_HINT}")
    if index >= count:
        raise UsageError(f"--shard {text!r}: the index must be below the count (the shards of {count} are "
                         f"0/{count} to {count - 1}/{count})")
    return Shard(index, count)


def from_job_array(environ: Mapping[str, str]) -> Shard:
    """The shard of this process in a Slurm job array or a Kubernetes Indexed Job."""
    slurm = _get(environ, "SLURM_ARRAY_TASK_ID") is not None
    kubernetes = _get(environ, "JOB_COMPLETION_INDEX") is not None
    if slurm and kubernetes:
        raise UsageError("--shard auto: both SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX are set, so the job "
                         "array is ambiguous; pass --shard I/N")
    if slurm:
        return _slurm(environ)
    if kubernetes:
        return _kubernetes(environ)
    raise UsageError("--shard auto: not in a job array (neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is "
                     "set); pass --shard I/N, or leave --shard out to convert every model")


def _slurm(environ: Mapping[str, str]) -> Shard:
    """Task ``(ID - MIN) / STEP`` of ``COUNT``: ``--array=A-B`` and ``--array=A-B:S`` (with or without a
    ``%`` limit) are ranges; an index list that is not one evenly spaced range is refused."""
    task = _number(environ, "SLURM_ARRAY_TASK_ID", required=True)
    first = _number(environ, "SLURM_ARRAY_TASK_MIN", required=True)
    given_step = _number(environ, "SLURM_ARRAY_TASK_STEP")
    step = given_step or 1
    last = _number(environ, "SLURM_ARRAY_TASK_MAX")
    count = _number(environ, "SLURM_ARRAY_TASK_COUNT")
    if given_step is None and last is None and count != 1:
        raise UsageError("--shard auto: Slurm sets neither SLURM_ARRAY_TASK_STEP nor SLURM_ARRAY_TASK_MAX, so a "
                         "stepped array can't be told from a plain one; pass --shard I/N")
    if count is None:
        if last is None:
            raise UsageError("--shard auto: Slurm sets SLURM_ARRAY_TASK_ID but neither SLURM_ARRAY_TASK_COUNT "
                             "nor SLURM_ARRAY_TASK_MAX; pass --shard I/N")
        count = (last - first) // step + 1
    seen = (f"SLURM_ARRAY_TASK_ID={task}, _MIN={first}, _MAX={last if last is not None else 'unset'}, "
            f"_STEP={step}, _COUNT={count}")
    offset = task - first
    regular = (count >= 1 and offset >= 0 and offset % step == 0 and offset // step < count
               and (last is None or last == first + step * (count - 1)))
    if not regular:
        raise UsageError(f"--shard auto: this Slurm array is not one evenly spaced range A-B[:S] ({seen}); "
                         "pass --shard I/N")
    _agrees(environ, count, "the Slurm array's task count")
    return Shard(offset // step, count, f"Slurm array task {task} ({seen})")


def _kubernetes(environ: Mapping[str, str]) -> Shard:
    index = _number(environ, "JOB_COMPLETION_INDEX", required=True)
    count = _number(environ, COUNT_VARIABLE)
    if count is None:
        raise UsageError(f"--shard auto: in a Kubernetes Indexed Job (JOB_COMPLETION_INDEX={index}) the count "
                         f"comes from {COUNT_VARIABLE}, which is not set; set it to the Job's spec.completions")
    if not index < count:
        raise UsageError(f"--shard auto: JOB_COMPLETION_INDEX={index} is not below {COUNT_VARIABLE}={count}; set "
                         f"{COUNT_VARIABLE} to the Job's spec.completions")
    return Shard(index, count, f"Kubernetes Indexed Job (JOB_COMPLETION_INDEX={index}, {COUNT_VARIABLE}={count})")


def _agrees(environ: Mapping[str, str], count: int, what: str) -> None:
    """A count the user also set explicitly must be the same: two answers are a mistake somewhere."""
    explicit = _number(environ, COUNT_VARIABLE)
    if explicit is not None and explicit != count:
        raise UsageError(f"--shard auto: {COUNT_VARIABLE}={explicit} differs from {what} ({count}); "
                         "unset one of them or pass --shard I/N")


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return value.strip() if value is not None and value.strip() else None


def _number(environ: Mapping[str, str], name: str, *, required: bool = False) -> int | None:
    value = _get(environ, name)
    if value is None:
        if required:
            raise UsageError(f"--shard auto: {name} is not set; pass --shard I/N")
        return None
    if not re.fullmatch(_NUMBER, value):
        raise UsageError(f"--shard auto: {name}={value!r} is not a whole number >= 0; pass --shard I/N")
    return int(value)


def select(items: Sequence[T], shard: Shard | None, key: Callable[[T], tuple]) -> list[T]:
    """The items of ``shard`` (all of them when None), in their given order.

    The keys must be distinct; items are ranked by key, and shard ``I`` of ``N`` takes ranks
    ``I, I+N, ...``: the same items whatever order ``items`` comes in.
    """
    if shard is None:
        return list(items)
    keys = [key(item) for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError("shard keys must be distinct")  # a bug in the caller's key: never guess an order
    ranked = sorted(range(len(items)), key=keys.__getitem__)
    mine = set(ranked[shard.index::shard.count])
    return [item for k, item in enumerate(items) if k in mine]


def summary_line(shard: Shard, outcomes: Sequence, *, planned: int, run_models: int, exit_code: int) -> dict:
    """The last ``--json`` line of a sharded run: which shard, how its models ended, and how many
    models the whole run has, so that the lines of every shard concatenated can be checked whole."""
    statuses = ("ok", "skipped", "failed", "unconverged")
    counts = {status: sum(1 for o in outcomes if o.status == status) for status in statuses}
    counts["not_run"] = planned - len(outcomes)  # --fail-fast stopped before them
    return {"shard": shard.as_json(), "summary": counts, "models": planned, "run_models": run_models,
            "exit_code": exit_code}
