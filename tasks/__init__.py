"""Tasks turn a batch into a loss (train) and into metrics (eval); the engine loops, tasks compute.

Protocol every task follows (the engine calls nothing else):
- `train_loss(model, batch) -> (loss, extra)`: a scalar device loss and a dict of device scalars to log; no host reads.
- `eval_outputs(model, batch) -> dict[str, Tensor]`: fixed-shape device tensors for one eval batch; padding rows (`_mask` False) must not count.
- `make_eval_accumulator()`: an object with `add(outputs, batch)` and `result() -> dict[str, float]`.
"""
