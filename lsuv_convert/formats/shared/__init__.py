"""What several format plug-ins use; plug-ins never import each other, so it lives here.

Lives here: ``eager_graph`` (a plain ``nn.Module`` as the engine's graph: state_dict, Hugging Face,
torch.export), ``layer_calls`` (modules that stand for a graph's conv / linear calls: TorchScript,
torch.export), ``safetensors_io`` (safetensors in and out, with provenance; streamed reading and
writing), ``protobuf_wire`` (varints and field heads for the streamed ONNX and Caffe writers),
``torch_save`` (``torch.save`` files read with the weights-only unpickler only: state_dict
checkpoints and Hugging Face ``.bin`` shards), and the trust boundary: ``archive_guard`` (every
archive member and pickle judged before torch reads it), ``operator_policy`` (which operators of
torch's registry a file may call), ``no_network`` (no socket or host lookup while a model is read and
built), ``stored_tensors`` (the one rule for tensors that share storage, are expanded or integer).

May import: the base modules, the ``lsuv`` room and the contract (``formats.contract``,
``formats.model_graph``). Never a plug-in, the batch reader or the command.
"""
