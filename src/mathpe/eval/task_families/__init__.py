"""The built-in task families, one module each; importing this package registers their tasks.

A new dataset is a new module here: a function decorated with ``mathpe.eval.tasks.register_task`` that
returns a ``Task``, and its import below.
"""

from mathpe.eval.task_families import arithmetic, gsm8k, math  # noqa: F401  (registers the tasks)
