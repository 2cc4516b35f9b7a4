"""What several format plug-ins use; plug-ins never import each other, so it lives here.

Lives here: ``eager_graph`` (a plain ``nn.Module`` as the engine's graph: state_dict, Hugging Face,
torch.export), ``layer_calls`` (modules that stand for a graph's conv / linear calls: TorchScript,
torch.export), ``safetensors_io`` (safetensors in and out, with provenance), ``torch_save``
(``torch.save`` files read with the weights-only unpickler only: state_dict checkpoints and Hugging
Face ``.bin`` shards).

May import: the base modules, the ``lsuv`` room and the contract (``formats.contract``,
``formats.model_graph``). Never a plug-in, the batch reader or the command.
"""
