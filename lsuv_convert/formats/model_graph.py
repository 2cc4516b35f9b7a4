"""ModelGraph: the one internal representation every format loads into and saves from.

A format turns its file into a torch module that computes the model (normally a
``torch.fx.GraphModule``) plus the ordered table of *target layers* (conv / deconv / linear).
Each target knows the submodule that holds its weight in ``module`` and an opaque
``binding`` that tells the format where the weight lives in the source file, so ``save``
writes values back without re-deriving anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TargetLayer:
    """One layer LSUV initializes."""

    name: str  # the layer's name in the source file (ONNX node, Caffe layer, TorchScript attribute path)
    op: str  # the source op type ("Conv", "Gemm", "Convolution", "aten::linear", ...)
    module_path: str  # qualified name of the submodule of ModelGraph.module holding .weight/.bias
    binding: Any = None  # format-private: where weight/bias live in the source file


@dataclass
class InputSpec:
    """A model input as the source file declares it; ``shape`` entries may be None (dynamic)."""

    name: str
    shape: tuple[int | None, ...] | None = None
    dtype: str = "float32"  # numpy dtype name the model takes ("int64" token ids, "bool" masks, ...)
    high: int | None = None  # integer inputs: exclusive upper bound of valid values (e.g. vocabulary size)
    # Axes whose declared size is only a default: a batch of another size replaces it (Caffe
    # reshapes its input blobs to the data, as OpenCV does); ``shape`` still gives the default.
    default_axes: tuple[int, ...] = ()
    # An input the model runs without (a Hugging Face model's attention_mask, token_type_ids): fed
    # when the data holds it. Optional inputs come after the required ones; a batch feeds a prefix.
    optional: bool = False


def required_count(specs: list[InputSpec]) -> int:
    """How many leading inputs a batch must feed: up to the last one that is not optional."""
    return max((i + 1 for i, s in enumerate(specs) if not s.optional), default=0)


@dataclass
class ModelGraph:
    """A loaded model: torch module + target layers + what the format needs to save it back."""

    module: Any  # torch.nn.Module, usually torch.fx.GraphModule
    targets: list[TargetLayer]
    inputs: list[InputSpec]
    format: str
    source: Path
    state: Any = None  # format-private (onnx ModelProto, Caffe NetParameter, ScriptModule, ...)
    notes: list[str] = field(default_factory=list)  # things the log should tell the user
    engine_path: str = "fx"  # how the engine should walk the module ("fx" or "hooks")
    checked: bool = False  # set by ModelFormat.prepare once the format's checks passed; save() needs it
    # The batch as the module takes it: what prepare() was given, or what the plug-in typed it to
    # (token ids the data path delivered as floats, now int64). prepare() fills it for every format.
    run_inputs: list | None = None

    def target_by_path(self) -> dict[str, TargetLayer]:
        return {t.module_path: t for t in self.targets}
