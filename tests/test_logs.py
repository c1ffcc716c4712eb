"""Console logging: progress on stdout, problems on stderr; each process at the Trainer's log level for it."""

import logging
import subprocess
import sys

import pytest
from transformers import TrainingArguments

from adalora_ablation.logs import PACKAGE_LOGGER, use_process_log_level


@pytest.fixture
def restore_level():
    level = PACKAGE_LOGGER.level
    yield
    PACKAGE_LOGGER.setLevel(level)


@pytest.mark.parametrize("log_level, expected", [("passive", logging.INFO), ("warning", logging.WARNING),
                                                  ("debug", logging.DEBUG)])
def test_main_process_logs_at_the_trainers_level(tmp_path, restore_level, log_level, expected):
    use_process_log_level(TrainingArguments(output_dir=str(tmp_path), log_level=log_level, report_to="none"))
    assert PACKAGE_LOGGER.level == expected


def test_progress_on_stdout_warnings_on_stderr():
    code = ("import logging; from adalora_ablation.logs import configure_console; configure_console(); "
            "configure_console(); log = logging.getLogger('adalora_ablation.x'); log.info('progress'); "
            "log.warning('problem'); log.debug('hidden')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (result.stdout, result.stderr) == ("progress\n", "problem\n")
