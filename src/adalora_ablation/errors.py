"""Errors a user can fix: printed as one line, exit code 2, no traceback."""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """Bad input (arguments, paths, versions). The message names the problem and the fix."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming the fix (a UsageError) instead of usage + error.

    Every command's parser is one of these (``train``'s mixes it into HfArgumentParser); ``prog`` ends with the
    command's name, which the message points to."""

    def error(self, message):
        raise UsageError(f"{message} (see 'adalora-ablation {self.prog.split()[-1]} --help')")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
