"""`--model_kwargs`: constructor arguments from the command line or a recipe mapping, checked against the model before any data is read."""

import pytest

import config
import models


def test_model_kwargs_reach_a_timm_vit(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: vit_tiny_patch16_224\nimg_size: 32\nmodel_kwargs:\n  global_pool: avg\n  class_token: false\n  patch_size: 8\n")
    s = config.parse_settings(["--config", str(recipe)])
    assert s.model.model_kwargs == {"global_pool": "avg", "class_token": False, "patch_size": 8}
    s.model.check_flags("image", "digits")
    model = models.create_model(s.model.model, **s.model.image_kwargs(10))
    assert model.global_pool == "avg" and model.cls_token is None and model.patch_embed.patch_size == (8, 8)
    assert model.pos_embed.shape[1] == (32 // 8) ** 2  # no class token position either


def test_model_kwargs_on_the_command_line_as_yaml_text() -> None:
    s = config.parse_settings(["--model", "small_cnn", "--model_kwargs", "{widths: [8, 16], norm: group}"])
    model = models.create_model("small_cnn", **s.model.image_kwargs(10))
    assert model.num_features == 16 and type(model.features[1]).__name__ == "GroupNorm"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "vit_tiny_patch16_224", "--model_kwargs", "{globl_pool: avg}"], "takes no 'globl_pool'; close matches: global_pool"),
        (["--model", "small_cnn", "--model_kwargs", "{widthz: [8]}"], "close matches: widths"),
        (["--model", "vit_tiny_patch16_224", "--img_size", "32", "--model_kwargs", "{img_size: 64}"], "which --img_size already sets"),
        (["--model", "small_cnn", "--model_kwargs", "{num_classes: 3}"], "which --num_classes already sets"),
    ],
)
def test_bad_model_kwargs_name_the_argument_and_the_fix(argv, message) -> None:
    s = config.parse_settings(argv)
    with pytest.raises(ValueError, match="--model_kwargs") as e:
        s.model.check_flags("image", "digits")
    assert message in str(e.value)


@pytest.mark.parametrize("text", ["{global_pool: avg", "[1, 2]", "16"])
def test_model_kwargs_that_are_not_a_mapping_are_a_usage_error(text, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        config.parse_settings(["--model_kwargs", text])
    assert e.value.code == 2
    assert "--model_kwargs" in capsys.readouterr().err


def test_model_kwargs_cannot_override_what_the_data_sets_for_a_set_model() -> None:
    s = config.parse_settings(["--model", "set_transformer", "--model_kwargs", "{n_genes: 5}"])
    with pytest.raises(ValueError, match="sets 'n_genes', which the data already sets; drop it from --model_kwargs"):
        s.model.cellset_kwargs(n_genes=8, n_perts=2, n_contexts=1)
