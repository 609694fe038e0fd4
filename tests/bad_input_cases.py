"""The rows of tests/test_bad_inputs.py: bad inputs as a new user gives them, and the files they point at (the `files` fixture)."""

import os

import pytest
import torch

import main
import models
from utils import checkpoint as ckpt


def _has_flag(flag: str) -> bool:
    return any(flag in action.option_strings for action in main.get_args_parser()._actions)


needs_h5ad = pytest.mark.skipif(not _has_flag("--h5ad_path"), reason="--data_set h5ad flags not in main.py yet")
needs_kd = pytest.mark.skipif(not _has_flag("--teacher_path"), reason="--kd flags not in main.py yet")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Inputs the rows point at: a YAML with a typo, a teacher checkpoint of tiny_cnn, a used output dir, a dir of corrupt checkpoints,
    an h5ad file and a gene vocab from another species."""
    dpath = tmp_path_factory.mktemp("bad_inputs")
    paths = {"tmp": str(dpath)}
    paths["yaml"] = str(dpath / "recipe.yaml")
    with open(paths["yaml"], "w") as fd:
        fd.write("epochs: 2\nlrr: 0.1\n")
    torch.manual_seed(0)
    teacher = models.create_model("tiny_cnn", num_classes=10)
    paths["teacher"] = str(dpath / "teacher.pt")
    torch.save({"model": teacher.state_dict(), "args": {"model": "tiny_cnn"}}, paths["teacher"])
    paths["used"] = str(dpath / "used")
    ckpt.save_checkpoint({"x": torch.zeros(1)}, paths["used"], 40)
    paths["corrupt"] = str(dpath / "corrupt")
    os.makedirs(paths["corrupt"])
    with open(ckpt.get_checkpoint_fpath(paths["corrupt"], 7), "wb") as fd:
        fd.write(b"PK\x03\x04 cut short")
    paths["text"] = str(dpath / "notes.txt")
    with open(paths["text"], "w") as fd:
        fd.write("not a checkpoint\n")
    paths["as_file"] = str(dpath / "a_file")
    with open(paths["as_file"], "w") as fd:
        fd.write("x")
    with open(paths["teacher"], "rb") as fd:
        blob = fd.read()
    paths["truncated"] = str(dpath / "truncated.pt")
    with open(paths["truncated"], "wb") as fd:
        fd.write(blob[: len(blob) // 2])
    paths["list_pt"] = str(dpath / "list.pt")
    torch.save([torch.zeros(2)], paths["list_pt"])
    # A training checkpoint of another run (tiny_cnn, sgd), as the engine writes them: model, optimizer, position, rng, args.
    other = {
        "model": teacher.state_dict(),
        "optimizer": {"state": {}, "param_groups": []},
        "position": {"epoch": 1, "step_in_epoch": 0, "global_step": 22},
        "rng": {},
    }
    paths["other_run"] = str(dpath / "checkpoint-00000022.pt")
    torch.save({**other, "args": {"model": "tiny_cnn", "opt": "adamw"}}, paths["other_run"])
    paths["other_opt"] = str(dpath / "other_opt" / "checkpoint-00000022.pt")
    os.makedirs(os.path.dirname(paths["other_opt"]))
    torch.save({**other, "args": {"model": "tiny_cnn", "opt": "sgd"}}, paths["other_opt"])
    for name, text in (
        ("bad_yaml", "epochs: [1, 2\n"),
        ("list_yaml", "lr: [0.1, 0.2]\n"),
        ("bool_yaml", "tensorboard: maybe\n"),
        ("scalar_yaml", "- epochs\n"),
    ):
        paths[name] = str(dpath / f"{name}.yaml")
        with open(paths[name], "w") as fd:
            fd.write(text)
    if _has_flag("--h5ad_path"):
        paths.update(_write_h5ad_files(dpath))
    return paths


def _write_h5ad_files(dpath) -> dict[str, str]:
    """A small simulated screen, a gene vocab of another species, the screen with a NaN in X, and the screen with X only in a layer."""
    paths = {}
    from cells import simulate as simulate_h5ad

    paths["h5ad"] = simulate_h5ad.simulate_h5ad(str(dpath / "sim.h5ad"), n_cells=400, n_genes=30, n_perts=4, seed=1)
    paths["vocab"] = str(dpath / "mouse.txt")
    with open(paths["vocab"], "w") as fd:
        fd.write("ENSMUSG00000000001\nXist\n")
    import anndata
    import numpy as np

    adata = anndata.read_h5ad(paths["h5ad"])
    x = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X, dtype=np.float32)
    x[3, 2] = np.nan
    nan_adata = adata.copy()
    nan_adata.X = x
    paths["nan_h5ad"] = str(dpath / "nan.h5ad")
    nan_adata.write_h5ad(paths["nan_h5ad"])
    layers_adata = anndata.AnnData(obs=adata.obs, var=adata.var, layers={"counts": np.nan_to_num(x)})
    paths["layers_h5ad"] = str(dpath / "layers.h5ad")
    layers_adata.write_h5ad(paths["layers_h5ad"])
    return paths


def _h5ad(files, *extra: str) -> list[str]:
    return ["--data_set", "h5ad", "--h5ad_path", files.get("h5ad", "sim.h5ad"), "--model", "set_transformer_tiny", *extra]


# (id, argv builder (digits_dir, files) -> argv, regex the one-line message must match, marks)
CASES = [
    (
        "h5ad_target_sum_word",
        lambda d, f: _h5ad(f, "--h5ad_target_sum", "mean"),
        r"--h5ad_target_sum 'mean' is not 'median' or a positive number \(e.g. 1e4\)",
        (needs_h5ad,),
    ),
    (
        "h5ad_matrix_name",
        lambda d, f: _h5ad(f, "--h5ad_matrix", "counts"),
        r"--h5ad_matrix 'counts' is not X, raw/X or layers/NAME \(e.g. layers/counts\)",
        (needs_h5ad,),
    ),
    (
        "cell_eval_profile",
        lambda d, f: _h5ad(f, "--cell_eval", "vcc2"),
        r"--cell_eval 'vcc2' is not one of off, vcc, minimal, full; did you mean 'vcc'\?",
        (needs_h5ad,),
    ),
    (
        "missing_data_dir",
        lambda d, f: ["--data_set", "tfds", "--tfds_name", "sklearn_digits", "--tfds_data_dir", "/nonexistent/tfds"],
        r"--tfds_data_dir '/nonexistent/tfds' does not exist; point it at the directory that holds prepared TFDS datasets",
        (),
    ),
    (
        "unknown_tfds_dataset",
        lambda d, f: ["--data_set", "tfds", "--tfds_name", "sklearn_digitz", "--tfds_data_dir", d],
        r"TFDS dataset 'sklearn_digitz' is not prepared in --tfds_data_dir '.*'; did you mean sklearn_digits\?",
        (),
    ),
    ("missing_tfds_name", lambda d, f: ["--data_set", "tfds", "--tfds_data_dir", d], r"--data_set tfds needs --tfds_name \(e.g. imagenet2012, cifar10\)", ()),
    (
        "bad_split",
        lambda d, f: ["--tfds_data_dir", d, "--tfds_train_split", "trian[:90%]"],
        r"bad split 'trian\[:90%\]' for TFDS dataset sklearn_digits/1.0.0: .*splits are train, test",
        (),
    ),
    (
        "unknown_pp_op",
        lambda d, f: ["--tfds_data_dir", d, "--big_vision_pp_train", 'decode|resise(32)|keep("image", "label")'],
        r"unknown pp op 'resise'; did you mean resize",
        (),
    ),
    (
        "pp_op_wrong_argument",
        lambda d, f: ["--tfds_data_dir", d, "--big_vision_pp_train", "decode|resize(32, sise=2)"],
        r"pp op 'resize\(32, sise=2\)': got an unexpected keyword argument 'sise'; signature is resize\(",
        (),
    ),
    (
        "pp_op_bad_value",
        lambda d, f: ["--tfds_data_dir", d, "--big_vision_pp_eval", "decode|central_crop(-3)"],
        r"pp op central_crop: crop_size must be a positive int or a pair \(h, w\) of positive ints, got -3",
        (),
    ),
    ("unknown_model", lambda d, f: ["--tfds_data_dir", d, "--model", "tiny_cnm"], r"unknown model 'tiny_cnm'; did you mean tiny_cnn", ()),
    ("unknown_optimizer", lambda d, f: ["--tfds_data_dir", d, "--model", "tiny_cnn", "--opt", "adamww"], r"unknown optimizer 'adamww'; did you mean adamw", ()),
    ("unknown_data_set", lambda d, f: ["--data_set", "imagenet"], r"--data_set 'imagenet' is not one of digits, photos, tfds, h5ad", ()),
    (
        "missing_h5ad_file",
        lambda d, f: _h5ad({"h5ad": "/nonexistent/screen.h5ad"}),
        r"h5ad file not found: /nonexistent/screen.h5ad; fix --h5ad_path",
        (needs_h5ad,),
    ),
    ("h5ad_missing_pert_column", lambda d, f: _h5ad(f, "--pert_col", "perturbation"), r"no column 'perturbation' \(--pert_col\)", (needs_h5ad,)),
    (
        "h5ad_control_label_absent",
        lambda d, f: _h5ad(f, "--control_label", "ctrl"),
        r"control label 'ctrl' \(--control_label\) has no cells in obs\['target_gene'\]; most frequent labels",
        (needs_h5ad,),
    ),
    ("h5ad_gene_vocab_no_overlap", lambda d, f: _h5ad(f, "--gene_vocab", f["vocab"]), r"gene vocab .*mouse.txt shares no gene with .*sim.h5ad", (needs_h5ad,)),
    (
        "teacher_of_another_arch",
        lambda d, f: [
            "--tfds_data_dir",
            d,
            "--model",
            "tiny_cnn",
            "--kd",
            "--distillation_type",
            "soft",
            "--teacher_arch",
            "small_cnn",
            "--teacher_path",
            f["teacher"],
        ],
        r"--teacher_path .*teacher.pt is a checkpoint of 'tiny_cnn' but --teacher_arch is 'small_cnn'; pass --teacher_arch tiny_cnn",
        (needs_kd,),
    ),
    (
        "teacher_path_missing",
        lambda d, f: ["--kd", "--distillation_type", "soft", "--teacher_arch", "tiny_cnn", "--teacher_path", "/nonexistent/teacher.pt"],
        r"--teacher_path '/nonexistent/teacher.pt' does not exist; pass a checkpoint-\*.pt from a teacher run",
        (needs_kd,),
    ),
    (
        "resume_path_missing",
        lambda d, f: ["--tfds_data_dir", d, "--output_dir", f["tmp"] + "/fresh", "--resume", "/nonexistent/checkpoint-00000010.pt"],
        r"--resume '/nonexistent/checkpoint-00000010.pt' does not exist; pass a checkpoint-\*.pt file or --resume auto",
        (),
    ),
    (
        "resume_auto_all_corrupt",
        lambda d, f: ["--tfds_data_dir", d, "--output_dir", f["corrupt"], "--resume", "auto"],
        r"--resume auto: none of the 1 checkpoint\(s\) in .*corrupt loads \(checkpoint-00000007.pt\); delete them to start over, or pass --resume PATH",
        (),
    ),
    (
        "output_dir_of_another_run",
        lambda d, f: ["--tfds_data_dir", d, "--output_dir", f["used"]],
        r"--output_dir '.*used' already holds checkpoints \(newest checkpoint-00000040.pt\) of an earlier run; add --resume auto to continue it, "
        r"or pick a new --output_dir",
        (),
    ),
    ("yaml_unknown_key", lambda d, f: ["--config", f["yaml"]], r"unknown key 'lrr' in .*recipe.yaml; did you mean 'lr'\?", ()),
    ("yaml_missing", lambda d, f: ["--config", "/nonexistent/recipe.yaml"], r"--config '/nonexistent/recipe.yaml' does not exist", ()),
    ("zero_epochs", lambda d, f: ["--epochs", "0"], r"--epochs must be > 0, got 0", ()),
    ("negative_lr", lambda d, f: ["--lr", "-0.1"], r"--lr must be > 0, got -0.1", ()),
    ("wrong_type", lambda d, f: ["--batch_size", "sixty"], r"argument --batch_size: invalid int value: 'sixty'", ()),
    ("unknown_device", lambda d, f: ["--device", "tpu"], r"--device 'tpu' is not one of auto, cpu, cuda, xla", ()),
    (
        "cuda_missing",
        lambda d, f: ["--device", "cuda"],
        r"--device cuda but torch.cuda.is_available\(\) is False; use --device cpu or auto",
        (pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here"),),
    ),
    # class 1: a path flag given a file of the wrong kind
    (
        "resume_text_file",
        lambda d, f: ["--tfds_data_dir", d, "--resume", f["text"]],
        r"--resume '.*notes.txt' is not a readable checkpoint \(.*\); pass a checkpoint-\*.pt written by main.py",
        (),
    ),
    ("resume_truncated", lambda d, f: ["--tfds_data_dir", d, "--resume", f["truncated"]], r"--resume '.*truncated.pt' is not a readable checkpoint", ()),
    ("resume_not_a_dict", lambda d, f: ["--tfds_data_dir", d, "--resume", f["list_pt"]], r"--resume '.*list.pt' holds a list, not a state dict", ()),
    (
        "resume_weights_only",
        lambda d, f: ["--tfds_data_dir", d, "--model", "tiny_cnn", "--resume", f["teacher"]],
        r"--resume '.*teacher.pt' is not a training checkpoint of main.py \(no optimizer, position, rng\); "
        r"to start from its weights pass it as --init_checkpoint",
        (),
    ),
    (
        "resume_other_model",
        lambda d, f: ["--tfds_data_dir", d, "--resume", f["other_run"]],
        r"--resume '.*checkpoint-00000022.pt' is a checkpoint of --model tiny_cnn but this run has --model small_cnn; resume with --model tiny_cnn",
        (),
    ),
    (
        "resume_other_optimizer",
        lambda d, f: ["--tfds_data_dir", d, "--model", "tiny_cnn", "--resume", f["other_opt"]],
        r"is a checkpoint of --opt sgd but this run has --opt adamw",
        (),
    ),
    (
        "resume_is_a_directory",
        lambda d, f: ["--tfds_data_dir", d, "--resume", f["tmp"]],
        r"--resume '.*' does not exist; pass a checkpoint-\*.pt file or --resume auto",
        (),
    ),
    (
        "init_checkpoint_text",
        lambda d, f: ["--tfds_data_dir", d, "--init_checkpoint", f["text"]],
        r"--init_checkpoint '.*notes.txt' is not a readable checkpoint",
        (),
    ),
    (
        "init_checkpoint_missing",
        lambda d, f: ["--tfds_data_dir", d, "--init_checkpoint", "/nonexistent/w.pt"],
        r"--init_checkpoint '/nonexistent/w.pt' does not exist; pass a checkpoint-\*.pt",
        (),
    ),
    (
        "init_checkpoint_other_arch",
        lambda d, f: ["--tfds_data_dir", d, "--init_checkpoint", f["teacher"]],
        r"--init_checkpoint weights in .*teacher.pt do not match the architecture \(another model name, --num_classes or --img_size\?\)",
        (),
    ),
    (
        "teacher_path_text",
        lambda d, f: [
            "--tfds_data_dir",
            d,
            "--model",
            "tiny_cnn",
            "--kd",
            "--distillation_type",
            "soft",
            "--teacher_arch",
            "tiny_cnn",
            "--teacher_path",
            f["text"],
        ],
        r"--teacher_path '.*notes.txt' is not a readable checkpoint",
        (needs_kd,),
    ),
    (
        "teacher_img_size_not_taken",
        lambda d, f: [
            "--tfds_data_dir",
            d,
            "--model",
            "tiny_cnn",
            "--kd",
            "--distillation_type",
            "soft",
            "--teacher_arch",
            "tiny_cnn",
            "--teacher_path",
            f["teacher"],
            "--teacher_img_size",
            "32",
        ],
        r"--teacher_img_size 32 does not apply to model 'tiny_cnn' \(its constructor takes no 'img_size'\); drop --teacher_img_size",
        (needs_kd,),
    ),
    (
        "h5ad_text_file",
        lambda d, f: _h5ad({"h5ad": f["text"]}),
        r"--h5ad_path '.*notes.txt' is not an HDF5 \(.h5ad\) file .*; pass a file written by anndata",
        (needs_h5ad,),
    ),
    (
        "h5ad_counts_in_layers",
        lambda d, f: _h5ad({"h5ad": f["layers_h5ad"]}),
        r"layers.h5ad: no X matrix; found layers/counts: re-save with adata.X set to the matrix",
        (needs_h5ad,),
    ),
    (
        "output_dir_is_a_file",
        lambda d, f: ["--tfds_data_dir", d, "--output_dir", f["as_file"]],
        r"--output_dir '.*a_file' is a file, not a directory; pick a directory path",
        (),
    ),
    (
        "output_dir_not_writable",
        lambda d, f: ["--tfds_data_dir", d, "--output_dir", "/sys/fs/run"],
        r"--output_dir '/sys/fs/run' is not writable \(.*\); pick a directory this process can write",
        (),
    ),
    ("config_is_a_directory", lambda d, f: ["--config", f["tmp"]], r"--config '.*' is a directory; pass a YAML file", ()),
    ("config_invalid_yaml", lambda d, f: ["--config", f["bad_yaml"]], r"--config '.*bad_yaml.yaml' is not valid YAML \(line \d+, column \d+", ()),
    ("config_list_for_a_scalar", lambda d, f: ["--config", f["list_yaml"]], r"config key 'lr' has value \[0.1, 0.2\]; expected a single value, not a list", ()),
    ("config_bool_not_bool", lambda d, f: ["--config", f["bool_yaml"]], r"config key 'tensorboard' has value 'maybe'; use true or false", ()),
    ("config_not_a_mapping", lambda d, f: ["--config", f["scalar_yaml"]], r"--config '.*scalar_yaml.yaml' must hold a mapping of flag names to values", ()),
    # class 2: settings that would train wrong without a word
    (
        "num_classes_below_labels",
        lambda d, f: ["--tfds_data_dir", d, "--num_classes", "5"],
        r"--num_classes 5 is smaller than the 10 classes of sklearn_digits/1.0.0; .* pass >= 10",
        (),
    ),
    (
        "num_classes_vs_onehot",
        lambda d, f: [
            "--tfds_data_dir",
            d,
            "--num_classes",
            "12",
            "--big_vision_pp_train",
            'decode|resize(32)|value_range(-1, 1)|onehot(10, key="label", key_result="labels")|keep("image", "labels")',
        ],
        r"--num_classes 12 does not match the 10-wide one-hot labels of the train pp string",
        (),
    ),
    (
        "warmup_not_below_epochs",
        lambda d, f: ["--epochs", "3", "--warmup_epochs", "3"],
        r"--warmup_epochs 3 >= --epochs 3: the LR would never leave warm-up .*; pick --warmup_epochs below --epochs \(e.g. 0.6\)",
        (),
    ),
    (
        "min_lr_above_lr",
        lambda d, f: ["--lr", "1e-3", "--min_lr", "1e-2"],
        r"--min_lr 0.01 > --lr 0.001: the cosine 'decay' would raise the LR; pick --min_lr <= --lr",
        (),
    ),
    ("warmup_lr_above_lr", lambda d, f: ["--lr", "1e-3", "--warmup_lr", "1e-2"], r"--warmup_lr 0.01 > --lr 0.001", ()),
    ("negative_weight_decay", lambda d, f: ["--weight_decay", "-0.05"], r"--weight_decay must be >= 0, got -0.05", ()),
    (
        "keep_last_zero",
        lambda d, f: ["--keep_last", "0"],
        r"--keep_last must be >= 1, got 0 \(the checkpoint just written is always kept; pass a large number to keep them all\)",
        (),
    ),
    ("nan_lr", lambda d, f: ["--lr", "nan"], r"--lr must be a finite number, got nan", ()),
    ("nan_mixup", lambda d, f: ["--mixup", "nan"], r"--mixup must be a finite number, got nan", ()),
    ("inf_kd_temperature", lambda d, f: ["--kd_temperature", "inf"], r"--kd_temperature must be a finite number, got inf", ()),
    (
        "vit_img_size_vs_pp",
        lambda d, f: ["--tfds_data_dir", d, "--model", "vit_tiny_patch16_224", "--img_size", "48"],
        r"model .vit_tiny_patch16_224. \(.*img_size=48\) does not take the train images of shape \(3, 32, 32\)",
        (),
    ),
    ("inf_weight_decay", lambda d, f: ["--weight_decay", "inf"], r"--weight_decay must be a finite number, got inf", ()),
    ("momentum_above_one", lambda d, f: ["--opt", "sgd", "--momentum", "1.5"], r"--momentum must be in \[0, 1\), got 1.5", ()),
    ("drop_rate_one", lambda d, f: ["--drop_rate", "1.0"], r"--drop_rate must be in \[0, 1\), got 1.0", ()),
    ("layer_decay_zero", lambda d, f: ["--layer_decay", "0"], r"--layer_decay must be in \(0, 1\], got 0.0", ()),
    ("negative_clip_grad", lambda d, f: ["--clip_grad", "-1"], r"--clip_grad must be >= 0, got -1.0", ()),
    ("zero_parallel_calls", lambda d, f: ["--tfds_num_parallel_calls", "0"], r"--tfds_num_parallel_calls must be -1 \(AUTOTUNE\) or >= 1, got 0", ()),
    ("negative_seed", lambda d, f: ["--seed", "-1"], r"--seed must be >= 0, got -1 \(TF seeds are non-negative\)", ()),
    ("zero_img_size", lambda d, f: ["--img_size", "0"], r"--img_size must be > 0, got 0", ()),
    # class 3: flags handed to models that do not take them, checked before the data is built
    (
        "img_size_to_small_cnn",
        lambda d, f: ["--tfds_data_dir", d, "--img_size", "32"],
        r"--img_size 32 does not apply to model 'small_cnn' \(its constructor takes no 'img_size'\); drop --img_size",
        (),
    ),
    ("drop_path_to_small_cnn", lambda d, f: ["--tfds_data_dir", d, "--drop_path_rate", "0.1"], r"--drop_path_rate 0.1 does not apply to model 'small_cnn'", ()),
    (
        "img_size_to_convnext",
        lambda d, f: ["--tfds_data_dir", d, "--model", "convnext_atto", "--img_size", "32"],
        r"--img_size 32 does not apply to model 'convnext_atto'",
        (),
    ),
    (
        "set_model_on_images",
        lambda d, f: ["--tfds_data_dir", d, "--model", "set_transformer"],
        r"model 'set_transformer' does not take 'num_classes', which this data provides; --data_set digits needs an image classifier",
        (),
    ),
    (
        "image_model_on_cells",
        lambda d, f: _h5ad(f)[:-2] + ["--model", "resnet18"],
        r"model 'resnet18' does not take 'n_genes', which this data provides; --data_set h5ad needs a cell-set model",
        (needs_h5ad,),
    ),
    # class 4: messages that pointed at the wrong fix
    (
        "h5ad_nan_values",
        lambda d, f: _h5ad({"h5ad": f["nan_h5ad"]}, "--h5ad_transform", "auto"),
        r"nan.h5ad: X holds nan or inf values \(1 of \d+ sampled values\); clean the matrix",
        (needs_h5ad,),
    ),
]
