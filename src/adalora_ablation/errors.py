"""What the command line turns into one line and an exit status: errors a user can fix (exit 2, no traceback) and
an interruption that asks to be requeued."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version


class UsageError(Exception):
    """Bad input (arguments, paths, versions). The message names the problem and the fix."""


class RunFileError(UsageError):
    """A file of the run could not be written (full disk, quota, ...): one line naming it; the run stops, and its
    last verified checkpoint stays resumable."""


# Exit status of a run that stopped on a signal after writing a checkpoint: "requeue me, I will resume".
REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "temporary failure; the user is invited to retry"


class RunInterrupted(Exception):
    """The run stopped on a signal; the command exits with REQUEUE_EXIT_CODE. With a step: after writing
    checkpoint-<step>; without one: before training had anything worth keeping."""

    def __init__(self, signal_name: str, step: int | None, checkpoint: str | None):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        if checkpoint is None:
            message = (f"stopped by {signal_name} before training started, with nothing to keep; run the same "
                       f"command to start it again")
        else:
            message = (f"stopped by {signal_name} after step {step}; {checkpoint} written; run the same command "
                       f"with --resume True to continue from it")
        super().__init__(message)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming the fix (a UsageError) instead of usage + error.

    Every command's parser is one of these; ``prog`` ends with the command's name, which the message points to.
    Each answers ``--version`` too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=version_line())

    def error(self, message):
        raise UsageError(f"{message} (see 'adalora-ablation {self.prog.split()[-1]} --help')")


def checked(parse, kind=str):
    """An argparse type from a parser that raises ValueError, so its message becomes the one-line error."""
    def convert(text):
        try:
            return parse(kind(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def at_least(minimum):
    def check(value):
        if value < minimum:
            raise ValueError(f"must be at least {minimum} (got {value})")
        return value
    return check


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def version_line() -> str:
    """``adalora-ablation 0.1.0``: what ``--version`` prints (read without importing anything heavy)."""
    try:
        return f"adalora-ablation {version('adalora-ablation')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "adalora-ablation (version unknown: not installed)"
