"""The command line: ``moac check|compile|graph|fmt|plan|run|eval|...``.

Takes argv; gives exit codes and what each command prints (:mod:`.main` the commands that
need no model, :mod:`.run` those that call models, :mod:`.common` their shared flags). The
top of the tree: it may import every stage, lazily, and nothing imports it.
"""
