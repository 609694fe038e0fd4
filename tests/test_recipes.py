"""Every recipe under train/recipes/ runs on CPU in `--smoke` mode (big_vision's runlocal): its own settings, a tiny model of its family,
embedded data, 2 steps; the settings a smoke run does not shrink reach the run unchanged."""

import glob
import os
import sys

import pytest
import yaml

from tests import proc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "train", "recipes", "*.yaml")))
NEEDS_TEACHER = {"kd_digits_student.yaml": "kd_digits_teacher.yaml"}  # the teacher's smoke checkpoint is the student's --teacher_path
# Recipes that are another recipe with only these keys changed: checked key by key instead of run again (the suite's time).
VARIANTS = {"vit_s16_i1k_300ep.yaml": ("vit_s16_i1k.yaml", {"epochs"})}


def run_smoke(recipe_fpath: str, out_dpath: str, tfds_dpath: str, *extra: str) -> tuple[str, dict]:
    env = {**os.environ, "TFDS_DATA_DIR": tfds_dpath, "PJRT_DEVICE": "CPU"}
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config", recipe_fpath, "--smoke", "--output_dir", out_dpath, *extra]
    result = proc.run(cmd, timeout=400, env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(out_dpath, "args.yaml")) as fd:
        return result.stdout + result.stderr, yaml.safe_load(fd)


@pytest.fixture(scope="module")
def tfds_dpath(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def test_recipes_exist() -> None:
    assert len(RECIPES) >= 5, RECIPES


@pytest.mark.parametrize("recipe_fpath", [r for r in RECIPES if os.path.basename(r) not in {*NEEDS_TEACHER, *VARIANTS}], ids=os.path.basename)
def test_recipe_smoke_runs(recipe_fpath, tmp_path, tfds_dpath) -> None:
    with open(recipe_fpath) as fd:
        recipe = yaml.safe_load(fd)
    log, resolved = run_smoke(recipe_fpath, str(tmp_path / "out"), tfds_dpath)
    assert "--smoke: " in log and "final: " in log
    assert glob.glob(str(tmp_path / "out" / "checkpoint-*.pt"))
    assert resolved["smoke"] is True and resolved["max_steps_per_epoch"] == 2
    # What smoke does not shrink is the recipe's: pp strings, optimizer, mixup, model options.
    for key in ("big_vision_pp_train", "big_vision_pp_eval", "opt", "lr", "weight_decay", "mixup", "model_kwargs", "set_loss", "clip_grad"):
        if key in recipe:
            assert resolved[key] == recipe[key], key


def test_distillation_recipe_smoke_runs_from_the_teacher_recipe(tmp_path, tfds_dpath) -> None:
    for student, teacher in NEEDS_TEACHER.items():
        run_smoke(os.path.join(ROOT, "train", "recipes", teacher), str(tmp_path / "teacher"), tfds_dpath)
        (teacher_fpath,) = glob.glob(str(tmp_path / "teacher" / "checkpoint-*.pt"))
        log, resolved = run_smoke(os.path.join(ROOT, "train", "recipes", student), str(tmp_path / "student"), tfds_dpath, "--teacher_path", teacher_fpath)
        assert resolved["kd"] is True and "final: " in log


def test_smoke_swaps_models_for_the_tiny_one_of_their_family() -> None:
    import config

    args = config.parse_args(["--model", "vit_small_patch16_224", "--data_set", "tfds", "--tfds_name", "imagenet2012", "--smoke"])
    assert (args.model, args.img_size, args.data_set, args.batch_size) == ("test_vit", 224, "photos", 8)
    assert config.get_smoke_model("convnext_tiny") == "test_convnext" and config.get_smoke_model("small_cnn") == "small_cnn"


def test_recipe_variants_differ_from_their_base_only_where_named() -> None:
    for variant, (base, keys) in VARIANTS.items():
        with open(os.path.join(ROOT, "train", "recipes", variant)) as fd:
            a = yaml.safe_load(fd)
        with open(os.path.join(ROOT, "train", "recipes", base)) as fd:
            b = yaml.safe_load(fd)
        assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == keys, variant
