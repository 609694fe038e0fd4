"""Activations for SAE training: every shard of an extraction as a stream of `[batch, d]` float tensors.

`iter_activation_batches` reads the shards the manifests list (never a half-written file), in an order shuffled with the seed, one layer at a time
(`safe_open` reads only that tensor of a shard), flattens tokens into rows (`[r, k, d]` -> `[r*k, d]`), and draws batches from a shuffle buffer of
`shuffle_rows` rows: when the buffer is full it is permuted with the seeded generator and its first half is handed out, so rows of different shards and
examples mix. The same seed gives the same batches. Hand it to SAELens' `SAETrainer` as its `data_provider` (an iterator of `[batch, d_in]` tensors).
"""

from collections.abc import Iterator

import torch

from activations import files
from utils import fs


def get_layer_info(dpath: str, layer: str) -> dict:
    """The layer's entry of meta.json (per-row shape, dtype, kept token positions); a ValueError names the layers there are."""
    meta = files.read_json(fs.join(dpath, files.META_FNAME))
    if meta is None:
        raise FileNotFoundError(f"{dpath} holds no {files.META_FNAME}; point at an --activations_dir an extraction wrote")
    if layer not in meta["layers"]:
        raise ValueError(f"layer {layer!r} is not in {dpath}; it holds {', '.join(meta['layers'])}")
    return meta["layers"][layer]


def read_layer(fpath: str, name: str) -> torch.Tensor:
    """One tensor of one shard (local files are memory-mapped; remote ones read whole)."""
    import safetensors
    import safetensors.torch

    if fs.is_remote(fpath):
        return safetensors.torch.load(fs.read_bytes(fpath))[name]
    with safetensors.safe_open(fpath, framework="pt") as fd:
        return fd.get_tensor(name)


def iter_rows(dpath: str, layer: str, seed: int | None = None, flatten_tokens: bool = True) -> Iterator[torch.Tensor]:
    """Each shard's rows of `layer` (`[rows, d]` with `flatten_tokens`), shards in order or shuffled with `seed`."""
    shards = files.list_shards(dpath)
    if not shards:
        raise ValueError(f"{dpath} lists no shards in its manifests (p*/manifest.json); run the extraction first")
    if seed is not None:
        order = torch.randperm(len(shards), generator=torch.Generator().manual_seed(seed)).tolist()
        shards = [shards[i] for i in order]
    for fpath in shards:
        t = read_layer(fpath, layer)
        yield t.reshape(-1, t.shape[-1]) if flatten_tokens else t


def iter_activation_batches(
    dpath: str,
    layer: str,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle_rows: int = 1 << 16,
    flatten_tokens: bool = True,
    dtype: torch.dtype = torch.float32,
    drop_last: bool = True,
) -> Iterator[torch.Tensor]:
    """`[batch_size, d]` tensors of `dtype` over every row of `layer` in `dpath` (one pass), mixed through a seeded shuffle buffer."""
    assert batch_size > 0 and shuffle_rows >= batch_size, (batch_size, shuffle_rows)
    get_layer_info(dpath, layer)
    gen = torch.Generator().manual_seed(seed)
    buffer: list[torch.Tensor] = []
    n_buffered = 0
    for rows in iter_rows(dpath, layer, seed=seed, flatten_tokens=flatten_tokens):
        buffer.append(rows.to(dtype))
        n_buffered += len(rows)
        if n_buffered < shuffle_rows:
            continue
        pool = torch.cat(buffer)
        pool = pool[torch.randperm(len(pool), generator=gen)]
        n_out = (len(pool) // 2) // batch_size * batch_size
        yield from pool[:n_out].split(batch_size)
        buffer, n_buffered = [pool[n_out:]], len(pool) - n_out
    if not n_buffered:
        return
    pool = torch.cat(buffer)
    pool = pool[torch.randperm(len(pool), generator=gen)]
    n_out = len(pool) // batch_size * batch_size if drop_last else len(pool)
    yield from pool[:n_out].split(batch_size)
