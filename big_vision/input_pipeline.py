"""TFDS -> pp -> fixed-shape batches for this process, handed to torch without copies.

Train: each process reads a disjoint, equal-sized part of the split (`tfds.even_splits` with
drop_remainder), files are shuffled and examples shuffled with a seed derived from (seed, epoch),
then preprocessed and batched with drop_remainder, so every step has the same shape. Each epoch's
pipeline is built from its own seeds (`make_epoch_batches`): the order is a pure function of (seed,
epoch), which is what exact resume replays (skipping `start_step` batches before preprocessing is
ever run on them). Training chains the epochs in one pipeline (`big_vision.train_stream`). Random pp
ops (crops, flips, randaug) draw from stateless TF ops keyed by (seed, epoch, process, index of the
example in the epoch's order) (`big_vision.pp.utils.example_seed`), so an example's augmentation
does not depend on which thread of the parallel map runs it, nor on the examples skipped before it:
a resumed epoch gives bit-identical batches. This needs `deterministic=True` (the default), which
keeps the parallel map's output order.

Raw cache (`make_raw_cache`, `--tfds_cache_raw`): the encoded examples of this process's share are
read in one fixed order (the file order of epoch 0) into tf.data's in-memory cache on the first full
pass, and every epoch's dataset is built on top of that same cached dataset, so each record is read
from storage once per process. An epoch's order is then the shuffle buffer's (seeded by (seed,
epoch)) over that fixed order, as in big_vision, whose file order is also fixed by its first pass;
epoch 0 is the same as without the cache. tf.data keeps a cache only once its input has been read
to the end, so `iterate_torch(n_batches=...)` asks for the end right after the last full batch.

Examples carry big_vision's `tfds_id` (TFDS's record id, a string) and `_id` (an int32 hash of it)
for pp ops that key on the example (`choice_no_replacement`) whenever the pp string's outputs
depend on them (`reads_record_id` traces the pp function and walks its graph); otherwise records
are read without the id, which saves its cost. They reach torch only if the pp string names them
(`keep("image", "label", "_id")`).

Eval: every example is seen exactly once across processes. Each process reads its part
(`even_splits` without drop_remainder), and the stream is padded with `_mask=False` examples up to
the same number of full batches on every process (one shape, one compiled graph, and the same
number of collective calls everywhere). A `_mask` the pp string sets is kept (as bool): an example
it masks out stays out, and padding is always out.

Strings: train batches hold tensors only (string features are dropped: the compiled step, mixup and
the device transfer take tensors). Eval batches can keep them as lists of `str` (`strings=True`)
for accumulators that record examples by name; the engine moves only the tensors to the device.
"""

import difflib
import functools
import math
import os
import re
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
import torch

from big_vision.pp import builder as pp_builder
from big_vision.pp import utils as pp_utils
from utils.tf_import import tf

AUTOTUNE = -1

# tf.data hands out read-only numpy buffers; torch wraps them without a copy and never writes to them (the warning filter is in utils/process.py).


INTERNAL_KEYS = ("_id", "tfds_id")  # big_vision's names; added before pp, dropped after it unless the pp string names them
# The key of big_vision's `_id` hash (big_vision/datasets/tfds.py), so an example gets the same `_id` here as there.
_ID_HASH_KEY = [3714561454027272724, 8800639020734831960]


def get_example_id(tfds_id: tf.Tensor) -> tf.Tensor:
    """int32 `_id` of a `tfds_id` string: the low 32 bits of TF's keyed strong hash, as big_vision computes it."""
    h = tf.strings.to_hash_bucket_strong(tfds_id, 2**32 - 1, _ID_HASH_KEY)
    return tf.bitcast(tf.cast(h, tf.uint32), tf.int32)


def get_named_internal_keys(pp_str: str | None) -> tuple[str, ...]:
    """The internal keys the pp string names as string literals (`keep("image", "_id")`, `copy("tfds_id", "name")`): those reach torch."""
    return tuple(k for k in INTERNAL_KEYS if re.search(rf"""["']{k}["']""", pp_str or ""))


def _make_pp(pp_str: str, mask: bool = False) -> Callable[[dict], dict]:
    """The pp function for tf.data with the internal keys in and out; `mask`: every output has a scalar bool `_mask` (the pp string's, else True)."""
    pp = pp_builder.get_preprocess_fn(pp_str)
    drop = [k for k in INTERNAL_KEYS if k not in get_named_internal_keys(pp_str)]

    def run(example: dict) -> dict:
        example = dict(example)
        if "tfds_id" in example and "_id" not in example:
            example["_id"] = get_example_id(example["tfds_id"])
        out = pp(example)
        for k in drop:
            out.pop(k, None)
        if not mask:
            return out
        if "_mask" in out and out["_mask"].shape.rank != 0:
            raise ValueError(f"eval pp {pp_str!r} sets _mask with shape {out['_mask'].shape}; _mask must be one bool per example (a scalar)")
        out["_mask"] = tf.cast(out["_mask"], tf.bool) if "_mask" in out else tf.constant(True)
        return out

    return run


# Ops that give the same values on one example or on a batch of them (elementwise, broadcasting over the last axis), and the ops they may
# move past on their way to after the batching: those that do not touch their key.
BATCH_TAIL_OPS = ("value_range",)
KEY_OPS = ("keep", "onehot")


def _op_keys(name: str, args: tuple, kwargs: dict) -> tuple[set[str], set[str]]:
    """(keys read, keys written) of a value_range or onehot segment."""
    if name == "onehot":
        src = kwargs.get("key", args[1] if len(args) > 1 else "labels")
        return {src}, {kwargs.get("key_result") or (args[2] if len(args) > 2 and args[2] else src)}
    src, dst = (kwargs.get("key"),) * 2 if kwargs.get("key") else (kwargs.get("inkey", "image"), kwargs.get("outkey", "image"))
    return {src}, {dst}


def split_batch_tail(pp_str: str) -> tuple[str, str]:
    """(per-example head, batch tail): trailing `value_range` ops move after the batching when only `keep`/`onehot` ops that leave their keys
    alone follow them. The values are the same (elementwise float32 math); the batch is built from uint8 images, a quarter of the bytes, and the
    conversion runs once over the whole batch. "" tail: nothing moves."""
    segments = [seg.strip() for seg in pp_str.split("|") if seg.strip()]
    parsed = [pp_builder._parse_segment(seg) for seg in segments]
    tail, later = [], []  # `later`: the ops after the current one that stay per example
    for i in range(len(segments) - 1, -1, -1):
        name, args, kwargs = parsed[i]
        if name in BATCH_TAIL_OPS and not tail_blocked(later, *_op_keys(name, args, kwargs)):
            tail.insert(0, i)
        elif name in KEY_OPS:
            later.append(parsed[i])
        else:
            break
    return "|".join(seg for i, seg in enumerate(segments) if i not in tail), "|".join(segments[i] for i in tail)


def tail_blocked(later: list, reads: set[str], writes: set[str]) -> bool:
    """Whether an op reading `reads` and writing `writes` cannot move past the `later` ops: one drops its key or touches it."""
    for name, args, kwargs in later:
        if name == "keep" and not writes <= set(args):
            return True
        if name == "onehot" and (_op_keys(name, args, kwargs)[0] | _op_keys(name, args, kwargs)[1]) & (reads | writes):
            return True
    return False


def _make_seeded_pp(pp_str: str, epoch_seed: int | tf.Tensor, process_index: int) -> Callable[[tf.Tensor, dict], dict]:
    """The pp function over `(index, example)`: random ops draw from stateless streams keyed by (epoch_seed, process, index)."""
    pp = _make_pp(pp_str)
    base_t = tf.stack([tf.cast(epoch_seed, tf.int64), tf.constant(process_index, tf.int64)])

    # Ops are plain TF already, so AutoGraph conversion is skipped.
    @tf.autograph.experimental.do_not_convert
    def seeded_pp(index: tf.Tensor, example: dict) -> dict:
        with pp_utils.example_seed(tf.random.experimental.stateless_fold_in(base_t, index)):
            return pp(example)

    return seeded_pp


def _list_prepared(data_dpath: str) -> list[str]:
    """Datasets prepared under a TFDS data dir (`name` or `name/config`)."""
    found = []
    for name in sorted(tf.io.gfile.listdir(data_dpath)):
        name = name.rstrip("/")
        if name.startswith("downloads") or not tf.io.gfile.isdir(os.path.join(data_dpath, name)):
            continue
        found.append(name)
    return found


def make_builder(name: str, data_dpath: str | None) -> tfds.core.DatasetBuilder:
    """The TFDS builder for `name` in `data_dpath` (local or gs://), prepared already (no downloads)."""
    if data_dpath is not None and not tf.io.gfile.exists(data_dpath):
        raise FileNotFoundError(
            f"--tfds_data_dir {data_dpath!r} does not exist; point it at the directory that holds prepared TFDS datasets (e.g. gs://bucket/tensorflow_datasets)"
        )
    try:
        builder = tfds.builder(name, data_dir=data_dpath, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError:
        builder = None
    prepared = _list_prepared(data_dpath) if data_dpath else []
    if builder is None or not tf.io.gfile.exists(builder.data_dir):
        close = difflib.get_close_matches(name, prepared, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        where = f"in --tfds_data_dir {data_dpath!r}" if data_dpath else "in the default TFDS data dir"
        raise ValueError(f"TFDS dataset {name!r} is not prepared {where}; {hint}prepared there: {', '.join(prepared) or 'none'}")
    return builder


def get_split(builder: tfds.core.DatasetBuilder, split: str) -> str:
    """Validate a TFDS split string (`train`, `train[:90%]`, `validation+test`) against the builder."""
    try:
        n = builder.info.splits[split].num_examples
    except (KeyError, ValueError, AssertionError) as e:
        known = ", ".join(builder.info.splits.keys())
        raise ValueError(
            f"bad split {split!r} for TFDS dataset {builder.info.full_name}: {e}; splits are {known} (slices like 'train[:90%]' work too)"
        ) from None
    if n == 0:
        raise ValueError(f"split {split!r} of {builder.info.full_name} has no examples")
    return split


def _process_split(split: str, process_index: int, process_count: int, drop_remainder: bool) -> str:
    if process_count == 1:
        return split
    return tfds.even_splits(split, n=process_count, drop_remainder=drop_remainder)[process_index]


def get_num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
    return builder.info.splits[split].num_examples


def get_train_steps_per_epoch(builder: tfds.core.DatasetBuilder, split: str, batch_size: int, process_count: int) -> int:
    """Full batches per epoch on every process (each process reads n // process_count examples)."""
    per_process = get_num_examples(builder, split) // process_count
    steps = per_process // batch_size
    if steps == 0:
        raise ValueError(f"split {split!r} has {per_process} examples per process, fewer than one batch of {batch_size}; lower --batch_size")
    return steps


def _decoders(builder: tfds.core.DatasetBuilder, skip_decode: bool) -> dict | None:
    """Leave images encoded for the pp string (decode_jpeg_and_inception_crop decodes only the crop)."""
    return {"image": tfds.decode.SkipDecoding()} if skip_decode and "image" in builder.info.features else None


def _options(private_threadpool_size: int, deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    if private_threadpool_size > 0:
        options.threading.private_threadpool_size = private_threadpool_size
    options.autotune.enabled = True
    return options


def get_epoch_seed(seed: int, epoch: int | tf.Tensor) -> int | tf.Tensor:
    """The seed of epoch `epoch`'s file order, example order and random ops (an int64 tensor for a tensor epoch, the same value)."""
    return seed * 100_003 + epoch


def _read(builder: tfds.core.DatasetBuilder, split: str, shuffle_seed: int | tf.Tensor | None, skip_decode: bool, add_id: bool = True) -> tf.data.Dataset:
    """The encoded examples of `split`, with `tfds_id` when `add_id`; files shuffled with `shuffle_seed` (None: in order)."""
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, interleave_cycle_length=16, skip_prefetch=True, try_autocache=False, add_tfds_id=add_id)
    return builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None, read_config=read_config, decoders=_decoders(builder, skip_decode))


@functools.lru_cache(maxsize=64)
def reads_record_id(builder: tfds.core.DatasetBuilder, split: str, pp_str: str, skip_decode: bool) -> bool:
    """Whether the pp string's outputs depend on the record id (`tfds_id`, or the `_id` made from it): the pp function is traced on the split's
    example spec and its graph walked back from every output. Records are read without the id otherwise (it costs about 0.04 CPU ms each)."""
    with tf.init_scope():  # out of any graph being built (the train stream builds its epochs inside one)
        spec = _read(builder, split, None, skip_decode).element_spec
        pp, seen = _make_pp(pp_str), {}

        def traced(example: dict) -> dict:
            seen["id"] = example["tfds_id"]
            with pp_utils.example_seed(tf.constant([0, 0], tf.int64)):
                return pp(example)

        graph = tf.function(traced, autograph=False).get_concrete_function(spec).graph
    target = seen["id"].name
    stack, visited = [t.op for t in tf.nest.flatten(graph.structured_outputs) if isinstance(t, tf.Tensor)], set()
    while stack:
        op = stack.pop()
        if op.name in visited:
            continue
        visited.add(op.name)
        if any(t.name == target for t in op.inputs) or op.name == seen["id"].op.name:
            return True
        stack.extend([t.op for t in op.inputs] + list(op.control_inputs))
    return False


def make_raw_cache(
    builder: tfds.core.DatasetBuilder, split: str, *, seed: int = 0, process_index: int = 0, process_count: int = 1, skip_decode: bool = True
) -> tf.data.Dataset:
    """This process's encoded train examples in epoch 0's file order, kept in RAM by tf.data after the first full pass; give it to every epoch as `raw`."""
    ds = _read(builder, _process_split(split, process_index, process_count, True), get_epoch_seed(seed, 0), skip_decode)
    return ds.cache()


def make_train_dataset(
    builder: tfds.core.DatasetBuilder,
    split: str,
    pp_str: str,
    batch_size: int,
    *,
    epoch: int = 0,
    start_step: int = 0,
    prefetch: int = 2,
    private_threadpool_size: int = 0,
    deterministic: bool = True,
    **kwargs,
) -> tf.data.Dataset:
    """One epoch of full batches for this process, starting at `start_step` of that epoch. `kwargs`: `make_epoch_batches`'s (seed, process,
    shuffle buffer, `raw`, ...). Training reads every epoch from one pipeline instead (`big_vision.train_stream`), with the same batches."""
    ds = make_epoch_batches(builder, split, pp_str, batch_size, epoch, start_step * batch_size, **kwargs)
    return ds.with_options(_options(private_threadpool_size, deterministic)).prefetch(prefetch)


def make_epoch_batches(
    builder: tfds.core.DatasetBuilder,
    split: str,
    pp_str: str,
    batch_size: int,
    epoch: int | tf.Tensor,
    n_skip: int | tf.Tensor = 0,
    *,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle_buffer: int = 10_000,
    raw: tf.data.Dataset | None = None,
    skip_decode: bool = True,
    num_parallel_calls: int = AUTOTUNE,
    batch_tail: bool = True,
) -> tf.data.Dataset:
    """Epoch `epoch`'s full batches without its first `n_skip` examples (whole batches: resume), no options or prefetch; `epoch` and
    `n_skip` may be tensors (the stream traces this once for all epochs) and give the same batches as ints. `raw`: `make_raw_cache`'s
    dataset (the same for every epoch). `batch_tail`: run the pp string's trailing value_range over whole batches (`split_batch_tail`)."""
    epoch_seed = get_epoch_seed(seed, epoch)
    if raw is None:
        process_split = _process_split(split, process_index, process_count, True)
        raw = _read(builder, process_split, epoch_seed, skip_decode, add_id=reads_record_id(builder, process_split, pp_str, skip_decode))
    ds = raw
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    ds = ds.enumerate()  # before skip: an example's index (its random-op seed) is its place in the epoch's order
    if not isinstance(n_skip, int) or n_skip:
        ds = ds.skip(n_skip)  # before pp: skipped examples are never decoded
    head, tail = split_batch_tail(pp_str) if batch_tail else (pp_str, "")
    ds = ds.map(_make_seeded_pp(head, epoch_seed, process_index), num_parallel_calls=num_parallel_calls)
    ds = ds.batch(batch_size, drop_remainder=True)
    if tail:
        ds = ds.map(tf.autograph.experimental.do_not_convert(pp_builder.get_preprocess_fn(tail)), num_parallel_calls=num_parallel_calls)
    return ds


def get_n_eval_batches(builder: tfds.core.DatasetBuilder, split: str, batch_size: int, process_count: int) -> int:
    """Batches every process runs: enough for the largest share, so all run the same number."""
    n_per_process = [builder.info.splits[_process_split(split, i, process_count, False)].num_examples for i in range(process_count)]
    return math.ceil(max(n_per_process) / batch_size)


def make_eval_dataset(
    builder: tfds.core.DatasetBuilder,
    split: str,
    pp_str: str,
    batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    cache: bool = False,
    skip_decode: bool = True,
    prefetch: int = 2,
    num_parallel_calls: int = AUTOTUNE,
    private_threadpool_size: int = 0,
) -> tuple[tf.data.Dataset, int]:
    """Fixed-size eval batches with `_mask`, and how many of them (the same on every process)."""
    n_batches = get_n_eval_batches(builder, split, batch_size, process_count)
    process_split = _process_split(split, process_index, process_count, False)
    n_pad = n_batches * batch_size - builder.info.splits[process_split].num_examples
    ds = _read(builder, process_split, None, skip_decode, add_id=reads_record_id(builder, process_split, pp_str, skip_decode))
    ds = ds.map(tf.autograph.experimental.do_not_convert(_make_pp(pp_str, mask=True)), num_parallel_calls=num_parallel_calls)
    if cache:
        ds = ds.cache()
    # Exactly n_pad zero examples with _mask=False: the real ones end first, so a cache before this sees its end on every pass, and nothing is cut.
    pad = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
    pad["_mask"] = tf.constant(False)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(n_pad))
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.with_options(_options(private_threadpool_size, True))
    return ds.prefetch(prefetch), n_batches


def _to_torch(name: str, x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x)  # shares memory with the numpy batch: no copy
    if name == "image" and t.ndim == 4:
        # NHWC -> NCHW as a view: the result is channels_last in memory, which CPU convs run natively.
        t = t.permute(0, 3, 1, 2)
    return t


# On a corrupt record, shards are scanned to name the damaged one only up to this many bytes in all (ImageNet's would take minutes).
SCAN_CORRUPT_MAX_BYTES = 1 << 30


def _tf_message(e: Exception) -> str:
    """TF's error text without its graph-node and op decorations: `{{function_node ...}} corrupted record at 9 [Op:...]` -> `corrupted record at 9`."""
    text = re.sub(r"\{\{[^}]*\}\}", "", str(e))
    text = re.sub(r"\[Op:[^\]]*\].*", "", text, flags=re.S)
    return " ".join(text.split()) or type(e).__name__


def get_shards(builder, split: str) -> list[str]:
    """The tfrecord files of `split` (a split name or TFDS slice such as `train[:90%]`: the whole split's files)."""
    name = re.split(r"[\[+]", split, maxsplit=1)[0]
    try:
        return [str(f) for f in builder.info.splits[name].filepaths]
    except (KeyError, AttributeError):
        return []


def find_corrupt_shards(shards: list[str], max_bytes: int = SCAN_CORRUPT_MAX_BYTES) -> list[str] | None:
    """The shards whose records do not read (CRC or framing errors); None when they are too big to scan here."""
    sizes = [tf.io.gfile.stat(str(f)).length for f in shards]
    if sum(sizes) > max_bytes:
        return None
    bad = []
    for f in shards:
        try:
            for _ in tf.data.TFRecordDataset(str(f)):
                pass
        except tf.errors.DataLossError:
            bad.append(str(f))
    return bad


def _decode_text(value: bytes) -> str | bytes:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value  # binary, e.g. an image the pp string left encoded


def _to_host_strings(x: np.ndarray) -> list:
    """A batch of TF strings as (nested) lists of `str`, one entry per example; values that are not UTF-8 text stay `bytes`."""
    return np.vectorize(_decode_text, otypes=[object])(x).tolist()


def _next_batch(it: Iterator[dict], source: str, shards: list[str] | None) -> dict | None:
    """The next numpy batch, None at the end; a corrupt record is a `BadInputError` (see `iterate_torch`)."""
    from utils.errors import BadInputError

    try:
        return next(it)
    except StopIteration:
        return None
    except tf.errors.DataLossError as e:
        bad = find_corrupt_shards(shards) if shards else None
        where = f"; damaged shard(s): {', '.join(bad)}" if bad else (f"; one of its {len(shards)} shard(s)" if shards else "")
        raise BadInputError(
            f"corrupt record in {source} ({_tf_message(e)}{where}); the prepared files are damaged:"
            " restore them, or delete that directory and prepare the dataset again"
        ) from e


def iterate_torch(
    ds: tf.data.Dataset,
    keys: tuple[str, ...] | None = None,
    source: str = "the TFDS dataset",
    shards: list[str] | None = None,
    *,
    n_batches: int | None = None,
    strings: bool = False,
) -> Iterator[dict[str, torch.Tensor | list]]:
    """tf.data batches -> dicts of torch tensors; string features are dropped, or with `strings` kept as lists of `str` (see the module docstring).

    `n_batches`: how many batches `ds` holds. The end is asked for as soon as the last of them is read, before it is handed out, so tf.data's raw
    cache sees the end of its input even when the consumer stops after that batch (the trainer does): tf.data drops a cache it never read to the end.

    A corrupt record (TF's DataLossError, raised mid-epoch) becomes a `BadInputError` naming `source` (dataset, split, directory), the
    damaged shard when `shards` are small enough to scan, and the fix: the CLI prints one line and exits 2.
    """
    it = ds.as_numpy_iterator()
    n_read = 0
    while (batch := _next_batch(it, source, shards)) is not None:
        n_read += 1
        if n_read == n_batches:
            assert _next_batch(it, source, shards) is None, f"{source}: more than the expected {n_batches} batches"
        out = {}
        for k, v in batch.items():
            if keys is not None and k not in keys:
                continue
            if v.dtype != object:
                out[k] = _to_torch(k, v)
            elif strings:
                out[k] = _to_host_strings(v)
        yield out
