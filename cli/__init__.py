"""The flag table of `main.py`, one module per group of flags (`add_flags(parser)`), in `--help` order.

A new component's flags go into a new module here, listed in `FLAG_GROUPS`; its settings dataclass (named
by the same flags) lives with the component, and `config.Settings` holds it.
"""

from cli import activations, cells, distill, model, observability, optim, runtime, speed, tfds

FLAG_GROUPS = (model, tfds, cells, optim, distill, runtime, speed, observability, activations)
