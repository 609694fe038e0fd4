"""main.py's parser: the flag table of `cli/` plus --config, --config_ignore and --list_models; stdlib only, so `--help` never imports torch.

`config.py` builds settings from what this parser returns; main.py answers `--help` with it before importing anything heavy.
"""

import argparse

from cli import FLAG_GROUPS
from cli.help import HelpFormatter

DESCRIPTION = (
    "Train a backbone: python main.py [--config recipe.yaml] [--flag value ...]. "
    "With no arguments it trains the default model on the embedded digits dataset on CPU."
)
EPILOG = """exit codes:
  0    trained to the end
  1    a bug: any other exception, with its traceback
  2    bad input: one `error: ...` line naming the value and the fix (flags, start-up checks, a corrupt record)
  3    the loss or gradient norm became nan or inf; the last good checkpoint is kept
  4    writing to --output_dir failed during training (disk full, read-only, permissions); earlier checkpoints are intact
  130  SIGINT, 143 SIGTERM (128 + the signal): the step in flight finishes, a checkpoint is written, `stopped: ...` says how to resume
"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line usage on errors: the full flag list is `--help`'s job, not every typo's."""

    def error(self, message: str):
        self.exit(
            2, f"usage: {self.prog} [--config recipe.yaml] [--flag value ...] (python {self.prog} --help lists the flags)\n{self.prog}: error: {message}\n"
        )


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("main.py", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument(
        "--config",
        default=None,
        help="YAML recipe, or a big_vision config file FILE.py[:ARG] (its get_config(ARG) mapped onto these flags); "
        "its values are defaults for the flags below, which override them",
    )
    p.add_argument("--config_ignore", nargs="+", default=None, metavar="FIELD", help="big_vision config fields to drop, e.g. fewshot evals.real")
    p.add_argument("--list_models", default=None, nargs="?", const="", metavar="PATTERN", help="print model names (optionally matching PATTERN) and exit")
    for group in FLAG_GROUPS:
        group.add_flags(p)
    return p


def wants_help(argv: list[str]) -> bool:
    """`--help` or `-h` without a recipe (a recipe's values become the defaults --help shows, so that path parses the recipe first)."""
    return any(a in ("-h", "--help") for a in argv) and not any(a == "--config" or a.startswith("--config=") for a in argv)
