"""Weights & Biases as a `utils.logging.MetricLogger` backend (`--wandb`, off by default; `--wandb_mode offline` needs no network).

A run keeps one W&B run id for its whole life: the id is written to `output_dir/wandb_run.json` when the run starts, and a
`--resume` run reuses it with `resume="allow"` (W&B's advice for a known id). W&B drops a step lower than one it already has
("Tried to log to step X that is less than the current step Y"), so every record carries the training step as `trainer/step`
(`define_metric("*", step_metric="trainer/step")`), all scalars of one step go out as one `log` call, and `wandb_run.json` also
holds the last step sent: a resumed run that restarts from an older checkpoint skips the steps the earlier run already sent,
so no step is logged twice. An offline run writes `wandb/offline-run-*` next to the checkpoints; `wandb sync` uploads it.
"""

import json
import logging
import os
import uuid

from utils import fs

log = logging.getLogger(__name__)

STATE_FNAME = "wandb_run.json"
STEP_KEY = "trainer/step"


def load_state(output_dpath: str) -> dict:
    fpath = fs.join(output_dpath, STATE_FNAME)
    if not fs.exists(fpath):
        return {}
    with fs.open_file(fpath, "r") as fd:
        return json.load(fd)


class WandbBackend:
    """One W&B run per training run, resumed under the same id (see the module doc)."""

    def __init__(self, output_dpath: str, project: str | None, entity: str | None, name: str | None, mode: str, config: dict, resume: bool):
        try:
            import wandb
        except ImportError as e:
            raise ValueError("--wandb needs the wandb package: pip install -r requirements.txt (or pass --no-wandb)") from e
        self.output_dpath = output_dpath
        state = load_state(output_dpath) if resume else {}
        self.run_id = state.get("id") or uuid.uuid4().hex[:8]
        self.sent_before = int(state.get("last_step", -1))  # steps up to here were sent by an earlier process of this run
        self.last_step = self.sent_before
        local_dpath = output_dpath if not fs.is_remote(output_dpath) else os.path.abspath("wandb_local")
        os.makedirs(local_dpath, exist_ok=True)
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            id=self.run_id,
            resume="allow",
            mode=mode,
            dir=local_dpath,
            config=config,
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)
        self.pending_step: int | None = None
        self.pending: dict[str, float] = {}
        self.n_skipped = 0
        self._save_state()
        log.info("wandb: run %s (%s, %s)%s", self.run_id, mode, self.run.dir, f", continuing after step {self.sent_before}" if self.sent_before >= 0 else "")

    def _save_state(self) -> None:
        fs.write_text_atomic(fs.join(self.output_dpath, STATE_FNAME), json.dumps({"id": self.run_id, "last_step": self.last_step}) + "\n")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if step <= self.sent_before:
            self.n_skipped += 1
            return
        if self.pending_step is not None and step != self.pending_step:
            self.flush()
        self.pending_step = step
        self.pending.update(scalars)

    def flush(self) -> None:
        if self.pending_step is None:
            return
        self.run.log({STEP_KEY: self.pending_step, **self.pending})
        self.last_step = max(self.last_step, self.pending_step)
        self.pending_step, self.pending = None, {}
        self._save_state()

    def end_epoch(self, epoch: int, step: int) -> None:
        self.flush()

    def close(self) -> None:
        self.flush()
        if self.n_skipped:
            log.info("wandb: %d record(s) at steps up to %d were skipped: the earlier process of this run had sent them", self.n_skipped, self.sent_before)
        self.run.finish()
        import wandb

        wandb.teardown()  # the wandb-core service process ends with the run, not at interpreter exit
