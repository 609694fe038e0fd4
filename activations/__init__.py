"""Layer activations for sparse-autoencoder and interpretability work: captured inside the compiled eval step, written per process as safetensors shards.

One job per module:
  config.py    `ActivationsConfig` (the `--extract_*` and `--activations_dir` flags) and the token selection spec
  capture.py   forward hooks that only stash (token selection and the storage dtype applied on the device), layer-name checks, the shape probe
  transfer.py  device -> host of one finished step: the local shards of this host under SPMD, a plain copy elsewhere
  source.py    the batches of the chosen split with a stable example index (and, for cell sets, the obs rows of every cell)
  files.py     the on-disk layout: p{rank}/shard-NNNNNN.safetensors, per-process manifest.json, run-level meta.json, resume state
  writer.py    the writer thread: a bounded queue of finished steps, mask filter, shard files, manifest after each durable shard
  extract.py   the extraction pass: one compiled graph per step, the writer, compile and transfer counters
  reader.py    SAE training input: `[batch, d]` float tensors over every shard, seeded shuffle buffer
  export.py    a Hugging Face `datasets` table in the layout SAELens reads from a cache (written with pyarrow)

Shape letters: b batch, n tokens of a layer's output (patches, cells of a set, h*w positions of a conv map), d width, k selected tokens, r rows of a shard.
"""
