"""The `--help` layout of main.py and every tool: each flag's default shown, descriptions kept as written.

argparse's `ArgumentDefaultsHelpFormatter` adds `(default: ...)` only to flags that have a help string; `HelpFormatter` shows it
for every flag, once (not again where the help text already names its default in words), and keeps the line breaks of the
description and epilog (an exit-code list stays a list). stdlib only: a tool's `--help` must not import torch or TensorFlow.
"""

import argparse
import copy
import re

# A help text that names its default in words: "(default: the dataset's)", "(default $TFDS_DATA_DIR ...)", "Default: every context".
SAYS_DEFAULT = re.compile(r"\(default\b|\bdefault:|Default:")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every optional flag's default, unless its help already names it (`SAYS_DEFAULT`)."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.option_strings and not action.help and action.default is not argparse.SUPPRESS:
            action = copy.copy(action)
            action.help = "(default: %(default)s)"  # argparse prints no help line at all for a flag without help text
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or SAYS_DEFAULT.search(text):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with `HelpFormatter` and a two-line error (usage, then the error), not the whole flag list on every typo."""

    def __init__(self, prog: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(prog, **kwargs)

    def error(self, message: str):
        self.exit(2, f"usage: {self.prog} [flags] (--help lists them)\n{self.prog}: error: {message}\n")
