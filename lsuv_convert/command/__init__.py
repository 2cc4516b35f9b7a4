"""The command line: ``lsuv-convert`` and its subcommands over one model or a whole zoo.

Lives here: ``cli`` (options, exit codes), ``run`` (a command over many models: outputs, records,
progress, summary), ``convert`` (one model through load -> batch -> prepare -> LSUV -> save, with
the log), ``discovery`` (which files a command line names), ``records`` (up-to-date checks),
``console`` (what stderr shows), ``plot``, ``streams`` (model code never writes on our stdout),
``shards`` (`--shard I/N`: a run's models split deterministically for job arrays).

May import every other room; no other room imports this one.
"""
