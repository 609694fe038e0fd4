"""CLI and YAML config: defaults from the recipe, flags override, unknown keys and bad values stop early."""

import pytest
import yaml

import main


def test_yaml_sets_defaults_and_flags_override(tmp_path):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("lr: 0.01\nbatch_size: 32\nmodel: tiny_cnn\n")
    args = main.parse_args(["--config", str(cfg), "--lr", "0.5"])
    assert (args.lr, args.batch_size, args.model) == (0.5, 32, "tiny_cnn")
    assert args.eval_batch_size == 32, "eval batch defaults to the train batch"


def test_unknown_yaml_key_suggests_the_flag(tmp_path, capsys):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("learning_rate: 0.01\nbatch_szie: 8\n")
    with pytest.raises(SystemExit) as e:
        main.parse_args(["--config", str(cfg)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key 'learning_rate'" in err or "unknown key 'batch_szie'" in err
    cfg.write_text("batch_szie: 8\n")
    with pytest.raises(SystemExit):
        main.parse_args(["--config", str(cfg)])
    assert "did you mean 'batch_size'?" in capsys.readouterr().err


def test_wrong_type_in_yaml_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("epochs: many\n")
    with pytest.raises(SystemExit):
        main.parse_args(["--config", str(cfg)])
    assert "'epochs' has value 'many'" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--lr", "-1"), ("--batch_size", "0")])
def test_non_positive_values_are_rejected(flag, value, capsys):
    with pytest.raises(SystemExit):
        main.parse_args([flag, value])
    assert f"{flag} must be > 0" in capsys.readouterr().err


def test_resolved_args_round_trip_through_yaml(tmp_path):
    args = main.parse_args(["--lr", "0.25"])
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(main.get_resolved_config(args)))
    again = main.parse_args(["--config", str(tmp_path / "args.yaml")])
    assert main.get_resolved_config(again) == main.get_resolved_config(args)
