"""Training's batches: all epochs from one tf.data pipeline, so that no epoch starts with an empty pipeline.

Built once per epoch (`input_pipeline.make_train_dataset`), every epoch boundary stalls training: the Python side traces the pp function and
builds the graph (about 0.1 s), tf.data optimizes it and creates the iterator, and the shuffle buffer and the parallel map must fill before the
first batch comes out, while the cores sit idle. On 768 JPEGs in batches of 128 (6 steps per epoch) that halved the images per second.

Here a dataset of epoch numbers is interleaved, cycle length 1, over a function that builds one epoch with the epoch number and the examples to
skip as tensors (`input_pipeline.make_epoch_batches`, traced once). Epoch e's batches are exactly `make_train_dataset(epoch=e)`'s, in order
(stateless shuffles and random ops keyed by the same seeds: tests/test_train_stream.py), and tf.data's parallel interleave starts the pipelines of
the next `epochs_ahead` epochs while the current one runs: their shuffle buffers fill and their first batches are made ahead.

Memory: every epoch started ahead holds its own shuffle buffer (up to --tfds_shuffle_buffer encoded examples: ImageNet's default 10,000 are
about 1.1 GB) and up to two batches. `epochs_ahead=0` keeps one epoch's pipeline alive at a time (the next one starts when it ends).

Raw cache: tf.data keeps a cache only once a pass has read it to its end, and a second reader started before that would read the records again.
So with `raw` the stream's first epoch runs alone and the later epochs' pipelines start after it: only the first boundary of a run is not
overlapped.

`TrainStream` is what the engine reads, one epoch at a time: asking for the position where the previous epoch left off continues the same
pipeline; any other position (a resume, an epoch cut short by --max_steps_per_epoch) builds a new one from there.
"""

from collections.abc import Callable, Iterator

from tensorflow.python.data.ops import interleave_op  # the parallel interleave with a settable number of inputs started ahead (TF pinned)

from big_vision import input_pipeline as ip
from utils.tf_import import tf

N_EPOCHS_MAX = 2**62  # "every epoch after the first": the stream is cut by its reader, not by tf.data


def make_train_stream(
    builder,
    split: str,
    pp_str: str,
    batch_size: int,
    *,
    start_epoch: int = 0,
    start_step: int = 0,
    epochs_ahead: int = 1,
    raw: tf.data.Dataset | None = None,
    prefetch: int = 2,
    private_threadpool_size: int = 0,
    deterministic: bool = True,
    **kwargs,
) -> tf.data.Dataset:
    """Every epoch's full batches from `start_epoch`, the first one from `start_step` on, as one dataset. `kwargs`: `make_epoch_batches`'s."""
    if epochs_ahead < 0:
        raise ValueError(f"--tfds_epochs_ahead {epochs_ahead}: give 0 (one epoch's pipeline at a time) or more epochs to prepare ahead")

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        n_skip = tf.where(epoch == start_epoch, tf.constant(start_step * batch_size, tf.int64), tf.constant(0, tf.int64))
        return ip.make_epoch_batches(builder, split, pp_str, batch_size, epoch, n_skip, raw=raw, **kwargs)

    first = start_epoch
    head = None
    if raw is not None:  # the first epoch alone, so that it reads the cache to its end before any other reader starts (module docstring)
        head = ip.make_epoch_batches(builder, split, pp_str, batch_size, start_epoch, start_step * batch_size, raw=raw, **kwargs)
        first += 1
    epochs = tf.data.Dataset.range(first, N_EPOCHS_MAX)
    # cycle 1, block 1, 1 call: one epoch after the other, in order; `prefetch_input_elements`: the epochs whose pipelines start ahead.
    ds = interleave_op._ParallelInterleaveDataset(
        epochs,
        tf.autograph.experimental.do_not_convert(epoch_batches),
        cycle_length=1,
        block_length=1,
        num_parallel_calls=1,
        buffer_output_elements=1,
        prefetch_input_elements=epochs_ahead,
        deterministic=True,
    )
    if head is not None:
        ds = head.concatenate(ds)
    return ds.with_options(ip._options(private_threadpool_size, deterministic)).prefetch(prefetch)


class TrainStream:
    """Epochs of torch train batches read from one `make_train_stream` pipeline while they are asked for in order (module docstring).

    `make_dataset(epoch, start_step)`: the stream from that position; `steps_per_epoch`: the full epoch's batches (the stream's own epochs,
    whatever the reader cuts off). `n_built`: the pipelines built so far (one for a run read in order)."""

    def __init__(
        self,
        make_dataset: Callable[[int, int], tf.data.Dataset],
        steps_per_epoch: int,
        source: str = "the TFDS dataset",
        shards: list[str] | None = None,
    ) -> None:
        self.make_dataset, self.steps_per_epoch, self.source, self.shards = make_dataset, steps_per_epoch, source, shards
        self.n_built = 0
        self._batches: Iterator[dict] | None = None
        self._position: tuple[int, int] | None = None  # (epoch, step) of the next batch the pipeline gives

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        """The batches of `epoch` from `start_step` to its end."""
        if not 0 <= start_step < self.steps_per_epoch:
            raise ValueError(f"start step {start_step} of epoch {epoch} is outside its {self.steps_per_epoch} steps")
        if self._position != (epoch, start_step):
            self._batches = ip.iterate_torch(self.make_dataset(epoch, start_step), source=self.source, shards=self.shards)
            self._position = (epoch, start_step)
            self.n_built += 1
        return self._take(self._batches, epoch, start_step)

    def _take(self, batches: Iterator[dict], epoch: int, start_step: int) -> Iterator[dict]:
        for step in range(start_step, self.steps_per_epoch):
            if batches is not self._batches or self._position != (epoch, step):
                raise RuntimeError(f"epoch {epoch} was read past step {step} by another reader of the same train stream; read one epoch at a time")
            batch = next(batches, None)
            if batch is None:
                raise RuntimeError(f"{self.source}: the train stream ended in epoch {epoch} at step {step} of {self.steps_per_epoch}")
            self._position = (epoch, step + 1) if step + 1 < self.steps_per_epoch else (epoch + 1, 0)
            yield batch
