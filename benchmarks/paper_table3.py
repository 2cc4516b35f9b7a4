"""The paper's Table 3 and Figure 1 (init x activation on FitNet-4), reproduced at CPU scale.

Mishkin & Matas (ICLR 2016) train FitNet-4 on CIFAR-10 with five initialisations and five
activations. Here the same experiment runs in minutes on two CPU cores:

- data: scikit-learn's ``load_digits`` (1797 real 8x8 handwritten digits, ships with the
  package, no download), a fixed stratified 75/25 train/test split, pixels standardised;
- net: FitNet-4 exactly as in the paper author's Caffe definition (LSUVinit
  ``fitnet4_*_lsuv_solver.prototxt``: 5 + 6 + 6 conv3x3 layers, max-pooling after the first
  two stages, global max-pooling, fc, classifier) with every width divided by 4 so that it
  is thin enough for a CPU: 19 layers, 17 of them conv. No dropout: the Caffe net's
  dropout 0.2 (input, poolings, fc) only slows these short runs down, and the question
  here is whether a deep net starts to learn from a given init, not regularisation;
- inits: LSUV (orthonormal + LSUV on 128 training images, this package's ``lsuv_init``),
  OrthoNorm (the same orthonormal pre-init alone), Xavier and MSRA as Caffe defines them
  (the paper used Caffe: ``xavier`` = U(+-sqrt(3/fan_in)), ``msra`` = N(0, 2/fan_in)), and
  N(0, 0.01); biases 0;
- activations: ReLU, very leaky ReLU (slope 0.333), tanh, sigmoid, maxout with 2 pieces
  (the conv/fc before a maxout has twice the outputs, as in the paper);
- training: plain SGD, momentum 0.9, lr 0.01 (x0.1 at 60% and 80% of the epochs),
  weight decay 5e-4 (the paper's solver), batch 32, 15 epochs, 3 seeds.

A run that ends at or below twice chance accuracy (20%), or whose loss becomes non-finite,
is "n/c" (did not converge), like the paper's n/c.

    python benchmarks/paper_table3.py            # 3 seeds x 25 cells (<= 30 min on 2 cores)
    python benchmarks/paper_table3.py --quick    # 1 seed, 1 epoch: smoke test (< 3 min)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from _common import machine_summary, markdown_table

INITS = ("LSUV", "OrthoNorm", "Xavier", "MSRA", "N(0,0.01)")
ACTIVATIONS = ("maxout", "ReLU", "VLReLU", "tanh", "sigmoid")

# Table 3 of the paper: CIFAR-10 test accuracy (%), FitNet-4; None = n/c. No N(0,0.01) row.
PAPER_TABLE3 = {
    "LSUV": {"maxout": 93.94, "ReLU": 92.11, "VLReLU": 92.97, "tanh": 89.28, "sigmoid": None},
    "OrthoNorm": {"maxout": 93.78, "ReLU": 91.74, "VLReLU": 92.40, "tanh": 89.48, "sigmoid": None},
    "Xavier": {"maxout": 91.75, "ReLU": 90.63, "VLReLU": 92.27, "tanh": 89.82, "sigmoid": None},
    "MSRA": {"maxout": None, "ReLU": 90.91, "VLReLU": 92.43, "tanh": 89.54, "sigmoid": None},
}

# FitNet-4 of LSUVinit's Caffe files: conv widths per stage, then the fc width.
FITNET4_STAGES = ((32, 32, 32, 48, 48), (80,) * 6, (128,) * 6)
FITNET4_FC = 500
NOT_CONVERGED_ACCURACY = 0.2  # twice chance for 10 classes


@dataclass
class Config:
    epochs: int
    seeds: tuple[int, ...]
    width_divisor: int = 4
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lsuv_batch: int = 128
    clip_grad_norm: float | None = None  # the paper's remedy for MSRA + maxout; off by default
    inits: tuple[str, ...] = INITS
    activations: tuple[str, ...] = ACTIVATIONS


@dataclass
class RunResult:
    init: str
    activation: str
    seed: int
    test_accuracy: list[float] = field(default_factory=list)  # after init, then after each epoch
    train_loss: list[float] = field(default_factory=list)  # mean over each epoch
    converged: bool = True
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this run's own CPU time: what it would take on an idle core
    lsuv_unconverged: int = 0

    @property
    def final_accuracy(self) -> float:
        return self.test_accuracy[-1] if self.test_accuracy else float("nan")


# ------------------------------------------------------------------------------ data


def load_data():
    """Standardised digits as (N, 1, 8, 8) float tensors, split 75/25, stratified, fixed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    mean, std = x_train.mean(), x_train.std()

    def tensor(a):
        return torch.from_numpy(((a - mean) / std).astype(np.float32)).view(-1, 1, 8, 8)

    return tensor(x_train), torch.from_numpy(y_train), tensor(x_test), torch.from_numpy(y_test)


# ------------------------------------------------------------------------------- net


class Maxout(nn.Module):
    """Max over groups of ``pieces`` adjacent channels (dim 1)."""

    def __init__(self, pieces: int):
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        return x.view(n, c // self.pieces, self.pieces, *x.shape[2:]).amax(2)


def activation_module(name: str) -> nn.Module:
    if name == "ReLU":
        return nn.ReLU()
    if name == "VLReLU":
        return nn.LeakyReLU(0.333)
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "maxout":
        return Maxout(2)
    raise ValueError(name)


def thin_fitnet4(activation: str, width_divisor: int = 4):
    """FitNet-4 (LSUVinit's Caffe definition) with widths / ``width_divisor``."""
    pieces = 2 if activation == "maxout" else 1
    layers: list[nn.Module] = []
    channels = 1
    for stage_index, stage in enumerate(FITNET4_STAGES):
        for width in stage:
            width = max(4, width // width_divisor)
            layers += [nn.Conv2d(channels, width * pieces, 3, padding=1), activation_module(activation)]
            channels = width
        if stage_index < len(FITNET4_STAGES) - 1:
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    fc = FITNET4_FC // width_divisor
    layers += [nn.Linear(channels, fc * pieces), activation_module(activation), nn.Linear(fc, 10)]
    return nn.Sequential(*layers)


def weight_layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def initialise(model, init: str, seed: int, lsuv_batch) -> int:
    """Apply ``init`` in place; returns the number of layers LSUV could not bring to tol."""
    from lsuv_convert import lsuv_init
    from lsuv_convert.lsuv.orthonormal import pre_initialize

    layers = weight_layers(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if init == "LSUV":
            report = lsuv_init(model, lsuv_batch, pre_init="orthonormal", seed=seed, device="cpu")
            return len(report.unconverged)
        if init == "OrthoNorm":
            pre_initialize(layers, "orthonormal", generator)
            return 0
        for layer in layers:
            fan_in = layer.weight[0].numel()
            if init == "Xavier":  # Caffe's xavier filler (variance_norm FAN_IN)
                bound = math.sqrt(3.0 / fan_in)
                layer.weight.uniform_(-bound, bound, generator=generator)
            elif init == "MSRA":  # Caffe's msra filler (variance_norm FAN_IN)
                layer.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
            elif init == "N(0,0.01)":
                layer.weight.normal_(0.0, 0.01, generator=generator)
            else:
                raise ValueError(init)
            layer.bias.zero_()
    return 0


# -------------------------------------------------------------------------- training


_PARENT_PID: int | None = None


def _worker_setup(parent_pid: int | None = None) -> None:
    global _PARENT_PID
    _PARENT_PID = parent_pid
    torch.set_num_threads(1)  # many small runs: one thread per process beats two per run


def _stop_if_orphaned() -> None:
    """A worker whose parent was killed stops at the next epoch instead of running on."""
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        raise SystemExit(1)


def train_one(init: str, activation: str, seed: int, config: Config) -> RunResult:
    """Initialise and train one net; test accuracy after every epoch."""
    started, cpu_started = time.perf_counter(), time.process_time()
    x_train, y_train, x_test, y_test = load_data()
    data_order = torch.Generator().manual_seed(seed)
    model = thin_fitnet4(activation, config.width_divisor)
    lsuv_batch = x_train[torch.randperm(len(x_train), generator=data_order)[: config.lsuv_batch]]
    result = RunResult(init, activation, seed)
    result.lsuv_unconverged = initialise(model, init, seed, lsuv_batch)

    optimiser = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, foreach=True)
    milestones = sorted({max(1, round(config.epochs * f)) for f in (0.6, 0.8)})
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=milestones, gamma=0.1)
    result.test_accuracy.append(_accuracy(model, x_test, y_test))
    for _ in range(config.epochs):
        _stop_if_orphaned()
        model.train()
        order = torch.randperm(len(x_train), generator=data_order)
        losses = []
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            optimiser.step()
            losses.append(loss.item())
        schedule.step()
        result.train_loss.append(statistics.fmean(losses))
        result.test_accuracy.append(_accuracy(model, x_test, y_test))
        if not math.isfinite(result.train_loss[-1]):
            break  # diverged: no point in further epochs
    result.converged = math.isfinite(result.train_loss[-1]) and result.final_accuracy > NOT_CONVERGED_ACCURACY
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_started
    return result


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def run_all(config: Config, jobs: int, progress=print) -> list[RunResult]:
    tasks = [(init, act, seed) for seed in config.seeds for act in config.activations for init in config.inits]
    results: list[RunResult] = []
    if jobs <= 1:
        _worker_setup()
        for task in tasks:
            results.append(train_one(*task, config))
            _report_progress(results[-1], len(results), len(tasks), progress)
        return results
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_worker_setup,
                               initargs=(os.getpid(),))
    try:
        futures = [pool.submit(train_one, *task, config) for task in tasks]
        for future in futures:
            results.append(future.result())
            _report_progress(results[-1], len(results), len(tasks), progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _report_progress(r: RunResult, done: int, total: int, progress) -> None:
    state = f"{100 * r.final_accuracy:.1f}%" if r.converged else "n/c"
    progress(f"  [{done}/{total}] {r.init:<9} {r.activation:<7} seed {r.seed}: {state} ({r.seconds:.0f} s)")


# --------------------------------------------------------------------------- reports


def cell_text(runs: list[RunResult]) -> str:
    """mean +- std of the final test accuracy (%) over converged seeds; n/c if none converged."""
    good = [100 * r.final_accuracy for r in runs if r.converged]
    if not good:
        return "n/c"
    text = f"{statistics.fmean(good):.1f} ± {statistics.stdev(good) if len(good) > 1 else 0.0:.1f}"
    failed = len(runs) - len(good)
    return text + (f" ({failed}/{len(runs)} n/c)" if failed else "")


def by_cell(results: list[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    cells: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        cells.setdefault((r.init, r.activation), []).append(r)
    return cells


def table3_markdown(results: list[RunResult], inits=INITS, activations=ACTIVATIONS) -> str:
    cells = by_cell(results)
    rows = [[init] + [cell_text(cells.get((init, act), [])) for act in activations] for init in inits]
    return markdown_table(["init"] + list(activations), rows)


def paper_markdown() -> str:
    rows = [[init] + [("n/c" if PAPER_TABLE3[init][a] is None else f"{PAPER_TABLE3[init][a]:.2f}") for a in ACTIVATIONS]
            for init in PAPER_TABLE3]
    return markdown_table(["init"] + list(ACTIVATIONS), rows)


def comparison_lines(results: list[RunResult], inits=INITS, activations=ACTIVATIONS) -> list[str]:
    """Per activation: which init wins here and in the paper, and LSUV against OrthoNorm."""
    cells = by_cell(results)

    def mean_acc(init: str, act: str) -> float | None:
        good = [r.final_accuracy for r in cells.get((init, act), []) if r.converged]
        return 100 * statistics.fmean(good) if good else None

    def shown(value: float | None) -> str:
        return "n/c" if value is None else f"{value:.1f}"

    lines = []
    for act in activations:
        ours = {i: mean_acc(i, act) for i in inits}
        trained = {i: v for i, v in ours.items() if v is not None}
        paper = {i: v for i, v in ((i, PAPER_TABLE3[i][act]) for i in PAPER_TABLE3 if i in inits) if v is not None}
        best_here = max(trained, key=trained.get) if trained else "none (all n/c)"
        best_paper = max(paper, key=paper.get) if paper else "none (all n/c)"
        line = f"- {act}: best here {best_here}, best in the paper {best_paper}"
        if "LSUV" in ours and "OrthoNorm" in ours:
            line += f"; LSUV {shown(ours['LSUV'])} vs OrthoNorm {shown(ours['OrthoNorm'])}"
        lines.append(line)
    return lines


# Overlapping curves (several inits stuck at chance) stay visible through different dashes.
LINE_STYLES = {"LSUV": dict(linewidth=2.2), "OrthoNorm": dict(linestyle="--"), "Xavier": dict(linestyle="-."),
               "MSRA": dict(linestyle=":"), "N(0,0.01)": dict(linestyle=(0, (1, 3)), alpha=0.8)}


def plot_curves(results: list[RunResult], path: Path, activations=("ReLU", "tanh")) -> None:
    """Figure 1 analogue: mean test accuracy per epoch, one line per init, one panel per activation.

    Activations that were not run are left out (the first one run is drawn if none is left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cells = by_cell(results)
    ran = [a for a in ACTIVATIONS if any(r.activation == a for r in results)]
    activations = [a for a in activations if a in ran] or ran[:1]
    fig, axes = plt.subplots(1, len(activations), figsize=(5.5 * len(activations), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, act in zip(axes, activations):
        for init in INITS:
            curves = [r.test_accuracy for r in cells.get((init, act), [])]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            mean = [100 * statistics.fmean(c[e] for c in curves) for e in range(length)]
            ax.plot(range(length), mean, marker="o", markersize=3, label=init, **LINE_STYLES[init])
        seeds = len({r.seed for r in results})
        ax.set_title(f"thin FitNet-4, {act}, digits (mean of {seeds} seed{'s' if seeds > 1 else ''})")
        ax.set_xlabel("epoch (0: right after init)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ main


def _names(allowed: tuple[str, ...]):
    """argparse type: a comma list of names from ``allowed`` (case-insensitive), kept in its order."""
    def parse(text: str) -> tuple[str, ...]:
        rest, wanted = f",{text.lower()},", set()
        for name in sorted(allowed, key=len, reverse=True):  # "N(0,0.01)" holds a comma; VLReLU holds ReLU
            token = f",{name.lower()},"
            while token in rest:
                wanted.add(name)
                rest = rest.replace(token, ",", 1)
        if rest.strip(", ") or not wanted:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return tuple(a for a in allowed if a in wanted)

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch: CI smoke test")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 15, quick 1)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, quick 1)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel runs (1 thread each)")
    parser.add_argument("--plot", type=Path, default=None, help="where to write the PNG of the training curves")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's curves as JSON")
    parser.add_argument("--lr", type=float, default=0.01, help="base learning rate (the paper's: 0.01)")
    parser.add_argument("--clip-grad-norm", type=float, default=None, help="clip each step's gradient norm")
    parser.add_argument("--inits", type=_names(INITS), default=INITS, help="comma list, default all: " + ",".join(INITS))
    parser.add_argument("--activations", type=_names(ACTIVATIONS), default=ACTIVATIONS,
                        help="comma list, default all: " + ",".join(ACTIVATIONS))
    args = parser.parse_args(argv)

    config = Config(epochs=args.epochs or (1 if args.quick else 15),
                    seeds=tuple(range(args.seeds or (1 if args.quick else 3))), lr=args.lr,
                    clip_grad_norm=args.clip_grad_norm, inits=args.inits, activations=args.activations)
    # Only the full default run replaces the figure kept in the repository.
    reference_run = config == Config(epochs=15, seeds=(0, 1, 2))
    plot_path = args.plot or (Path(__file__).resolve().parent / "paper_figure1.png" if reference_run
                              else Path(tempfile.gettempdir()) / "lsuv_paper_figure1.png")
    started = time.perf_counter()
    print(f"Machine: {machine_summary()}; {args.jobs} parallel run(s), 1 thread each" + ("; --quick" if args.quick else ""))
    clip = f", gradient norm clipped at {config.clip_grad_norm}" if config.clip_grad_norm else ""
    print(f"Setup: digits 8x8 (sklearn), thin FitNet-4 (widths / {config.width_divisor}, 17 conv + 2 fc), "
          f"SGD momentum {config.momentum}, lr {config.lr}, wd {config.weight_decay}, batch {config.batch_size}, "
          f"{config.epochs} epochs, seeds {list(config.seeds)}{clip}", flush=True)

    results = run_all(config, args.jobs, progress=lambda line: print(line, file=sys.stderr, flush=True))

    print("\n### Test accuracy (%), mean ± std over seeds (n/c: no better than twice chance)\n")
    print(table3_markdown(results, config.inits, config.activations))
    print("\n### The paper's Table 3 (CIFAR-10, full FitNet-4), for comparison\n")
    print(paper_markdown())
    print("\n### Here vs the paper\n")
    print("\n".join(comparison_lines(results, config.inits, config.activations)))
    unconverged_lsuv = sum(r.lsuv_unconverged for r in results)
    if unconverged_lsuv:
        print(f"\nNote: lsuv_init left {unconverged_lsuv} layer(s) outside tol across all LSUV runs.")
    plot_curves(results, plot_path)
    print(f"\nTraining curves: {plot_path}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
        print(f"Raw results: {args.json}")
    cpu = sum(r.cpu_seconds for r in results)
    print(f"Total time: {time.perf_counter() - started:.0f} s wall; the runs' own CPU time {cpu:.0f} s "
          f"(about {cpu / max(1, args.jobs):.0f} s on {args.jobs} idle core(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
