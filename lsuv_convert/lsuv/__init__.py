"""The method itself: orthonormal pre-init, the LSUV engine, and the account of every parameter.

Lives here: ``api`` (``lsuv_init`` on an ``nn.Module``), ``engine`` (the layer-sequential pass),
``orthonormal`` (the pre-init), ``attention`` / ``conv1d`` (layers that hold several maps or a
transposed layout), ``parametrized`` (weights computed from stored tensors: weight norm,
``torch.nn.utils.parametrize``), ``targets`` (the one place that decides what a target layer is),
``streaming`` (the pass over a module built without its weights: each module's tensors put in place
right before it runs, written and freed after), ``account`` (what happened to each tensor),
``statistics`` (variance as another runtime computes it, finite checks), ``settings`` (the knobs and
their defaults).

May import: torch and the base modules (``errors``, ``timings``, ...). Never a format, the batch
reader or the command: this room knows no file.
"""
