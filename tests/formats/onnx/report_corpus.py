"""Pass / refuse counts of lsuv-convert over ONNX files written by producers other than torch's
current exporter. Not a test (it takes minutes): run it from the repository root with

    PYTHONPATH=$PWD:tests python tests/formats/onnx/report_corpus.py [WORK_FOLDER]

Corpora: the onnx package's backend test models (pytorch-converted / pytorch-operator: PyTorch
0.3-era IR 3 files; light: Caffe2-era model structures whose weights are ConstantOfShape fills),
hand-built legacy / paddle / chained-weight / If+LSTM / quantized files, nodes that onnx2torch
converts but that fail or disagree when run and a tied LM head, torch exports with
detection and segmentation post-processing, and six transformers built from configs, exported
by both of torch's exporters. A file is "ok" when the CLI initializes it (exit 0, which includes
the fidelity gate against onnxruntime and the check of the written file), else "refused" with
the one-line reason.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from conftest import invoke
from onnx_helpers import (LEGACY_BUILDERS, export_postprocessing, export_transformer, quantized_conv, run_time_cases,
                          transformer_models)


def _run(folder: Path) -> list[dict]:
    proc = invoke(folder, "--output-dir", folder.parent / f"{folder.name}_out", "--json", "-q")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def main(work: Path) -> None:
    backend = Path(onnx.__file__).parent / "backend" / "test" / "data"
    corpora: dict[str, Path] = {}
    notes: list[str] = []

    folder = work / "onnx_backend"
    folder.mkdir()
    for path in sorted(backend.glob("pytorch-*/*/model.onnx")):
        shutil.copy(path, folder / f"{path.parent.parent.name}_{path.parent.name}.onnx")
    for path in sorted(backend.glob("light/*.onnx")):
        shutil.copy(path, folder / path.name)
    corpora["onnx backend test data"] = folder

    folder = work / "hand_built"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, build in list(LEGACY_BUILDERS.items()) + [("quantized_qdq", quantized_conv)]:
        model = build()
        onnx.save(model, str(folder / f"{name}.onnx"))
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        np.save(folder / f"{name}.npy", rng.standard_normal(shape).astype(np.float32))
    corpora["hand-built other producers"] = folder

    folder = work / "run_time"
    folder.mkdir()
    for name, (model, batch) in run_time_cases().items():
        onnx.save(model, str(folder / f"{name}.onnx"))
        np.save(folder / f"{name}.npy", batch)
    corpora["hand-built nodes wrong only when run, tied head"] = folder

    folder = work / "postprocessing"
    folder.mkdir()
    export_postprocessing(folder)
    corpora["torch exports with post-processing"] = folder

    folder = work / "transformers"
    folder.mkdir()
    for name in transformer_models():
        for exporter in ("ts17", "dy18"):
            try:
                export_transformer(name, exporter, folder)
            except Exception as exc:  # noqa: BLE001 - record which model torch can't export, and why
                notes.append(f"{name} {exporter}: torch can't export it: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    corpora["transformers (both exporters)"] = folder

    total = Counter()
    for title, folder in corpora.items():
        lines = _run(folder)
        counts = Counter("ok" if e["status"] == "ok" else "refused" for e in lines)
        total.update(counts)
        print(f"\n== {title}: {counts['ok']} initialized, {counts['refused']} refused (of {len(lines)})")
        reasons = Counter()
        for e in lines:
            if e["status"] != "ok":
                reason = e["error"].split(": ", 1)[-1]
                reasons[reason if "nothing to initialize" not in reason else "nothing to initialize: " + reason.split(":")[0]] += 1
                if "nothing to initialize" not in reason:
                    print(f"   refused {Path(e['model']).name}: {reason[:220]}")
        for reason, n in reasons.most_common():
            if "nothing to initialize" in reason:
                print(f"   refused x{n}: {reason[:160]}")
    for note in notes:
        print("   note:", note)
    print(f"\nall corpora: {total['ok']} initialized, {total['refused']} refused")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="lsuv-onnx-corpus-"))
    target.mkdir(parents=True, exist_ok=True)
    main(target)
