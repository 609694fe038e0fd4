"""Run by tests/test_parallel.py under torchrun (`-m tests.ddp_worker OUT`, from the repository root): a few DDP (gloo) steps on fixed global batches.

Every process takes its slice of the same global batch, so the result must equal one process that
sees the whole batch. Rank 0 writes per-step global losses and the final weights to argv[1].
"""

import sys

import torch

import engine
import models
from optim_factory import make_optimizer
from tasks.classification import ClassificationTask
from utils.device import make_runtime

GLOBAL_BATCH, N_STEPS = 16, 4


def main(out_fpath: str) -> None:
    runtime = make_runtime("cpu", parallel="auto")
    torch.manual_seed(0)
    model = models.create_model("tiny_cnn", num_classes=10, norm="group").to(runtime.device)
    model = runtime.wrap_model(model)
    optimizer = make_optimizer(runtime.unwrap(model), "adamw", 1e-2, 0.05)
    task = ClassificationTask(runtime)
    gen = torch.Generator().manual_seed(1)
    per = GLOBAL_BATCH // runtime.world_size
    losses, nonfinite = [], torch.zeros(())
    for _ in range(N_STEPS):
        image, label = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=gen), torch.randint(0, 10, (GLOBAL_BATCH,), generator=gen)
        sl = slice(runtime.rank * per, (runtime.rank + 1) * per)
        out, nonfinite = engine.train_step(model, task, optimizer, runtime, 1.0, {"image": image[sl], "label": label[sl]}, nonfinite)
        losses.append(float(runtime.reduce_sum(out["loss"]).item()) / runtime.world_size)
    if runtime.is_main:
        torch.save({"losses": losses, "model": runtime.unwrap(model).state_dict(), "world_size": runtime.world_size}, out_fpath)
    runtime.close()


if __name__ == "__main__":
    main(sys.argv[1])
