"""The data batch a model is initialized on: arrays, images, or a synthetic draw, typed the way the
model's declared inputs (:class:`~lsuv_convert.formats.model_graph.InputSpec`) say.

Lives here: ``load`` (the entry point: a batch from the data options, or synthetic; typing and value
checks), ``sample`` (the data options, what ``--data`` names: files, folders, globs, one kind),
``arrays`` (``.npy`` / ``.npz`` parts joined along the batch axis), ``text``, ``audio`` and ``images``
(each kind prepared for the model), ``processors`` (a model folder's own tokenizer, feature extractor
and image processor, through transformers, offline).

May import: the base modules and ``formats.model_graph`` (the input declarations). Never a plug-in
or the command. Heavy libraries (transformers, soundfile, scipy, PIL) are imported lazily.
"""
