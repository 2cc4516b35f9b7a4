"""How fast is lsuv-convert? Markdown tables, measured in this one process and its children.

1. LSUV: one forward pass vs our ``lsuv_init(pre_init="keep")`` vs the paper author's
   PyTorch package ``lsuv==0.3.0`` (``lsuv_with_singlebatch``), same model, same batch;
   then ours vs one forward pass at small sizes (no reference), where fixed costs show.
   Every method gets a fresh deep copy of the same default-initialised model, so each one
   has real rescaling to do.
2. Orthonormal pre-init of every conv/linear layer: ours vs ``torch.nn.init.orthogonal_``.
3. The CLI end to end on files (ONNX, Caffe prototxt, TorchScript; a small net, resnet50, a
   large VGG/CaffeNet) against the floor: a process that imports what the format needs, reads
   the file, runs one forward pass and writes the bytes. Wall, CPU and peak RSS of both
   (median of 3, interleaved), and the CLI's time stage by stage from its log's ``seconds``.
   Then a zoo: several files in one CLI run, each later model against the floor's own work.

    python benchmarks/speed.py                 # full tables (long: lsuv 0.3.0 and 9 CLI cases x 3)
    python benchmarks/speed.py --only cli --case resnet50 --cli-repeats 3   # some CLI rows
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
from _common import fmt_seconds, machine_summary, markdown_table, median, timed, timed_cpu

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
    from lsuv_convert.lsuv.targets import is_layer

    return sum(1 for m in model.modules() if is_layer(m))


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


# The small sizes, where per-layer fixed costs and whole-weight passes show: (batch, side).
SMALL_SIZES = {"resnet50": (16, 112), "densenet121": (16, 112), "mobilenet_v3_small": (16, 112), "vgg11": (4, 112),
               "plain50": (16, 32)}


SMALL_REPEATS = 9


def forward_wall_cpu(model: nn.Module, x: torch.Tensor, device: str, fresh: bool = False) -> tuple[float, float]:
    """One forward pass; ``fresh``: on a deep copy made just before, as LSUV gets (its weights
    and the memory around them are new: mobilenet_v3_small's forward takes ~7 % longer so)."""
    target = copy.deepcopy(model) if fresh else model
    with torch.no_grad():
        wall, cpu, _ = timed_cpu(lambda: target(x), device)
    return wall, cpu


def ours_wall_cpu(model: nn.Module, x: torch.Tensor, device: str) -> tuple[float, float]:
    from lsuv_convert import lsuv_init

    fresh = copy.deepcopy(model)
    wall, cpu, _ = timed_cpu(lambda: lsuv_init(fresh, x, pre_init="keep", device=device, seed=0), device)
    return wall, cpu


def small_lsuv_row(name: str, sizes: Sizes, device: str) -> list[object]:
    """Ours against one forward pass at a small size, interleaved, median of 9 (no reference)."""
    model = build_model(name).to(device)
    batch, side = SMALL_SIZES[name] if sizes is FULL else (sizes.batch, sizes.plain_image if name == "plain50" else sizes.image)
    shape = (batch, 3, side, side)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    time_forward(model, x, device)
    time_ours(model, x, device)  # warm-up of both
    forwards, fresh_forwards, ours = [], [], []
    for _ in range(SMALL_REPEATS if sizes is FULL else 1):
        forwards.append(forward_wall_cpu(model, x, device))
        fresh_forwards.append(forward_wall_cpu(model, x, device, fresh=True))
        ours.append(ours_wall_cpu(model, x, device))
    fwd, fresh, mine = (median(w for w, _ in runs) for runs in (forwards, fresh_forwards, ours))
    fwd_cpu, mine_cpu = median(c for _, c in forwards), median(c for _, c in ours)
    return [name, "x".join(map(str, shape)), f"{fwd * 1000:.1f}", f"{fresh * 1000:.1f}", f"{mine * 1000:.1f}",
            f"{mine / fwd:.2f}x", f"{mine_cpu / fwd_cpu:.2f}x", f"{mine / fresh:.2f}x"]


SMALL_HEADERS = ["model", "batch", "forward (ms)", "forward, fresh copy (ms)", "ours (ms)", "ours / fwd",
                 "ours / fwd (CPU)", "ours / fresh fwd"]


LSUV_HEADERS = ["model", "layers", "batch", "forward (ms)", "ours (s)", "ours / fwd", "lsuv 0.3.0 (s)",
                "lsuv 0.3.0 / fwd", "speed-up"]


# ------------------------------------------------------------------ orthonormal table


def ortho_targets(name: str, sizes: Sizes) -> tuple[list[nn.Module], str]:
    from lsuv_convert.lsuv.targets import is_layer

    model = build_model(name)
    modules = [m for m in model.modules() if is_layer(m)]
    if name == "vgg11" and not sizes.ortho_vgg_fc:
        modules = [m for m in modules if not isinstance(m, nn.Linear)]
        return modules, f"{len(modules)} conv (quick: no fc)"
    return modules, f"all {len(modules)}"


def ortho_row(name: str, sizes: Sizes, device: str) -> list[object]:
    from lsuv_convert.lsuv.orthonormal import pre_initialize

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
open(sys.argv[1], "w").write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass
class Measured:
    code: int
    wall: float
    rss_mib: float
    cpu: float  # user + system seconds: what the process itself did, however loaded the machine
    stdout: str
    last_error: str


def _run_measured(cmd: list[str], log_dir: Path, tag: str) -> Measured:
    """Exit code, wall seconds, peak RSS (MiB), stdout and last stderr line of one child process."""
    out_path, err_path, rss_path = (log_dir / f"{tag}.{ext}" for ext in ("out", "err", "rss"))
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _LAUNCHER, str(rss_path)] + cmd, stdout=out, stderr=err)
        wall = time.perf_counter() - t0
    try:
        maxrss, cpu = rss_path.read_text().split()
        rss_mib, cpu = int(maxrss) / 1024, float(cpu)  # ru_maxrss is in KiB on Linux
    except (OSError, ValueError):
        rss_mib, cpu = float("nan"), float("nan")
    tail = (err_path.read_text(errors="replace").strip().splitlines() or [""])[-1]
    return Measured(done.returncode, wall, rss_mib, cpu, out_path.read_text(errors="replace"), tail)


# The floor of each format: start Python, import what the format needs, read the file, run one
# forward pass in the format's own runtime (onnxruntime; torch.jit) or in torch (Caffe, whose
# prototxt has no weights for OpenCV to run), write the bytes. Each prints its own split.
_FLOOR_HEAD = "import json, sys, time\nt0 = time.perf_counter()\n"
_FLOOR_TAIL = 'print(json.dumps({"imports": t1 - t0, "work": time.perf_counter() - t1}))\n'
FLOOR = {
    "onnx": _FLOOR_HEAD + """import numpy as np, onnx, onnxruntime as ort
t1 = time.perf_counter()
data = open(sys.argv[1], "rb").read()
model = onnx.load_model_from_string(data)  # a weights editor must parse the model to change it
session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
del data
session.run(None, {session.get_inputs()[0].name: np.load(sys.argv[2])})
open(sys.argv[3], "wb").write(model.SerializeToString())
""" + _FLOOR_TAIL,
    # ONNX's second floor, the one a torch-based tool can approach: the plug-in's own read
    # (parse + onnx2torch conversion, no checks), one forward pass in torch, the bytes written
    "onnx-torch": _FLOOR_HEAD + """import numpy as np, torch
from pathlib import Path
from lsuv_convert.formats import find_format
t1 = time.perf_counter()
fmt = find_format(Path(sys.argv[1]))
x = torch.from_numpy(np.load(sys.argv[2]))
graph = fmt.prepare(fmt.load(Path(sys.argv[1])), [x], check=False)  # ONNX -> torch.fx (onnx2torch)
with torch.no_grad():
    graph.module.eval()(x)
open(sys.argv[3], "wb").write(graph.state.model.SerializeToString())
""" + _FLOOR_TAIL,
    "torchscript": _FLOOR_HEAD + """import numpy as np, torch
t1 = time.perf_counter()
module = torch.jit.load(sys.argv[1]).eval()
with torch.no_grad():
    module(torch.from_numpy(np.load(sys.argv[2])))
torch.jit.save(module, sys.argv[3])
""" + _FLOOR_TAIL,
    "caffe": _FLOOR_HEAD + """import numpy as np, torch
from pathlib import Path
from lsuv_convert.formats import find_format
t1 = time.perf_counter()
fmt = find_format(Path(sys.argv[1]))
x = torch.from_numpy(np.load(sys.argv[2]))
graph = fmt.prepare(fmt.load(Path(sys.argv[1])), [x], check=False)  # prototxt -> torch modules
with torch.no_grad():
    graph.module.eval()(x)
with open(sys.argv[3], "wb") as fh:
    for p in graph.module.parameters():
        fh.write(p.detach().numpy().tobytes())
""" + _FLOOR_TAIL,
}


@dataclass(frozen=True)
class CliCase:
    name: str
    fmt: str  # onnx | caffe | torchscript
    net: str  # small | resnet50 | vgg11 | caffenet
    batch: int
    image: int


CLI_CASES_FULL = (
    CliCase("small ONNX", "onnx", "small", 16, 32),
    CliCase("resnet50 ONNX", "onnx", "resnet50", 16, 224),
    CliCase("vgg11 ONNX", "onnx", "vgg11", 4, 224),
    CliCase("small Caffe prototxt", "caffe", "small", 16, 32),
    CliCase("ResNet-50 Caffe prototxt", "caffe", "resnet50", 16, 224),
    CliCase("CaffeNet Caffe prototxt", "caffe", "caffenet", 16, 227),
    CliCase("small TorchScript", "torchscript", "small", 16, 32),
    CliCase("resnet50 TorchScript", "torchscript", "resnet50", 16, 224),
    CliCase("vgg11 TorchScript", "torchscript", "vgg11", 4, 224),
)
CLI_CASES_QUICK = tuple(c for c in CLI_CASES_FULL if c.net == "small")
CLI_CASES = tuple(c.name for c in CLI_CASES_QUICK)  # the rows --quick prints (the smoke test checks them)
ZOO_MODELS = 5


def small_net() -> nn.Sequential:
    """A 20-layer conv chain (16 channels) + classifier: the size of the README's sample model."""
    return plain_chain(depth=20, width=16)


def _small_prototxt(batch: int, image: int) -> str:
    lines = ['name: "small"\n', _nets._input((batch, 3, image, image))]
    bottom = "data"
    for i in range(1, 20):
        lines.append(_nets._conv(f"conv{i}", bottom, 16, 3, pad=1))
        lines.append(_nets._layer(f"relu{i}", "ReLU", f"conv{i}", f"conv{i}"))
        bottom = f"conv{i}"
    lines.append(_nets._pool("pool", bottom, "AVE", 0, 0, global_pooling=True))
    lines.append(_nets._layer("fc", "InnerProduct", "pool", "fc", "inner_product_param { num_output: 1000 }"))
    return "".join(lines)


def _torch_net(net: str) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return (small_net() if net == "small" else getattr(torchvision.models, net)(weights=None)).eval()


def _make_cli_inputs(case: CliCase, folder: Path, stem: str | None = None) -> Path:
    """Write the model file of ``case`` into ``folder`` (the batch shape is the case's)."""
    stem = stem or case.net
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, 3, case.image, case.image)
    if case.fmt == "onnx":
        path = folder / f"{stem}.onnx"
        torch.onnx.export(_torch_net(case.net), (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    elif case.fmt == "caffe":
        path = folder / f"{stem}.prototxt"
        text = {"small": lambda: _small_prototxt(case.batch, case.image), "resnet50": lambda: _nets.resnet50(case.batch),
                "caffenet": lambda: _nets.caffenet(case.batch)}[case.net]()
        path.write_text(text)
    else:
        path = folder / f"{stem}.pt"
        torch.jit.save(torch.jit.trace(_torch_net(case.net), example), str(path))
    return path


def _output_for(model_path: Path) -> Path:
    if model_path.suffix == ".prototxt":
        return model_path.with_name(f"{model_path.stem}.lsuv.caffemodel")
    return model_path.with_name(f"{model_path.stem}.lsuv{model_path.suffix}")


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


# Columns of the stage split: (header, function of the log's seconds). Top-level names add up
# to the run; dotted ones are parts of them (lsuv_convert/stages.py).
def _part(seconds: dict, name: str) -> float:
    return float(seconds.get(name, 0.0))


STAGES = (
    ("imports (s)", lambda s: _part(s, "imports") + _part(s, "load.imports")),
    ("parse + batch (s)", lambda s: _part(s, "load") - _part(s, "load.imports") - _part(s, "load.conversion")
     + _part(s, "batch")),
    ("conversion (s)", lambda s: _part(s, "load.conversion") + _part(s, "prepare") - _part(s, "prepare.fidelity_gate")),
    ("fidelity gate (s)", lambda s: _part(s, "prepare.fidelity_gate")),
    ("pre-init (s)", lambda s: _part(s, "pre_init")),
    ("LSUV (s)", lambda s: _part(s, "lsuv")),
    ("final check (s)", lambda s: _part(s, "save.final_check")),
    ("serialization (s)", lambda s: _part(s, "save.serialize")),
    ("write (s)", lambda s: _part(s, "save") - _part(s, "save.final_check") - _part(s, "save.serialize")),
)
TOP_LEVEL = ("imports", "load", "batch", "prepare", "pre_init", "lsuv", "save")


def _cli_command(program: list[str], model: Path, batch: Path, out: Path, log: Path, device: str, help_text: str) -> list[str]:
    cmd = program + [str(model), "--data", str(batch), "-o", str(out), "--log", str(log), "--force", "-q"]
    if "--device" in help_text:  # the CLI's default "auto" would pick a GPU where one exists
        cmd += ["--device", device]
    return cmd


def cli_row(case: CliCase, repeats: int, device: str, tmp: Path, help_text: str) -> list[object]:
    """Floor and CLI, interleaved ``repeats`` times; medians of wall, RSS and each stage."""
    program = cli_program()
    blank = ["n/a"] * (len(CLI_HEADERS) - 2)
    if program is None or not help_text:
        return [case.name, "n/a (lsuv-convert CLI not installed or not working)"] + blank
    folder = tmp / case.name.replace(" ", "_")
    try:
        model_path = _make_cli_inputs(case, folder)
    except Exception as exc:  # noqa: BLE001 - a benchmark row reports, never crashes the table
        return [case.name, f"n/a (could not write the model: {type(exc).__name__}: {exc})"[:160]] + blank
    import numpy as np

    shape = (case.batch, 3, case.image, case.image)
    batch_path = folder / "batch.npy"
    np.save(batch_path, np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    out_path, log_path = _output_for(model_path), folder / "log.json"
    floor_out = folder / f"floor{model_path.suffix if case.fmt != 'caffe' else '.bin'}"
    floors, clis, stage_runs, torch_floors = [], [], [], []
    for k in range(repeats):
        floor = _run_measured([sys.executable, "-c", FLOOR[case.fmt], str(model_path), str(batch_path), str(floor_out)],
                              folder, f"floor{k}")
        if floor.code != 0:
            return [case.name, "x".join(map(str, shape)), f"n/a (floor exit {floor.code}: {floor.last_error})"[:200]] + blank[1:]
        floors.append(floor)
        if f"{case.fmt}-torch" in FLOOR:
            torch_floor = _run_measured([sys.executable, "-c", FLOOR[f"{case.fmt}-torch"], str(model_path), str(batch_path),
                                         str(floor_out)], folder, f"torch_floor{k}")
            if torch_floor.code == 0:
                torch_floors.append(torch_floor)
        cli = _run_measured(_cli_command(program, model_path, batch_path, out_path, log_path, device, help_text), folder, f"cli{k}")
        if cli.code != 0:
            return [case.name, "x".join(map(str, shape)), f"n/a (CLI exit {cli.code}: {cli.last_error})"[:200]] + blank[1:]
        clis.append(cli)
        stage_runs.append(json.loads(log_path.read_text())["seconds"])
    floor_wall, cli_wall = median([f.wall for f in floors]), median([c.wall for c in clis])
    floor_rss, cli_rss = median([f.rss_mib for f in floors]), median([c.rss_mib for c in clis])
    floor_cpu, cli_cpu = median([f.cpu for f in floors]), median([c.cpu for c in clis])
    startup = median([c.wall - sum(_part(s, k) for k in TOP_LEVEL) for c, s in zip(clis, stage_runs)])
    stages = [fmt_seconds(median([fn(s) for s in stage_runs])) for _, fn in STAGES]
    if torch_floors:
        t_wall, t_rss = median([f.wall for f in torch_floors]), median([f.rss_mib for f in torch_floors])
        TORCH_FLOOR_ROWS.append([case.name, "x".join(map(str, shape)), f"{t_wall:.1f}", f"{cli_wall:.1f}",
                                 f"{cli_wall / t_wall:.2f}x", f"{t_rss:.0f}", f"{cli_rss:.0f}", f"{cli_rss / t_rss:.2f}x"])
    return [case.name, "x".join(map(str, shape)), f"{floor_wall:.1f}", f"{cli_wall:.1f}", f"{cli_wall / floor_wall:.2f}x",
            fmt_seconds(startup)] + stages + [f"{floor_cpu:.1f}", f"{cli_cpu:.1f}", f"{cli_cpu / floor_cpu:.2f}x",
            f"{floor_rss:.0f}", f"{cli_rss:.0f}", f"{cli_rss / floor_rss:.2f}x"]


CLI_HEADERS = ["model file", "batch", "floor wall (s)", "CLI wall (s)", "wall ratio", "start-up (s)"] + \
              [h for h, _ in STAGES] + ["floor CPU (s)", "CLI CPU (s)", "CPU ratio", "floor RSS (MiB)", "CLI RSS (MiB)",
                                        "RSS ratio"]


TORCH_FLOOR_HEADERS = ["model file", "batch", "torch floor wall (s)", "CLI wall (s)", "wall ratio", "torch floor RSS (MiB)",
                       "CLI RSS (MiB)", "RSS ratio"]
TORCH_FLOOR_ROWS: list[list[object]] = []  # filled by cli_row for formats with a second, torch-based floor


def zoo_row(case: CliCase, device: str, tmp: Path, help_text: str, count: int = ZOO_MODELS) -> list[object]:
    """``ZOO_MODELS`` copies of one model in one CLI run: the cost of each model past the first
    (the sum of its log's seconds) against the floor's own work (its wall minus start-up and imports)."""
    program = cli_program()
    blank = ["n/a"] * (len(ZOO_HEADERS) - 1)
    if program is None or not help_text:
        return [case.name] + blank
    folder = tmp / ("zoo_" + case.name.replace(" ", "_"))
    models = [_make_cli_inputs(case, folder / "in", stem=f"m{i}") for i in range(count)]
    import numpy as np

    shape = (case.batch, 3, case.image, case.image)
    for model in models:  # each model's sidecar batch
        np.save(model.with_suffix(".npy"), np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    floor = _run_measured([sys.executable, "-c", FLOOR[case.fmt], str(models[0]), str(models[0].with_suffix(".npy")),
                           str(folder / "floor.bin")], folder, "floor")
    cmd = program + [str(folder / "in"), "--output-dir", str(folder / "out"), "--log", str(folder / "logs"), "--force", "-q"]
    if "--device" in help_text:
        cmd += ["--device", device]
    cli = _run_measured(cmd, folder, "cli")
    if floor.code != 0 or cli.code != 0:
        return [case.name, f"n/a (exit {floor.code}/{cli.code}: {floor.last_error or cli.last_error})"[:200]] + blank[1:]
    logs = sorted((folder / "logs").rglob("*.json"))
    per_model = [sum(_part(json.loads(p.read_text())["seconds"], k) for k in TOP_LEVEL if k != "imports") for p in logs]
    work = json.loads(floor.stdout.strip().splitlines()[-1])["work"]
    later = median(sorted(per_model)[:-1]) if len(per_model) > 1 else float("nan")  # the first one is the slowest
    torch_columns = ["–", "–"]
    if f"{case.fmt}-torch" in FLOOR:  # the torch floor's work past its first model: a second run in the same process
        torch_floor = _run_measured([sys.executable, "-c", ZOO_TORCH_FLOOR.format(floor=FLOOR[f"{case.fmt}-torch"]),
                                     str(models[0]), str(models[0].with_suffix(".npy")), str(folder / "floor.bin")],
                                    folder, "torch_floor")
        if torch_floor.code == 0:
            again = json.loads(torch_floor.stdout.strip().splitlines()[-1])["work"]
            torch_columns = [fmt_seconds(again), f"{later / again:.2f}x"]
    return [case.name, str(len(logs)), f"{cli.wall:.1f}", fmt_seconds(max(per_model)), fmt_seconds(later),
            fmt_seconds(work), f"{later / work:.2f}x"] + torch_columns


# the torch floor's own work for a model once its process has read one already (what a zoo pays per model)
ZOO_TORCH_FLOOR = """import contextlib, io
code = {floor!r}
with contextlib.redirect_stdout(io.StringIO()):
    exec(compile(code, "floor", "exec"), {{"__name__": "__main__"}})
out = io.StringIO()
with contextlib.redirect_stdout(out):
    exec(compile(code, "floor", "exec"), {{"__name__": "__main__"}})
print(out.getvalue().strip().splitlines()[-1])
"""

ZOO_HEADERS = ["model files (one run)", "models", "CLI wall (s)", "first model (s)", "each later model, median (s)",
               "floor work (s)", "later / floor work", "torch floor work, later model (s)", "later / torch floor work"]


def interpreter_and_torch(repeats: int = 3) -> float:
    """Wall seconds of ``python -c "import torch"``: the start-up every torch-based run pays."""
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        walls.append(time.perf_counter() - t0)
    return median(walls)


# -------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batch and images (CI smoke test)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; 1 with --quick, which is all tiny ops)")
    parser.add_argument("--only", choices=("lsuv", "small", "ortho", "cli"), action="append",
                        help="run only these tables (repeatable)")
    parser.add_argument("--case", action="append",
                        help="CLI table: only the model files whose name contains this word (repeatable), e.g. resnet50")
    parser.add_argument("--cli-repeats", type=int, default=None, help="CLI table: runs per case (default 3; 1 with --quick)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device here")
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    sizes = QUICK if args.quick else FULL
    tables = args.only or ["lsuv", "small", "ortho", "cli"]
    started = time.perf_counter()
    print(f"Machine: {machine_summary(args.device)}; device {args.device}" + ("; --quick" if args.quick else ""))

    if "lsuv" in tables:
        print("\n### LSUV: one forward pass vs ours vs lsuv 0.3.0 (same batch, same process)\n", flush=True)
        rows = []
        for name in LSUV_MODELS:
            rows.append(lsuv_row(name, sizes, args.device))
            print(f"  done {name}", file=sys.stderr, flush=True)
        print(markdown_table(LSUV_HEADERS, rows), flush=True)

    if "small" in tables:
        print(f"\n### At small sizes: one forward pass vs our LSUV (same process, interleaved, median of {SMALL_REPEATS})\n", flush=True)
        rows = [small_lsuv_row(name, sizes, args.device) for name in LSUV_MODELS]
        print(markdown_table(SMALL_HEADERS, rows), flush=True)

    if "ortho" in tables:
        print("\n### Orthonormal pre-init of every conv/linear layer: ours vs torch.nn.init.orthogonal_\n", flush=True)
        rows = [ortho_row(name, sizes, args.device) for name in ORTHO_MODELS]
        print(markdown_table(ORTHO_HEADERS, rows), flush=True)

    if "cli" in tables:
        cases = [c for c in (CLI_CASES_QUICK if args.quick else CLI_CASES_FULL)
                 if not args.case or any(word.lower() in c.name.lower() for word in args.case)]
        repeats = args.cli_repeats or (1 if args.quick else 3)
        help_text = cli_help()
        print(f"\n`python -c 'import torch'` takes {interpreter_and_torch(1 if args.quick else 3):.1f} s of wall here.", flush=True)
        print(f"\n### CLI end to end against the floor (lsuv-convert MODEL --data BATCH.npy -o OUT --log LOG.json; "
              f"median of {repeats})\n", flush=True)
        with tempfile.TemporaryDirectory(prefix="lsuv-bench-") as tmp:
            rows = []
            for case in cases:
                rows.append(cli_row(case, repeats, args.device, Path(tmp), help_text))
                print(f"  done {case.name}", file=sys.stderr, flush=True)
            print(markdown_table(CLI_HEADERS, rows), flush=True)
            if TORCH_FLOOR_ROWS:
                print("\n### The same CLI runs against the torch floor (ONNX: the plug-in's parse + onnx2torch "
                      "conversion, one forward pass in torch, the bytes written)\n", flush=True)
                print(markdown_table(TORCH_FLOOR_HEADERS, TORCH_FLOOR_ROWS), flush=True)
            print("\n### Zoo: several model files in one CLI run\n", flush=True)
            zoo_cases = [c for c in cases if c.net == "small"][: 1 if args.quick else None]
            zoo = [zoo_row(c, args.device, Path(tmp), help_text, 2 if args.quick else ZOO_MODELS) for c in zoo_cases]
            print(markdown_table(ZOO_HEADERS, zoo), flush=True)

    print(f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
