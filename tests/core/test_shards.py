"""--shard: the split of a run's models between the tasks of a job array, and reading the task
from Slurm's or Kubernetes' environment.

The property that matters: every model in exactly one shard, the shards' sizes within one
model, and the same split whatever order the models are listed in and wherever the zoo is
mounted (the tasks of an array never talk to each other).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsuv_convert.command.discovery import expand, mirrored
from lsuv_convert.command.shards import COUNT_VARIABLE, Shard, parse_shard, select
from lsuv_convert.errors import UsageError


def _parts(jobs, count, key=lambda job: job.shard_key):
    return [select(jobs, Shard(index, count), key) for index in range(count)]


def _assert_partition(items, parts):
    flat = [item for part in parts for item in part]
    assert sorted(map(repr, flat)) == sorted(map(repr, items))  # every item, exactly once
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1  # balanced within one model


@given(keys=st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=60),
       count=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_every_item_in_exactly_one_balanced_shard_whatever_the_order(keys, count, seed):
    items = [(key,) for key in keys]
    parts = _parts(items, count, key=lambda item: item)
    _assert_partition(items, parts)
    shuffled = items[:]
    random.Random(seed).shuffle(shuffled)
    assert [sorted(p) for p in _parts(shuffled, count, key=lambda item: item)] == [sorted(p) for p in parts]
    for part in parts:  # a shard keeps the run's own order
        assert part == [item for item in items if item in part]


def test_no_shard_is_everything_and_equal_keys_are_refused():
    assert select([3, 1, 2], None, key=lambda x: (x,)) == [3, 1, 2]
    with pytest.raises(ValueError):
        select(["a", "a"], Shard(0, 2), key=lambda x: (x,))


NAMES = st.sampled_from(["a", "b", "m", "net", "Zeta", "é", "e\u0301x", "z 1"])
REL_PATHS = st.lists(st.lists(NAMES, min_size=1, max_size=3).map(lambda parts: "/".join(parts)),
                     min_size=1, max_size=14, unique=True)


def _make(root: Path, rel_paths, ext=".onnx") -> None:
    """Empty model files at ``rel_paths`` (folders never end in ``.onnx``, so none collide)."""
    for rel in rel_paths:
        path = root / (rel + ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zoos=st.lists(REL_PATHS, min_size=1, max_size=3), count=st.integers(1, 7), seed=st.integers(0, 2**32 - 1))
def test_zoo_split_is_the_same_wherever_it_is_mounted_and_however_listed(zoos, count, seed):
    """Zoos (sharing some relative paths) seen from two nodes that mount each one elsewhere."""
    names = [f"zoo{k}" for k in range(len(zoos))]
    with tempfile.TemporaryDirectory() as tmp:
        node1 = [Path(tmp) / "node1" / name for name in names]
        node2 = [Path(tmp) / "node2" / prefix / name for prefix, name in zip(["z", "a b/mnt", "m"], names)]
        for rel_paths, root, mount in zip(zoos, node1, node2):
            _make(root, rel_paths)
            mount.parent.mkdir(parents=True)
            mount.symlink_to(root, target_is_directory=True)

        def split(args: list, roots: list[Path], rng=None) -> list[set]:
            """Each shard's models as (zoo, path in the zoo): the same file on either node."""
            jobs = expand([str(a) for a in args])
            if rng is not None:
                rng.shuffle(jobs)
            return [{next((r.name, job.path.relative_to(r).as_posix()) for r in roots if job.path.is_relative_to(r))
                     for job in part} for part in _parts(jobs, count)]

        jobs = expand([str(p) for p in node1])
        assert len(jobs) == sum(map(len, zoos))
        _assert_partition(jobs, _parts(jobs, count))
        reference = split(node1, node1)
        assert split(node2, node2) == reference
        assert split(node1, node1, random.Random(seed)) == reference

        # the same files given one by one (a shell's glob, in whatever order its locale sorts them)
        files = [job.path.relative_to(root) for root in node1 for job in expand([str(root)])]
        one_by_one = split([r / f for r in node1 for f in files if (r / f).exists()], node1)
        shuffled = [r / f for r in node2 for f in files if (r / f).exists()]
        random.Random(seed).shuffle(shuffled)
        assert split(shuffled, node2) == one_by_one


def test_models_named_alike_in_different_folders_get_distinct_keys(tmp_path):
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "m.onnx").write_bytes(b"")
    jobs = expand([str(tmp_path / f / "m.onnx") for f in ("c", "a", "b")])
    assert len({job.shard_key for job in jobs}) == 3
    _assert_partition(jobs, _parts(jobs, 2))


def test_glob_root_ends_before_the_first_wildcard_part(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / "zoo" / folder).mkdir(parents=True)
        (tmp_path / "zoo" / folder / "m.onnx").write_bytes(b"")
    for pattern in ("zoo/[ab]/*.onnx", "zoo/?/m.onnx", "zoo/**/*.onnx"):
        jobs = expand([str(tmp_path / pattern)])
        assert [job.shard_key[0] for job in jobs] == ["a/m.onnx", "b/m.onnx"], pattern
        # --output-dir mirrors the folders below that root (before, zoo/[ab]/ flattened both to out/m...)
        assert [mirrored(job, Path("out"), "m.lsuv.onnx") for job in jobs] == [Path("out/a/m.lsuv.onnx"),
                                                                               Path("out/b/m.lsuv.onnx")]


# ---- the value of --shard ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, index, count", [("0/1", 0, 1), ("2/3", 2, 3), (" 7/10 ", 7, 10), ("01/04", 1, 4)])
def test_explicit_values(text, index, count):
    shard = parse_shard(text, {})
    assert (shard.index, shard.count) == (index, count)


@pytest.mark.parametrize("text", ["3/3", "-1/2", "a/b", "0/0", "1", "1/2/3", "", "1/-2", "½/2", "1/" + "9" * 5000,
                                  "١/٢"])
def test_bad_values_are_one_usage_error(text):
    with pytest.raises(UsageError) as caught:
        parse_shard(text, {})
    assert "--shard" in str(caught.value) and "\n" not in str(caught.value)


SLURM_0_9 = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "9", "SLURM_ARRAY_TASK_COUNT": "10",
             "SLURM_ARRAY_TASK_STEP": "1", "SLURM_ARRAY_JOB_ID": "4242"}


def _slurm(task, first, last, step, count=None):
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(first), "SLURM_ARRAY_TASK_MAX": str(last),
           "SLURM_ARRAY_TASK_STEP": str(step)}
    if count is not None:
        env["SLURM_ARRAY_TASK_COUNT"] = str(count)
    return env


@pytest.mark.parametrize("array, ids", [("0-9", range(0, 10)), ("1-10", range(1, 11)), ("0-9:2", range(0, 10, 2)),
                                        ("5-17:3", range(5, 18, 3)), ("7", range(7, 8))])
def test_auto_from_a_slurm_array(array, ids):
    ids = list(ids)
    step = ids[1] - ids[0] if len(ids) > 1 else 1
    for with_count in (True, False):  # SLURM_ARRAY_TASK_COUNT, or MIN/MAX/STEP alone
        got = [parse_shard("auto", _slurm(t, ids[0], ids[-1], step, len(ids) if with_count else None)) for t in ids]
        assert [(s.index, s.count) for s in got] == [(k, len(ids)) for k in range(len(ids))], array
        assert all("Slurm" in s.origin for s in got)


def test_auto_from_a_slurm_array_without_a_step_variable():
    env = dict(SLURM_0_9, SLURM_ARRAY_TASK_ID="4")
    del env["SLURM_ARRAY_TASK_STEP"]
    assert (parse_shard("auto", env).index, parse_shard("auto", env).count) == (4, 10)


@pytest.mark.parametrize("env", [
    _slurm(3, 1, 10, 1, count=4),  # --array=1,3,5,10: not one evenly spaced range
    _slurm(4, 0, 9, 3, count=4),  # a task outside the range's steps
    _slurm(3, 0, 8, 2, count=5),
    {"SLURM_ARRAY_TASK_ID": "3"},  # no MIN
    {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0"},  # neither COUNT nor MAX
    {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "5"},  # 0-9:2 or 0-4?
    {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "2"},
    dict(SLURM_0_9, SLURM_ARRAY_TASK_ID="3", **{COUNT_VARIABLE: "5"}),  # two different counts
    dict(SLURM_0_9, SLURM_ARRAY_TASK_ID="3", JOB_COMPLETION_INDEX="3"),  # two job arrays
    {"JOB_COMPLETION_INDEX": "2"},  # Kubernetes without the count
    {"JOB_COMPLETION_INDEX": "5", COUNT_VARIABLE: "5"},
    {"JOB_COMPLETION_INDEX": "-1", COUNT_VARIABLE: "5"},
    {"JOB_COMPLETION_INDEX": "1", COUNT_VARIABLE: "five"},
    {}, {"SLURM_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": ""},  # no job array at all
])
def test_auto_refuses_what_it_cannot_read_for_sure(env):
    with pytest.raises(UsageError) as caught:
        parse_shard("auto", env)
    assert str(caught.value).startswith("--shard auto:") and "\n" not in str(caught.value)


def test_auto_from_a_kubernetes_indexed_job():
    got = [parse_shard("AUTO", {"JOB_COMPLETION_INDEX": str(k), COUNT_VARIABLE: "4"}) for k in range(4)]
    assert [(s.index, s.count) for s in got] == [(k, 4) for k in range(4)]
    assert "JOB_COMPLETION_INDEX" in got[0].origin


def test_slurm_count_variable_may_repeat_the_count():
    shard = parse_shard("auto", dict(SLURM_0_9, SLURM_ARRAY_TASK_ID="9", **{COUNT_VARIABLE: "10"}))
    assert (shard.index, shard.count) == (9, 10)
