"""The command line run inside the test process: its exit code and what it printed, without a new interpreter.

A subprocess pays the imports of torch, transformers and peft (seconds) before it does anything. Where the process
boundary is not what a test checks (a refusal's one line and exit code, a dry run's table, a resume's messages), the
test calls ``cli.main`` here instead: the same dispatch, the same one-line errors and exit codes, the same console
handlers writing to the captured streams.
"""

from __future__ import annotations

import subprocess

from adalora_ablation.cli import main
from adalora_ablation.logs import PACKAGE_LOGGER


def run_cli(capsys, *argv: str) -> subprocess.CompletedProcess:
    """``adalora-ablation *argv`` in this process; returns its exit code, stdout and stderr as ``subprocess.run``
    would. The package logger's console handlers, level and propagation are put back as they were afterwards."""
    handlers, propagate, level = list(PACKAGE_LOGGER.handlers), PACKAGE_LOGGER.propagate, PACKAGE_LOGGER.level
    capsys.readouterr()  # only what this command prints
    try:
        code = main(list(argv))
    finally:
        for handler in list(PACKAGE_LOGGER.handlers):
            if handler not in handlers:
                PACKAGE_LOGGER.removeHandler(handler)
        PACKAGE_LOGGER.propagate, PACKAGE_LOGGER.level = propagate, level
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(["adalora-ablation", *argv], code, printed.out, printed.err)
