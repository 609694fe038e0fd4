"""An extraction as a Hugging Face `datasets` table in the layout SAELens reads cached activations from (pyarrow, an optional dependency).

SAELens' cached-activation loader (`load_cached_activation_dataset`) calls `datasets.load_from_disk(path)`, checks that the hook's column has the feature
`Array2D(shape=(context_size, d_in))`, and reads it with `set_format("torch")`; a `token_ids` column `List(int32, length=context_size)` is optional. So the
table has one column per exported layer, named after it (the hook name), one row per example of shape `(tokens, d)` (cls and mean: one token), and
`token_ids` with the kept token positions (-1 for a mean). Inside this repository `import datasets` is the project's own `datasets.py`, so the files are
written with pyarrow directly, as `Dataset.save_to_disk` writes them: Arrow IPC streams `data-NNNNN-of-NNNNN.arrow` whose schema carries the features,
`dataset_info.json` and `state.json`. Load the result with `datasets.load_from_disk(out)` from any other directory, or pass it to SAELens as
`cached_activations_path=out, hook_name=LAYER, context_size=T, d_in=D`.
"""

import hashlib
import json
import os

import torch

from activations import files, reader
from utils import fs

ARRAY2D = "datasets.features.features.Array2DExtensionType"
ARROW_DTYPES = {"float32": torch.float32, "float16": torch.float16}  # what `datasets` and numpy can hold (no bfloat16)


def _array2d_type(pa, shape: tuple[int, int], dtype: str):
    """pyarrow's side of `datasets.Array2D`: an extension type of nested lists, under the name and serialisation `datasets` registers."""

    class Array2DType(pa.ExtensionType):
        def __init__(self):
            super().__init__(pa.list_(pa.list_(getattr(pa, dtype)())), ARRAY2D)

        def __arrow_ext_serialize__(self) -> bytes:
            return json.dumps((list(shape), dtype)).encode()

        @classmethod
        def __arrow_ext_deserialize__(cls, storage_type, serialized):
            return cls()

    return Array2DType()


def _features(layers: dict[str, tuple[int, int]], dtype: str) -> dict:
    out = {name: {"shape": list(shape), "dtype": dtype, "_type": "Array2D"} for name, shape in layers.items()}
    t = next(iter(layers.values()))[0]
    out["token_ids"] = {"feature": {"dtype": "int32", "_type": "Value"}, "length": t, "_type": "List"}
    return out


def _table(pa, rows: dict[str, torch.Tensor], token_ids: list[int], layers: dict[str, tuple[int, int]], dtype: str, schema):
    cols = []
    for name, (t, d) in layers.items():
        x = rows[name].to(ARROW_DTYPES[dtype]).reshape(-1, t, d).numpy()
        inner = pa.ListArray.from_arrays(pa.array(range(0, x.shape[0] * t * d + 1, d), pa.int32()), pa.array(x.reshape(-1)))
        outer = pa.ListArray.from_arrays(pa.array(range(0, x.shape[0] * t + 1, t), pa.int32()), inner)
        cols.append(pa.ExtensionArray.from_storage(schema.field(name).type, outer))
    n = len(cols[0])
    ids = pa.FixedSizeListArray.from_arrays(pa.array(token_ids * n, pa.int32()), len(token_ids))
    return pa.Table.from_arrays([*cols, ids], schema=schema)


def export_hf_dataset(dpath: str, out_dpath: str, layers: list[str] | None = None, dtype: str = "float32") -> dict:
    """Write every shard's rows of `layers` (default: all) as a `datasets` table at `out_dpath` (local); returns its features and row count."""
    import pyarrow as pa

    if dtype not in ARROW_DTYPES:
        raise ValueError(f"export dtype {dtype!r} is not one of {', '.join(ARROW_DTYPES)}")
    meta = files.read_json(fs.join(dpath, files.META_FNAME))
    if meta is None:
        raise FileNotFoundError(f"{dpath} holds no {files.META_FNAME}; point at an --activations_dir an extraction wrote")
    layers = layers or list(meta["layers"])
    infos = {name: reader.get_layer_info(dpath, name) for name in layers}
    shapes = {name: (tuple(i["shape"]) if len(i["shape"]) == 2 else (1, i["shape"][0])) for name, i in infos.items()}
    token_ids = infos[layers[0]]["token_ids"]
    if len({s[0] for s in shapes.values()}) != 1 or any(i["token_ids"] != token_ids for i in infos.values()):
        raise ValueError(f"layers {layers} keep different tokens; export them one at a time")
    features = _features(shapes, dtype)
    fields = [pa.field(n, _array2d_type(pa, s, dtype)) for n, s in shapes.items()] + [pa.field("token_ids", pa.list_(pa.int32(), len(token_ids)))]
    schema = pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})
    shards = files.list_shards(dpath)
    os.makedirs(out_dpath, exist_ok=True)
    names, n_rows = [], 0
    for i, fpath in enumerate(shards):
        fname = f"data-{i:05d}-of-{len(shards):05d}.arrow"
        table = _table(pa, {n: reader.read_layer(fpath, n) for n in layers}, token_ids, shapes, dtype, schema)
        with pa.OSFile(os.path.join(out_dpath, fname), "wb") as sink, pa.ipc.new_stream(sink, schema) as stream:
            stream.write_table(table)
        names.append(fname)
        n_rows += table.num_rows
    fingerprint = hashlib.sha256(json.dumps([meta["layers"], layers, dtype, [os.path.relpath(f, dpath) for f in shards], n_rows]).encode()).hexdigest()[:16]
    state = {"_data_files": [{"filename": f} for f in names], "_fingerprint": fingerprint, "_format_columns": None, "_format_kwargs": {}}
    state |= {"_format_type": None, "_output_all_columns": False, "_split": None}
    info = {"citation": "", "description": f"activations of {meta['model']} ({meta['split']}, tokens {meta['tokens']}) from {dpath}", "features": features}
    info |= {"homepage": "", "license": ""}
    for fname, obj in (("state.json", state), ("dataset_info.json", info)):
        with open(os.path.join(out_dpath, fname), "w", encoding="utf-8") as fd:
            json.dump(obj, fd, indent=2)
    return {"rows": n_rows, "features": features, "files": names}
