"""--shard on the command line: the tasks of a job array together write what one run writes,
byte for byte, each converting only its own models; their --json lines add up to one whole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import invoke
from safety_helpers import TINY_PROTOTXT, snapshot, tiny_batch, tiny_onnx

NO_ARRAY = {"SLURM_ARRAY_TASK_ID": None, "JOB_COMPLETION_INDEX": None, "LSUV_CONVERT_SHARD_COUNT": None}
MODELS = ["caffe/tiny.prototxt", "ext/big.onnx", "ts/deep/net2.pt", "ts/net.pt", "vision/a/m.onnx", "vision/b/m.onnx"]


def make_zoo(root: Path) -> Path:
    """Six models of three formats in nested folders (two named alike), each with its batch."""
    tiny_onnx(root / "vision/a/m.onnx", seed=0)
    tiny_batch(root / "vision/a/m.npy")
    tiny_onnx(root / "vision/b/m.onnx", seed=1)
    tiny_batch(root / "vision/b/m.npy", seed=2)
    tiny_onnx(root / "ext/big.onnx", seed=2, external=True)
    tiny_batch(root / "ext/big.npy", seed=3)
    (root / "caffe").mkdir(parents=True)
    (root / "caffe/tiny.prototxt").write_text(TINY_PROTOTXT)
    tiny_batch(root / "caffe/tiny.npy", shape=(2, 1, 8, 8))
    for seed, rel in enumerate(["ts/net.pt", "ts/deep/net2.pt"]):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 3))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 2, 8, 8)), str(root / rel))
        tiny_batch((root / rel).with_suffix(".npy"), seed=4 + seed)
    return root


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def model_lines(lines: list[dict], zoo: Path, *, cwd: Path) -> dict[str, dict]:
    """The model lines by path in the zoo (``cwd``: where the run started), without what differs
    between runs (timing, shard, how the path was written)."""
    found = {}
    for line in lines:
        if "model" in line:
            rel = os.path.relpath(os.path.realpath(cwd / line["model"]), os.path.realpath(zoo))
            assert rel not in found, rel  # no model twice
            found[rel] = {k: v for k, v in line.items() if k not in ("seconds", "shard", "model", "output")}
    return found


def test_three_shards_write_what_one_run_writes(tmp_path):
    zoo = make_zoo(tmp_path / "node1" / "zoo")
    mounted = tmp_path / "node2" / "mnt" / "models"  # the same zoo, mounted elsewhere on another node
    mounted.parent.mkdir(parents=True)
    mounted.symlink_to(zoo, target_is_directory=True)
    out = tmp_path / "out"
    whole = invoke(zoo, "--output-dir", out, "--json", env=NO_ARRAY)
    assert whole.returncode == 0, whole.stderr
    expected = snapshot(out)
    assert sorted(expected) == sorted([m.rsplit(".", 1)[0] + ".lsuv." + ext for m, ext in zip(
        MODELS, ["caffemodel", "onnx", "pt", "pt", "onnx", "onnx"])] + ["ext/big.lsuv.onnx.data"])
    shutil.rmtree(out)

    runs = [invoke(zoo, "--output-dir", out, "--json", "--shard", "0/3", env=NO_ARRAY),
            invoke(mounted, "--output-dir", out, "--json", "--shard", "1/3", env=NO_ARRAY),
            invoke("zoo", "--output-dir", out, "--json", "--shard", "2/3", cwd=zoo.parent, env=NO_ARRAY)]
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
    assert snapshot(out) == expected  # byte for byte
    per_shard = [json_lines(r.stdout) for r in runs]
    assert [sum(1 for line in lines if "model" in line) for lines in per_shard] == [2, 2, 2]
    assert "shard 1/3: 2 of 6 model(s)" in runs[1].stderr

    # the shards' lines concatenated: every model once, as in the unsharded run; one summary per shard
    together = [line for lines in per_shard for line in lines]
    merged = {}
    for k, lines in enumerate(per_shard):
        merged.update(model_lines(lines, zoo, cwd=zoo.parent))
        assert all(line["shard"] == {"index": k, "count": 3} for line in lines)
    assert merged == model_lines(json_lines(whole.stdout), zoo, cwd=zoo.parent)
    assert len(merged) == 6
    summaries = [line for line in together if "summary" in line]
    assert [s["shard"]["index"] for s in summaries] == [0, 1, 2]
    assert all(s["run_models"] == 6 and s["models"] == 2 and s["exit_code"] == 0 for s in summaries)
    assert all(s["summary"] == {"ok": 2, "skipped": 0, "failed": 0, "unconverged": 0, "not_run": 0} for s in summaries)

    # a rerun of one task skips its finished models (records work per shard) and touches nothing
    again = invoke(mounted, "--output-dir", out, "--json", "--shard", "1/3", env=NO_ARRAY)
    assert again.returncode == 0
    assert [line["status"] for line in json_lines(again.stdout) if "model" in line] == ["skipped", "skipped"]
    assert snapshot(out) == expected


# The recipe of the docs that folds the --json lines of every task into one summary.
JQ_SUMMARY = r"""
  (map(select(has("summary")))) as $shards
  | (map(select(has("model")))) as $models
  | {complete: (($shards | map(.shard.count) | unique | length) == 1
                and ($shards | map(.run_models) | unique | length) == 1
                and ($shards | map(.shard.index) | unique | length) == $shards[0].shard.count
                and ($models | length) == $shards[0].run_models),
     models: ($models | length),
     status: ($models | group_by(.status) | map({key: .[0].status, value: length}) | from_entries),
     problems: [$models[] | select(.status == "failed" or .status == "unconverged") | .model],
     exit_code: ($shards | map(.exit_code) | map(select(. != 0)) | unique
                 | if length == 0 then 0 elif length == 1 then .[0] else 1 end)}
"""


def _missing_models(n: int) -> list[str]:
    """Model arguments that name no file: each is one job of the run that fails at once (no work)."""
    return [f"absent/m{k}.onnx" for k in range(n)]


def _selected(proc) -> list[str]:
    return [line["model"] for line in json_lines(proc.stdout) if "model" in line]


def test_auto_takes_the_task_from_slurm_or_kubernetes(tmp_path):
    models = _missing_models(7)
    explicit = [_selected(invoke(*models, "--json", "--shard", f"{k}/3", cwd=tmp_path, env=NO_ARRAY))
                for k in range(3)]
    assert sorted(sum(explicit, [])) == sorted(models) and [len(e) for e in explicit] == [3, 2, 2]
    # sbatch --array=10-14:2 runs tasks 10, 12 and 14
    slurm = {"SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_MAX": "14", "SLURM_ARRAY_TASK_STEP": "2",
             "SLURM_ARRAY_TASK_COUNT": "3", "JOB_COMPLETION_INDEX": None, "LSUV_CONVERT_SHARD_COUNT": None}
    runs = [invoke(*models, "--json", "--shard", "auto", cwd=tmp_path, env=dict(slurm, SLURM_ARRAY_TASK_ID=str(t)))
            for t in (10, 12, 14)]
    assert [_selected(r) for r in runs] == explicit
    assert "shard 2/3 (Slurm array task 14" in runs[2].stderr
    kubernetes = [invoke(*models, "--json", "--shard", "auto", cwd=tmp_path,
                         env={"JOB_COMPLETION_INDEX": str(k), "LSUV_CONVERT_SHARD_COUNT": "3",
                              "SLURM_ARRAY_TASK_ID": None}) for k in range(3)]
    assert [_selected(r) for r in kubernetes] == explicit
    assert all(r.returncode == 1 for r in runs + kubernetes)  # the absent models fail, in their own shard

    stopped = invoke(*models, "--json", "--shard", "0/3", "--fail-fast", cwd=tmp_path, env=NO_ARRAY)
    summary = json_lines(stopped.stdout)[-1]
    assert summary["summary"] == {"ok": 0, "skipped": 0, "failed": 1, "unconverged": 0, "not_run": 2}
    assert (summary["models"], summary["exit_code"]) == (3, 1)


@pytest.mark.parametrize("value, env, needle", [
    ("3/3", NO_ARRAY, "below the count"), ("-1/2", NO_ARRAY, "is not I/N"), ("a/b", NO_ARRAY, "is not I/N"),
    ("0/0", NO_ARRAY, "at least 1"), ("auto", NO_ARRAY, "not in a job array"),
    ("auto", dict(NO_ARRAY, JOB_COMPLETION_INDEX="1"), "LSUV_CONVERT_SHARD_COUNT"),
    ("auto", dict(NO_ARRAY, SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="10",
                  SLURM_ARRAY_TASK_COUNT="4"), "evenly spaced"),
])
def test_bad_values_are_one_usage_line_and_touch_nothing(tmp_path, value, env, needle):
    tiny_onnx(tmp_path / "m.onnx")
    tiny_batch(tmp_path / "m.npy")
    before = snapshot(tmp_path)
    proc = invoke("m.onnx", "--shard", value, "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lsuv-convert: error: --shard") and needle in lines[0], lines
    assert proc.stdout == ""
    assert snapshot(tmp_path) == before


def test_a_collision_between_shards_stops_every_shard(tmp_path):
    """zooA/m.onnx and zooB/m.onnx would both be written to out/m.lsuv.onnx: refused by the whole
    run, whichever shard each model falls in (two tasks would overwrite each other's file)."""
    for zoo in ("zooA", "zooB"):
        tiny_onnx(tmp_path / zoo / "m.onnx")
    before = snapshot(tmp_path)
    for k in range(2):
        proc = invoke("zooA", "zooB", "--output-dir", "out", "--shard", f"{k}/2", cwd=tmp_path, env=NO_ARRAY)
        assert proc.returncode == 2 and "written twice" in proc.stderr, proc.stderr
    assert snapshot(tmp_path) == before


def test_empty_shard_is_a_finished_task(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    proc = invoke("m.onnx", "--json", "--shard", "4/5", cwd=tmp_path, env=NO_ARRAY)
    assert proc.returncode == 0, proc.stderr
    assert json_lines(proc.stdout) == [{"shard": {"index": 4, "count": 5}, "exit_code": 0, "models": 0,
                                        "run_models": 1, "summary": {"ok": 0, "skipped": 0, "failed": 0,
                                                                     "unconverged": 0, "not_run": 0}}]
    assert not (tmp_path / "m.lsuv.onnx").exists()


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_the_documented_jq_recipe_folds_the_shards_into_one_summary(tmp_path):
    models = _missing_models(5)
    outputs = [invoke(*models, "--json", "--shard", f"{k}/2", cwd=tmp_path, env=NO_ARRAY).stdout for k in range(2)]

    def fold(texts):
        done = subprocess.run(["jq", "-s", JQ_SUMMARY], input="".join(texts), capture_output=True, text=True,
                              check=True)
        return json.loads(done.stdout)

    whole = fold(outputs)
    assert whole["complete"] is True and whole["models"] == 5 and whole["status"] == {"failed": 5}
    assert sorted(whole["problems"]) == sorted(models) and whole["exit_code"] == 1
    assert fold(outputs[:1])["complete"] is False  # a task that never finished is missing
    assert fold([outputs[0], outputs[0], outputs[1]])["complete"] is False  # one task's lines twice
    other = invoke(*models[:4], "--json", "--shard", "1/2", cwd=tmp_path, env=NO_ARRAY).stdout
    assert fold([outputs[0], other])["complete"] is False  # the tasks did not see the same zoo

    def codes(*per_shard):  # summary lines alone: how the tasks' exit codes combine
        return fold([json.dumps({"shard": {"index": k, "count": len(per_shard)}, "summary": {}, "models": 0,
                                 "run_models": 0, "exit_code": c}) + "\n" for k, c in enumerate(per_shard)])["exit_code"]

    assert (codes(0, 0), codes(3, 0, 3), codes(3, 1), codes(2, 3), codes(1, 0)) == (0, 3, 1, 1, 1)
