"""Tasks turn a batch into a loss (train) and into metrics (eval); the engine loops, tasks compute.

The interface is `tasks.base.Task` (with its `EvalAccumulator`), a `typing.Protocol`: classification,
distillation and cell sets implement it, and `tasks.base.reduce_eval` is the one place where eval
results are summed and gathered over processes for all of them.
"""
