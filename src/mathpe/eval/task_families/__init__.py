"""The built-in task families, one module each; importing this package registers their tasks.

A new dataset is a new module here: a function from ``TaskRequest`` to ``Task`` decorated with
``mathpe.eval.tasks.register_task``, and its import below.
"""

from mathpe.eval.task_families import arithmetic, gsm8k, math  # noqa: F401  (registers the tasks)
