"""Activation extraction through main.py (`--extract_only`): rows equal an eager hooked forward and timm's `forward_intermediates`, every eval example once,
bf16 on disk, metadata, resume after a SIGKILL to byte-identical files, bad layer names, the cell-set model, one graph on XLA.

The CPU-eager runs take seconds; the XLA checks share one in-process device (compiled once per token selection)."""

import json
import os
import re
import shutil
import signal
import sys

import pytest
import safetensors
import torch

import datasets
import main
import models
from activations import files, reader
from activations.capture import ActivationCapture, as_tokens
from activations.config import TokenSelection
from activations.writer import KILL_AFTER_SHARDS_ENV
from tests import proc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_EVAL = 360  # digits test split
LAYERS = ["blocks.0", "blocks.5"]


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = models.create_model("test_vit", num_classes=10, img_size=32)
    fpath = str(tmp_path_factory.mktemp("ckpt") / "vit.pt")
    torch.save(model.state_dict(), fpath)
    return fpath


def _args(digits_dir: str, ckpt_fpath: str, act_dpath, *extra: str) -> list[str]:
    return ["--tfds_data_dir", digits_dir, "--model", "test_vit", "--img_size", "32", "--init_checkpoint", ckpt_fpath, "--batch_size", "32",
            "--extract_only", "--extract_layers", ",".join(LAYERS), "--activations_dir", str(act_dpath), "--output_dir", "", *extra]  # fmt: skip


def _read_all(dpath) -> dict[str, torch.Tensor]:
    """Every tensor of every shard, concatenated in (process, shard) order."""
    parts: dict[str, list] = {}
    for fpath in files.list_shards(str(dpath)):
        with safetensors.safe_open(fpath, framework="pt") as fd:
            for k in fd.keys():
                parts.setdefault(k, []).append(fd.get_tensor(k))
    return {k: torch.cat(v) for k, v in parts.items()}


def _eager_reference(digits_dir: str, ckpt_fpath: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, list]:
    """Hooked eager forward over the eval split on CPU (fp32), rows in split order; also forward_intermediates' [prefix + patch] tokens."""
    model = models.create_model("test_vit", num_classes=10, img_size=32).eval()
    model.load_state_dict(torch.load(ckpt_fpath, weights_only=True))
    data = datasets.build_data(datasets.DataConfig(tfds_data_dir=digits_dir, batch_size=32))
    capture = ActivationCapture(model, LAYERS, TokenSelection("all"), "fp32")
    acts: dict[str, list] = {n: [] for n in LAYERS}
    labels, inter = [], []
    with torch.no_grad(), capture:
        for batch in data.eval_batches():
            keep = batch["_mask"]
            model(batch["image"])
            for name, t in capture.pop().items():
                acts[name].append(t[keep])
            labels.append(batch["label"][keep])
            out = model.forward_intermediates(batch["image"], indices=[0, 5], output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True)
            inter.append([torch.cat([prefix, x], dim=1)[keep] for x, prefix in out])
    fi = [torch.cat([b[i] for b in inter]) for i in range(2)]
    return {n: torch.cat(v) for n, v in acts.items()}, torch.cat(labels), fi


@pytest.fixture(scope="module")
def cpu_run(digits_dir, vit_ckpt, tmp_path_factory):
    dpath = tmp_path_factory.mktemp("act") / "cpu"
    summary = main.main(_args(digits_dir, vit_ckpt, dpath, "--device", "cpu", "--extract_rows_per_shard", "100"))
    return dpath, summary


def test_cpu_rows_equal_eager_forward_and_forward_intermediates(cpu_run, digits_dir, vit_ckpt):
    dpath, summary = cpu_run
    got = _read_all(dpath)
    assert summary["activations/rows"] == N_EVAL and summary["activations/shards"] == 4  # 100 + 100 + 100 + 60
    assert got["index"].tolist() == list(range(N_EVAL)), "every eval example exactly once, in split order"
    ref, labels, fi = _eager_reference(digits_dir, vit_ckpt)
    assert torch.equal(got["label"], labels)
    for i, name in enumerate(LAYERS):
        assert got[name].dtype == torch.bfloat16 and got[name].shape == (N_EVAL, 5, 64)  # class token + 2x2 patches of 16 px
        assert torch.equal(got[name], ref[name].to(torch.bfloat16)), name  # the same eager ops: bit-identical
        assert torch.equal(got[name], fi[i].to(torch.bfloat16)), f"{name} vs timm forward_intermediates"


def test_metadata_and_manifest(cpu_run, vit_ckpt):
    dpath, _ = cpu_run
    meta = json.loads((dpath / "meta.json").read_text())
    assert meta["layers"]["blocks.0"] == {"shape": [5, 64], "dtype": "bf16", "layer_shape": [5, 64], "token_ids": [0, 1, 2, 3, 4]}
    assert (meta["model"], meta["checkpoint"], meta["split"], meta["tokens"], meta["n_examples"]) == ("test_vit", vit_ckpt, "eval", "all", N_EVAL)
    assert meta["process_count"] == 1 and meta["keys"] == ["index", "label"] and "torch" in meta["versions"]
    manifest = json.loads((dpath / "p00000" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == N_EVAL and [s["rows"] for s in manifest["shards"]] == [100, 100, 100, 60]
    assert [(s["index_min"], s["index_max"]) for s in manifest["shards"]] == [(0, 99), (100, 199), (200, 299), (300, 359)]
    with safetensors.safe_open(str(dpath / "p00000" / "shard-000000.safetensors"), framework="pt") as fd:
        assert json.loads(fd.metadata()["activations"]) == {"format": 1, "process": 0, "split": "eval", "tokens": "all", "layers": LAYERS}


@pytest.mark.timeout(240)
def test_killed_run_resumes_to_byte_identical_files(digits_dir, vit_ckpt, tmp_path):
    dpath = tmp_path / "act"
    common = _args(digits_dir, vit_ckpt, dpath, "--device", "cpu", "--extract_rows_per_shard", "50", "--extract_max_examples", "300")
    main.main(common)  # uninterrupted
    want = {p.relative_to(dpath): p.read_bytes() for p in sorted(dpath.rglob("*")) if p.is_file()}
    shutil.rmtree(dpath)
    env = {**os.environ, "PJRT_DEVICE": "CPU", KILL_AFTER_SHARDS_ENV: "2"}  # 50-row shards end inside 32-row batches
    r = proc.run([sys.executable, "main.py", *common], cwd=REPO, env=env, timeout=120, capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert json.loads((dpath / "p00000" / "manifest.json").read_text())["rows"] == 100
    (dpath / "p00000" / "shard-000002.safetensors.tmp.123").write_bytes(b"half a shard")  # a write the kill cut short
    (dpath / "p00000" / "shard-000002.safetensors").write_bytes(b"not listed")
    summary = main.main(common)
    assert summary["activations/rows_this_run"] == 200 and summary["activations/rows"] == 300
    got = {p.relative_to(dpath): p.read_bytes() for p in sorted(dpath.rglob("*")) if p.is_file()}
    assert got.keys() == want.keys() and all(got[k] == want[k] for k in want), sorted(k for k in want if got.get(k) != want[k])
    assert _read_all(dpath)["index"].tolist() == list(range(300)), "the first 300 examples, none twice"
    assert main.main(common)["activations/rows_this_run"] == 0, "a finished extraction is left as it is"


def test_bad_layer_name_exits_2_with_close_matches(digits_dir, vit_ckpt, tmp_path, capsys):
    argv = [a if a != ",".join(LAYERS) else "blocks.0,block.5" for a in _args(digits_dir, vit_ckpt, tmp_path / "act", "--device", "cpu")]
    assert main.cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --extract_layers: no module 'block.5' (did you mean blocks.5"), err
    assert main.cli([*argv, "--extract_tokens", "every"]) == 2
    assert "--extract_tokens 'every' is not one of all, cls, mean, first:K, random:K" in capsys.readouterr().err


def test_a_module_that_returns_no_tensor_is_refused():
    with pytest.raises(ValueError, match=r"--extract_layers 'x': the module returns dict, not a tensor"):
        as_tokens("x", {"a": torch.zeros(1)})
    with pytest.raises(ValueError, match="the layer has only 5 tokens"):
        from activations.capture import get_token_ids

        get_token_ids(TokenSelection("random", 6), 5, seed=0)


def test_cell_set_model_tokens_are_cells(tmp_path):
    from cells import simulate

    h5ad_fpath = simulate.simulate_h5ad(str(tmp_path / "c.h5ad"), n_cells=1500, n_genes=40, n_contexts=2, n_perts=8, genes_per_effect=4, seed=3)
    torch.manual_seed(0)
    cfg = datasets.DataConfig(data_set="h5ad", batch_size=4, cells=datasets.CellSetConfig(h5ad_path=[h5ad_fpath], cells_per_set=8))
    data = datasets.build_data(cfg)
    model = models.create_model("set_transformer_tiny", n_genes=data.cells.n_genes, n_perts=data.cells.n_perts, n_contexts=data.cells.n_contexts).eval()
    torch.save(model.state_dict(), tmp_path / "set.pt")
    argv = ["--data_set", "h5ad", "--h5ad_path", h5ad_fpath, "--model", "set_transformer_tiny", "--cells_per_set", "8", "--batch_size", "4", "--device",
            "cpu", "--init_checkpoint", str(tmp_path / "set.pt"), "--extract_only", "--extract_layers", "blocks.0", "--activations_dir",
            str(tmp_path / "act"), "--output_dir", "", "--cell_eval", "off"]  # fmt: skip
    for split in ("eval", "train"):
        main.main([*argv, "--extract_split", split, "--activations_dir", str(tmp_path / split)])
        got = _read_all(tmp_path / split)
        n = data.cells.n_eval_sets if split == "eval" else sum(-(-len(g.rows) // 8) for g in data.cells.train_groups)
        assert sorted(got["index"].tolist()) == list(range(n)), split
        assert got["blocks.0"].shape == (n, 8, 32) and got["ctrl_rows"].shape == got["target_rows"].shape == (n, 8)
        # eager reference from the stored obs rows: the control cells are the tokens
        f = data.cells.files[0]
        assert set(got["file"].tolist()) == {0}
        ctrl = torch.stack([torch.from_numpy(f.read_rows(r.numpy())) for r in got["ctrl_rows"]])
        capture = ActivationCapture(model, ["blocks.0"], TokenSelection("all"), "fp32")
        with torch.no_grad(), capture:
            model(ctrl, got["pert"], got["context"])
            ref = capture.pop()["blocks.0"]
        torch.testing.assert_close(got["blocks.0"].float(), ref.to(torch.bfloat16).float(), rtol=0, atol=0.02)


RANDOM = ("--extract_tokens", "random:3", "--extract_dtype", "fp32")


@pytest.fixture(scope="module")
def xla_random_run(digits_dir, vit_ckpt, tmp_path_factory):
    dpath = tmp_path_factory.mktemp("act") / "xla_random"
    return dpath, main.main(_args(digits_dir, vit_ckpt, dpath, "--device", "xla", *RANDOM))


@pytest.mark.xla
@pytest.mark.timeout(300)
def test_xla_one_graph_and_random_tokens_match_cpu(cpu_run, xla_random_run, digits_dir, vit_ckpt, tmp_path):
    dpath, _ = cpu_run
    want = _read_all(dpath)
    summary = main.main(_args(digits_dir, vit_ckpt, tmp_path / "xla", "--device", "xla"))
    got = _read_all(tmp_path / "xla")
    assert summary["activations/compiles"] == summary["activations/compiles_after_first_step"], "no compile after the first extract step"
    assert summary["activations/replicated_transfers"] == 0
    assert got["index"].tolist() == list(range(N_EVAL))
    for name in LAYERS:
        assert got[name].dtype == torch.bfloat16
        torch.testing.assert_close(got[name].float(), want[name].float(), rtol=0.02, atol=0.02)  # bf16 of XLA's vs eager's fp32
    rnd_dpath, rnd_summary = xla_random_run
    assert rnd_summary["activations/compiles"] == rnd_summary["activations/compiles_after_first_step"]
    meta = json.loads((rnd_dpath / "meta.json").read_text())
    ids = meta["layers"]["blocks.5"]["token_ids"]
    assert len(ids) == 3 and ids == sorted(ids) and meta["layers"]["blocks.5"]["shape"] == [3, 64]
    rnd = _read_all(rnd_dpath)
    assert rnd["blocks.5"].dtype == torch.float32
    torch.testing.assert_close(rnd["blocks.5"].to(torch.bfloat16).float(), want["blocks.5"][:, ids].float(), rtol=0.02, atol=0.02)
    batches = list(reader.iter_activation_batches(str(rnd_dpath), "blocks.5", 64, shuffle_rows=256))
    assert len(batches) == N_EVAL * 3 // 64 and all(b.shape == (64, 64) and b.dtype == torch.float32 for b in batches)


@pytest.mark.slow
@pytest.mark.xla
@pytest.mark.timeout(300)
def test_spmd_four_devices_equal_one_device_from_local_shards(xla_random_run, digits_dir, vit_ckpt, tmp_path):
    """One SPMD process over 4 virtual CPU devices: each output is read from its 4 local shards (never gathered: torch_xla's ReplicateShardedData stays 0),
    the rows come back in index order, the values equal the one-device run's, and the extract step compiles once."""
    one_dpath, _ = xla_random_run
    dpath = tmp_path / "spmd"
    cmd = [sys.executable, "main.py", *_args(digits_dir, vit_ckpt, dpath, "--device", "xla", "--parallel", "spmd", *RANDOM)]
    r = proc.run(cmd, cwd=REPO, env={**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "4"}, timeout=240, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 device(s) for the global batch" in r.stdout + r.stderr and "8 per device" in r.stdout + r.stderr
    final = dict(re.findall(r"activations/(\w+) (\S+)", next(line for line in r.stdout.splitlines() if line.startswith("final:"))))
    assert final["replicated_transfers"] == "0" and final["compiles"] == final["compiles_after_first_step"] and final["rows"] == str(N_EVAL), final
    got, want = _read_all(dpath), _read_all(one_dpath)
    assert got["index"].tolist() == list(range(N_EVAL)) and torch.equal(got["label"], want["label"])
    for name in LAYERS:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)  # fp32; the sharded program may reduce in another order


LOAD_LIKE_SAELENS = """
import json, sys
import datasets, torch
ds = datasets.load_from_disk(sys.argv[1])
hook, t, d = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
assert ds.features[hook].shape == (t, d), ds.features[hook].shape  # SAELens' check on cached activations
ds.set_format(type="torch", columns=[hook, "token_ids"])
x = ds[:7][hook]
print(json.dumps({"rows": len(ds), "shape": list(x.shape), "dtype": str(x.dtype), "token_ids": ds[0]["token_ids"].tolist(), "first": x[0, 0, :4].tolist()}))
"""


def test_sae_reader_and_saelens_export_load(cpu_run, tmp_path):
    pytest.importorskip("pyarrow")
    dpath, _ = cpu_run
    batches = list(reader.iter_activation_batches(str(dpath), "blocks.0", 128, seed=1, shuffle_rows=512))
    assert len(batches) == N_EVAL * 5 // 128 and all(b.shape == (128, 64) and b.dtype == torch.float32 for b in batches)
    again = list(reader.iter_activation_batches(str(dpath), "blocks.0", 128, seed=1, shuffle_rows=512))
    other = next(reader.iter_activation_batches(str(dpath), "blocks.0", 128, seed=2, shuffle_rows=512))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True)) and not torch.equal(batches[0], other), "seeded shuffle"
    rows = {tuple(r) for r in _read_all(dpath)["blocks.0"].float().reshape(-1, 64).tolist()}
    drawn = [tuple(r) for r in torch.cat(batches).tolist()]
    assert len(set(drawn)) == len(drawn) and set(drawn) <= rows, "each token row at most once, and only rows of the shards"
    with pytest.raises(ValueError, match="layer 'blocks.9' is not in"):
        next(reader.iter_activation_batches(str(dpath), "blocks.9", 8))
    from activations import export

    out = export.export_hf_dataset(str(dpath), str(tmp_path / "hf"), layers=["blocks.0"])
    assert out["rows"] == N_EVAL and out["features"]["blocks.0"] == {"shape": [5, 64], "dtype": "float32", "_type": "Array2D"}
    if not _has_hf_datasets():
        pytest.skip("Hugging Face datasets is not installed")
    # Outside the repository: here `import datasets` is the project's own datasets.py.
    r = proc.run(
        [sys.executable, "-c", LOAD_LIKE_SAELENS, str(tmp_path / "hf"), "blocks.0", "5", "64"], cwd=tmp_path, timeout=120, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert loaded["rows"] == N_EVAL and loaded["shape"] == [7, 5, 64] and loaded["dtype"] == "torch.float32" and loaded["token_ids"] == [0, 1, 2, 3, 4]
    assert loaded["first"] == pytest.approx(_read_all(dpath)["blocks.0"][0, 0, :4].float().tolist())


def _has_hf_datasets() -> bool:
    import importlib.metadata

    try:
        return bool(importlib.metadata.version("datasets"))  # the installed distribution, not the project's datasets.py
    except importlib.metadata.PackageNotFoundError:
        return False


def test_writer_thread_failure_reaches_the_loop_and_keeps_the_listed_shards(tmp_path):
    """A copy that fails in the writer thread is raised in the loop (at a later submit or at close), and the manifest lists only the durable shards."""
    from activations.writer import ShardWriter

    def to_host(outputs):
        if int(outputs["_index"][0]) >= 8:
            raise OSError("device went away")
        return outputs

    manifest = files.prepare_process_dir(str(tmp_path), 0)
    writer = ShardWriter(str(tmp_path), manifest, names={"act/x": "x", "_index": "index"}, rows_per_shard=4, max_queue=1, to_host=to_host, metadata={})
    with pytest.raises(OSError, match="device went away"):
        for k in range(50):
            writer.submit(k, {"act/x": torch.full((4, 2), float(k)), "_index": torch.arange(4) + 4 * k, "_mask": torch.ones(4, dtype=torch.bool)})
        writer.close(50)
    on_disk = files.read_manifest(str(tmp_path), 0)
    assert not on_disk.complete and [s["rows"] for s in on_disk.shards] == [4, 4] and (on_disk.next_batch, on_disk.next_row) == (2, 0)
