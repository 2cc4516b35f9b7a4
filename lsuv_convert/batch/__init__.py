"""The data batch a model is initialized on: arrays, images, or a synthetic draw, typed the way the
model's declared inputs (:class:`~lsuv_convert.formats.model_graph.InputSpec`) say.

Lives here: ``load`` (``.npy`` / ``.npz`` / image folders / synthetic batches, value checks).

May import: the base modules and ``formats.model_graph`` (the input declarations). Never a plug-in
or the command.
"""
