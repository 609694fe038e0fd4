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


def test_list_models_into_a_closed_pipe_is_not_a_traceback():
    """`python main.py --list_models | head -1`: the reader closes the pipe early; the program exits 141 (SIGPIPE) without a traceback."""
    import os
    import subprocess
    import sys

    from tests import proc

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with proc.Popen([sys.executable, "main.py", "--list_models"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        child.stdout.close()  # the reader is gone before the list is written, as `head` that has read its lines
        stderr = child.stderr.read().decode()
        child.wait(timeout=120)
    assert child.returncode == 141, stderr[-2000:]
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-2000:]
