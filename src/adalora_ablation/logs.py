"""Logging: every module logs to ``logging.getLogger(__name__)`` under the package logger configured here.

The command line shows progress (INFO) on stdout and warnings and errors on stderr. During a run each process logs
at the Trainer's level for it (``--log-level``, ``--log-level-replica``): by default the main process shows our
progress and the other processes of a multi-process run only warnings.
"""

from __future__ import annotations

import logging
import sys

PACKAGE_LOGGER = logging.getLogger("adalora_ablation")


class _ConsoleHandler(logging.StreamHandler):
    """Writes to sys.stdout or sys.stderr as they are when each record is written (redirected, captured)."""

    def __init__(self, name: str):
        super().__init__()
        self._stream_name = name

    @property
    def stream(self):
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, _value):  # StreamHandler.__init__ sets it; the property decides
        pass


def configure_console() -> None:
    """Progress on stdout, warnings and errors on stderr, message text only (once per process)."""
    PACKAGE_LOGGER.setLevel(logging.INFO)
    if any(isinstance(h, _ConsoleHandler) for h in PACKAGE_LOGGER.handlers):
        return
    progress = _ConsoleHandler("stdout")
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = _ConsoleHandler("stderr")
    problems.setLevel(logging.WARNING)
    for handler in (progress, problems):
        handler.setFormatter(logging.Formatter("%(message)s"))
        PACKAGE_LOGGER.addHandler(handler)
    PACKAGE_LOGGER.propagate = False  # a root handler (e.g. basicConfig) would print every line twice


def use_process_log_level(training_args) -> None:
    """Log at the Trainer's level for this process. The Trainer's default, "passive", leaves the libraries' own
    levels alone; for our messages it means INFO on the main process (replicas default to "warning")."""
    level = training_args.get_process_log_level()
    if training_args.should_log and training_args.log_level == "passive":
        level = logging.INFO
    PACKAGE_LOGGER.setLevel(level)
