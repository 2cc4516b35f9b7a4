"""Peak memory and wall of the CLI on Llama-style Hugging Face folders, streamed (the default)
and loaded whole (``--no-stream``), against model size.

Each model is a folder written by this script (``config.json`` + ``model.safetensors``, float32,
random N(0, 0.02) tensors, made in a child process so that making it costs this process
nothing) and converted by the console script in a child process; the peak resident set size of
that child comes from ``wait4``'s rusage. "Extra" is that peak minus the peak of a process that
only imports torch, transformers and lsuv_convert (issue 25's baseline), and "extra / model" its
ratio to the model's bytes.

    python benchmarks/streaming_memory.py                      # 0.3, 1 and 3 GB
    python benchmarks/streaming_memory.py --sizes small,llama  # some of them
    python benchmarks/streaming_memory.py --keep /tmp/models   # reuse / keep the folders
    python benchmarks/streaming_memory.py --sizes llama --modes=--stream --batch 2,128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, machine_summary

# name: (hidden, layers, intermediate, heads); vocabulary 32000, output layer not tied
SIZES = {
    "small": (1024, 1, 2816, 16),  # 0.31 GB
    "llama": (1024, 16, 2816, 16),  # issue 25's model: 271 M parameters, 1.08 GB
    "large": (2048, 12, 5632, 16),  # 3.0 GB
}
VOCAB = 32000

_MAKE = r'''
import sys, torch, transformers
from safetensors.torch import save_file
from accelerate import init_empty_weights
hidden, layers, inter, heads, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
config = transformers.LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                                  num_attention_heads=heads, num_key_value_heads=heads, vocab_size=32000,
                                  tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
with init_empty_weights():
    model = transformers.LlamaForCausalLM(config)
gen = torch.Generator().manual_seed(0)
tensors = {k: (torch.ones(v.shape) if "norm" in k else torch.randn(v.shape, generator=gen) * 0.02)
           for k, v in model.state_dict().items()}
config.save_pretrained(out)
save_file(tensors, out + "/model.safetensors", metadata={"format": "pt"})
'''

_BASELINE = "import torch, transformers, lsuv_convert"


def peak_rss(cmd: list[str], env: dict) -> tuple[int, float, int, str]:
    """(peak RSS in bytes, wall seconds, exit code, stderr tail) of ``cmd`` run as a child."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss * 1024, time.perf_counter() - start, proc.returncode, err[-2000:]


def make_model(name: str, where: Path) -> Path:
    folder = where / name
    if not (folder / "model.safetensors").is_file():
        hidden, layers, inter, heads = SIZES[name]
        subprocess.run([sys.executable, "-c", _MAKE, str(hidden), str(layers), str(inter), str(heads), str(folder)],
                       check=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--keep", type=Path, help="folder for the generated models (kept; reused when present)")
    parser.add_argument("--batch", default="8,128", help="token ids per run: ROWS,TOKENS")
    parser.add_argument("--modes", default="--stream,--no-stream", help="CLI modes to run, comma-separated")
    args = parser.parse_args(argv)
    import numpy as np

    work = args.keep or Path(tempfile.mkdtemp(prefix="lsuv-stream-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    rows, tokens = (int(x) for x in args.batch.split(","))
    ids = work / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, VOCAB, (rows, tokens)).astype(np.int64))
    cli = shutil.which("lsuv-convert") or "lsuv-convert"
    print(f"Machine: {machine_summary()}\n")
    base, _, code, err = peak_rss([sys.executable, "-c", _BASELINE], env)
    assert code == 0, err
    print(f"Baseline (a process that only runs `{_BASELINE}`): peak RSS {base / 1e9:.2f} GB\n")
    print("| model | parameters | bytes (GB) | mode | peak RSS (GB) | extra (GB) | extra / model | wall (s) "
          "| pre-init (s) | lsuv (s) | load (s) | save (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for name in args.sizes.split(","):
            folder = make_model(name, work)
            size = (folder / "model.safetensors").stat().st_size
            for mode in args.modes.split(","):
                out, log = work / f"{name}{mode}.lsuv", work / f"{name}{mode}.json"
                rss, wall, code, err = peak_rss([cli, str(folder), "--data", str(ids), "-o", str(out), "--log", str(log),
                                                 "--device", "cpu", "--force", "-q", mode], env)
                if code != 0:
                    print(f"| {name} | | | {mode} | failed: {err.strip().splitlines()[-1] if err.strip() else code} |")
                    continue
                seconds = json.loads(log.read_text())["seconds"]
                extra = rss - base
                print(f"| {name} | {size / 4 / 1e6:.0f} M | {size / 1e9:.2f} | {mode} | {rss / 1e9:.2f} | {extra / 1e9:.2f} "
                      f"| {extra / size:.2f}x | {wall:.1f} | {seconds.get('pre_init', 0):.1f} | {seconds.get('lsuv', 0):.1f} "
                      f"| {seconds.get('load', 0):.1f} | {seconds.get('save', 0):.1f} |", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
