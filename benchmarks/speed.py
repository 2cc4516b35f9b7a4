"""How fast is lsuv-convert? Three markdown tables, measured in this one process.

1. LSUV: one forward pass vs our ``lsuv_init(pre_init="keep")`` vs the paper author's
   PyTorch package ``lsuv==0.3.0`` (``lsuv_with_singlebatch``), same model, same batch.
   Every method gets a fresh deep copy of the same default-initialised model, so each one
   has real rescaling to do.
2. Orthonormal pre-init of every conv/linear layer: ours vs ``torch.nn.init.orthogonal_``.
3. The CLI end to end on files (ONNX, Caffe prototxt, TorchScript): wall time split into
   load / pre-init / LSUV / save from the JSON log, and the CLI's peak memory (RSS)
   next to a process that only loads the same file and runs one forward pass.

    python benchmarks/speed.py                 # full tables (about 10 min on 2 cores)
    python benchmarks/speed.py --quick         # small batch and images: a smoke test
    python benchmarks/speed.py --device cuda   # the same tables on a GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import _nets
from _common import fmt_seconds, machine_summary, markdown_table, median, timed

LSUV_MODELS = ("resnet50", "densenet121", "mobilenet_v3_small", "vgg11", "plain50")
ORTHO_MODELS = ("vgg11", "resnet50")
CLI_CASES = ("resnet50 ONNX", "CaffeNet prototxt", "resnet18 TorchScript")


@dataclass
class Sizes:
    """Batch and image sizes; ``--quick`` shrinks them so that the whole script is a smoke test."""

    batch: int
    image: int  # torchvision models
    plain_image: int  # the 50-layer plain chain
    repeats: int  # timed runs of the fast methods (median reported)
    ortho_vgg_fc: bool  # include VGG's 102M-weight fc6 in the orthonormal table


FULL = Sizes(batch=16, image=224, plain_image=32, repeats=3, ortho_vgg_fc=True)
QUICK = Sizes(batch=2, image=32, plain_image=16, repeats=1, ortho_vgg_fc=False)


def plain_chain(depth: int = 50, width: int = 32) -> nn.Sequential:
    """conv3x3-ReLU repeated (depth-1 convs) + a linear classifier: ``depth`` target layers.

    No normalisation and no skip connections: the case where the reference
    implementation's one-full-forward-per-layer cost grows quadratically with depth.
    """
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True)]
    for _ in range(depth - 2):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1000)]
    return nn.Sequential(*layers)


def build_model(name: str) -> nn.Module:
    """A freshly constructed model with its library's default init (seeded)."""
    import torchvision

    torch.manual_seed(0)
    model = plain_chain() if name == "plain50" else getattr(torchvision.models, name)(weights=None)
    return model.eval()


def input_shape(name: str, sizes: Sizes) -> tuple[int, ...]:
    side = sizes.plain_image if name == "plain50" else sizes.image
    return (sizes.batch, 3, side, side)


def count_targets(model: nn.Module) -> int:
    from lsuv_convert.engine import is_target

    return sum(1 for m in model.modules() if is_target(m))


# --------------------------------------------------------------------------- LSUV table


def time_forward(model: nn.Module, x: torch.Tensor, device: str) -> float:
    with torch.no_grad():
        seconds, _ = timed(lambda: model(x), device)
    return seconds


def time_ours(model: nn.Module, x: torch.Tensor, device: str) -> float:
    from lsuv_convert import lsuv_init

    fresh = copy.deepcopy(model)
    seconds, report = timed(lambda: lsuv_init(fresh, x, pre_init="keep", device=device, seed=0), device)
    if report.unconverged:
        print(f"  note: {len(report.unconverged)} layer(s) not converged by lsuv_init", file=sys.stderr)
    return seconds


def time_reference(model: nn.Module, x: torch.Tensor, device: str) -> float:
    """``lsuv==0.3.0`` with its own defaults (std tol 0.1, 10 attempts), no orthonormal step."""
    import lsuv

    fresh = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds, _ = timed(
            lambda: lsuv.lsuv_with_singlebatch(fresh, x, do_orthonorm=False, verbose=False, device=torch.device(device)),
            device,
        )
    return seconds


def lsuv_row(name: str, sizes: Sizes, device: str) -> list[object]:
    model = build_model(name).to(device)
    shape = input_shape(name, sizes)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    time_forward(model, x, device)  # warm-up: allocator, kernel selection
    forwards, ours = [], []
    for _ in range(sizes.repeats):  # interleaved, so that load changes hit both alike
        forwards.append(time_forward(model, x, device))
        ours.append(time_ours(model, x, device))
    forwards.append(time_forward(model, x, device))
    reference = time_reference(model, x, device)
    fwd, mine = median(forwards), median(ours)
    return [
        name,
        count_targets(model),
        "x".join(map(str, shape)),
        f"{fwd * 1000:.0f}",
        f"{mine:.3f}",
        f"{mine / fwd:.2f}x",
        fmt_seconds(reference),
        f"{reference / fwd:.1f}x",
        f"{reference / mine:.0f}x",
    ]


LSUV_HEADERS = ["model", "layers", "batch", "forward (ms)", "ours (s)", "ours / fwd", "lsuv 0.3.0 (s)",
                "lsuv 0.3.0 / fwd", "speed-up"]


# ------------------------------------------------------------------ orthonormal table


def ortho_targets(name: str, sizes: Sizes) -> tuple[list[nn.Module], str]:
    from lsuv_convert.engine import is_target

    model = build_model(name)
    modules = [m for m in model.modules() if is_target(m)]
    if name == "vgg11" and not sizes.ortho_vgg_fc:
        modules = [m for m in modules if not isinstance(m, nn.Linear)]
        return modules, f"{len(modules)} conv (quick: no fc)"
    return modules, f"all {len(modules)}"


def ortho_row(name: str, sizes: Sizes, device: str) -> list[object]:
    from lsuv_convert.orthonormal import pre_initialize

    modules, label = ortho_targets(name, sizes)
    for m in modules:
        m.to(device)
    ours = [
        timed(lambda: pre_initialize(modules, "orthonormal", torch.Generator().manual_seed(0)), device)[0]
        for _ in range(sizes.repeats)
    ]

    def torch_orthogonal() -> None:
        with torch.no_grad():
            for m in modules:
                torch.nn.init.orthogonal_(m.weight)

    theirs = [timed(torch_orthogonal, device)[0] for _ in range(1 if sizes.repeats == 1 else 2)]
    mine, ref = median(ours), median(theirs)
    weights = sum(m.weight.numel() for m in modules)
    return [name, label, f"{weights / 1e6:.1f}M", fmt_seconds(mine), fmt_seconds(ref), f"{ref / mine:.1f}x"]


ORTHO_HEADERS = ["model", "layers", "weights", "ours (s)", "torch orthogonal_ (s)", "speed-up"]


# -------------------------------------------------------------------------- CLI table


# Linux charges a child with the peak RSS of the process image it replaced at exec, so a
# child forked straight from this (big) benchmark process would report at least our own
# RSS. A tiny launcher process in between keeps the child's figure its own.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run_measured(cmd: list[str], log_dir: Path, tag: str) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak RSS in MiB, last stderr line) of one child process."""
    out_path, err_path, rss_path = (log_dir / f"{tag}.{ext}" for ext in ("out", "err", "rss"))
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _LAUNCHER, str(rss_path)] + cmd, stdout=out, stderr=err)
        wall = time.perf_counter() - t0
    try:
        rss_mib = int(rss_path.read_text()) / 1024  # ru_maxrss is in KiB on Linux
    except (OSError, ValueError):
        rss_mib = float("nan")
    tail = (err_path.read_text(errors="replace").strip().splitlines() or [""])[-1]
    return done.returncode, wall, rss_mib, tail


PLAIN_FORWARD = """
import sys
from pathlib import Path
import numpy as np, torch
from lsuv_convert.formats import find_format
path = Path(sys.argv[1])
graph = find_format(path).load(path)
x = torch.from_numpy(np.load(sys.argv[2])).to(sys.argv[3])
module = graph.module.to(sys.argv[3]).eval()
with torch.no_grad():
    module(x)
"""


def _make_cli_inputs(case: str, tmp: Path, sizes: Sizes) -> tuple[Path, tuple[int, ...]]:
    """Write the model file of ``case`` into ``tmp``; returns it with the batch shape it takes."""
    import torchvision

    torch.manual_seed(0)
    if case == "resnet50 ONNX":
        path = tmp / "resnet50.onnx"
        model = torchvision.models.resnet50(weights=None).eval()
        example = torch.randn(1, 3, 224, 224)
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
        return path, (sizes.batch, 3, 224, 224)
    if case == "CaffeNet prototxt":
        path = tmp / "caffenet.prototxt"
        path.write_text(_nets.caffenet())
        return path, (sizes.batch, 3, 227, 227)
    if case == "resnet18 TorchScript":
        path = tmp / "resnet18.pt"
        model = torchvision.models.resnet18(weights=None).eval()
        torch.jit.save(torch.jit.trace(model, torch.randn(1, 3, 224, 224)), str(path))
        return path, (sizes.batch, 3, 224, 224)
    raise ValueError(case)


def cli_program() -> list[str] | None:
    """The console script installed beside this Python (not a pyenv shim, which adds its own start-up)."""
    beside = Path(sys.executable).with_name("lsuv-convert")
    exe = str(beside) if beside.exists() else shutil.which("lsuv-convert")
    return [exe] if exe else None


def cli_help() -> str:
    program = cli_program()
    if program is None:
        return ""
    done = subprocess.run(program + ["convert", "--help"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


def cli_row(case: str, sizes: Sizes, device: str, tmp: Path, help_text: str) -> list[object]:
    program = cli_program()
    blank = ["n/a"] * (len(CLI_HEADERS) - 1)
    if program is None or not help_text:
        return [case, "n/a (lsuv-convert CLI not installed or not working)"] + blank[1:]
    try:
        model_path, shape = _make_cli_inputs(case, tmp, sizes)
    except Exception as exc:  # noqa: BLE001 - a benchmark row reports, never crashes the table
        return [case, f"n/a (could not write the model: {type(exc).__name__}: {exc})"[:160]] + blank[1:]
    batch_path = tmp / f"{model_path.stem}.batch.npy"
    import numpy as np

    np.save(batch_path, np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    out_path = tmp / f"{model_path.stem}.lsuv{model_path.suffix}"
    if model_path.suffix == ".prototxt":
        out_path = tmp / f"{model_path.stem}.lsuv.caffemodel"
    log_path = tmp / f"{model_path.stem}.log.json"
    cmd = program + [str(model_path), "--data", str(batch_path), "-o", str(out_path), "--log", str(log_path)]
    if "--device" in help_text:  # the CLI's default "auto" would pick a GPU where one exists
        cmd += ["--device", device]
    rc, wall, rss, err = _run_measured(cmd, tmp, f"{model_path.stem}.cli")
    if rc != 0:
        return [case, f"n/a (CLI exit {rc}: {err})"[:200]] + blank[1:]
    try:
        seconds = json.loads(log_path.read_text())["seconds"]
    except (OSError, ValueError, KeyError) as exc:
        return [case, f"n/a (no seconds in the log: {exc})"] + blank[1:]
    plain = [sys.executable, "-c", PLAIN_FORWARD, str(model_path), str(batch_path), device]
    prc, _, plain_rss, perr = _run_measured(plain, tmp, f"{model_path.stem}.plain")
    plain_cell = f"{plain_rss:.0f}" if prc == 0 else f"n/a ({perr})"[:120]
    ratio = f"{rss / plain_rss:.2f}x" if prc == 0 else "n/a"
    parts = [float(seconds.get(k, 0.0)) for k in ("load", "pre_init", "lsuv", "save")]
    rest = max(0.0, wall - sum(parts))  # interpreter start-up, imports, reading the batch, the log
    return [case, "x".join(map(str, shape)), f"{wall:.1f}"] + [fmt_seconds(p) for p in parts] + [
        fmt_seconds(rest), f"{rss:.0f}", plain_cell, ratio]


CLI_HEADERS = ["model file", "batch", "CLI wall (s)", "load (s)", "pre-init (s)", "LSUV (s)", "save (s)",
               "start-up + rest (s)", "CLI peak RSS (MiB)", "load + 1 forward RSS (MiB)", "RSS ratio"]


# -------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batch and images (CI smoke test)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; 1 with --quick, which is all tiny ops)")
    parser.add_argument("--only", choices=("lsuv", "ortho", "cli"), action="append",
                        help="run only these tables (repeatable)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device here")
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    sizes = QUICK if args.quick else FULL
    tables = args.only or ["lsuv", "ortho", "cli"]
    started = time.perf_counter()
    print(f"Machine: {machine_summary(args.device)}; device {args.device}" + ("; --quick" if args.quick else ""))

    if "lsuv" in tables:
        print("\n### LSUV: one forward pass vs ours vs lsuv 0.3.0 (same batch, same process)\n", flush=True)
        rows = []
        for name in LSUV_MODELS:
            rows.append(lsuv_row(name, sizes, args.device))
            print(f"  done {name}", file=sys.stderr, flush=True)
        print(markdown_table(LSUV_HEADERS, rows), flush=True)

    if "ortho" in tables:
        print("\n### Orthonormal pre-init of every conv/linear layer: ours vs torch.nn.init.orthogonal_\n", flush=True)
        rows = [ortho_row(name, sizes, args.device) for name in ORTHO_MODELS]
        print(markdown_table(ORTHO_HEADERS, rows), flush=True)

    if "cli" in tables:
        print("\n### CLI end to end (lsuv-convert MODEL --data BATCH.npy -o OUT --log LOG.json)\n", flush=True)
        help_text = cli_help()
        with tempfile.TemporaryDirectory(prefix="lsuv-bench-") as tmp:
            rows = [cli_row(case, sizes, args.device, Path(tmp), help_text) for case in CLI_CASES]
        print(markdown_table(CLI_HEADERS, rows), flush=True)

    print(f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
