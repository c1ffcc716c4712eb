"""Console logging: progress on stdout, problems on stderr; each process at the Trainer's log level for it; the
Trainer's log records as one readable line each (not its raw dicts)."""

import logging
import re
import subprocess
import sys

import pytest
from transformers import TrainingArguments

from adalora_ablation.logs import PACKAGE_LOGGER, configure_console, trainer_log_line, use_process_log_level
from adalora_ablation.run.folder import read_jsonl
from adalora_ablation.train import train


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


def test_trainer_log_line_formats_each_kind_of_record():
    train_record = {"loss": 1.23449, "grad_norm": 0.35281, "learning_rate": 0.0095, "epoch": 0.31746,
                    "total_flos": 12345.0}
    assert trainer_log_line(train_record, 40, 300, 96) == (
        "[train] step 40/300  loss 1.234  grad norm 0.3528  lr 9.50e-03  epoch 0.32  total rank 96")
    evaluation = {"eval_loss": 0.45123, "eval_accuracy": 0.8125, "eval_runtime": 0.08,
                  "eval_samples_per_second": 4632.0, "eval_steps_per_second": 46.3, "epoch": 0.32}
    assert trainer_log_line(evaluation, 40, 300, 96) == "[eval] step 40/300  accuracy 0.8125  loss 0.4512"
    # a task with several eval sets logs each under its own prefix (MNLI: matched, mismatched)
    assert trainer_log_line({"eval_mismatched_loss": 0.5, "eval_mismatched_accuracy": 0.75}, 12, 0, None) == (
        "[eval] step 12  mismatched_accuracy 0.7500  mismatched_loss 0.5")
    end = {"train_runtime": 2.08, "train_samples_per_second": 923.0, "train_steps_per_second": 28.84,
           "total_flos": 1.0, "train_loss": 0.97351, "epoch": 0.95}
    assert trainer_log_line(end, 60, 60, 48) == (
        "[train] finished at step 60/60 in 2.1 s (28.8 steps/s); mean training loss 0.9735")
    assert trainer_log_line({"loss": 2.0e-6, "learning_rate": 1e-5, "num_tokens": 4096}, 5, 10, 8) == (
        "[train] step 5/10  loss 2.00e-06  lr 1.00e-05  num_tokens 4096  total rank 8")
    assert trainer_log_line({"adalora/budget": 62, "adalora/total_rank": 62}, 20, 60, 62) is None
    assert trainer_log_line({"total_flos": 1.0}, 20, 60, 62) is None


@pytest.fixture
def console():
    """The command line's console handlers on the package logger for one test, then as they were."""
    handlers, propagate, level = list(PACKAGE_LOGGER.handlers), PACKAGE_LOGGER.propagate, PACKAGE_LOGGER.level
    configure_console()
    yield
    for handler in list(PACKAGE_LOGGER.handlers):
        if handler not in handlers:
            PACKAGE_LOGGER.removeHandler(handler)
    PACKAGE_LOGGER.propagate, PACKAGE_LOGGER.level = propagate, level


TRAIN_LINE = re.compile(r"\[train\] step (\d+)/60  loss \S+  grad norm \S+  lr \d\.\d\de-\d\d  epoch \d+\.\d\d  "
                        r"total rank (\d+)")
EVAL_LINE = re.compile(r"\[eval\] step (\d+)/60  accuracy (\d\.\d{4})  loss \S+")


@pytest.mark.slow
@pytest.mark.parametrize("disable_tqdm", ["True", "False"])
def test_a_run_prints_one_readable_line_per_log_step_and_no_dicts(tmp_path, console, capfd, disable_tqdm):
    """A real tiny run: every log step a [train] line with the total rank the adapters hold at that step (the
    allocations of rank_pattern.jsonl before it), every evaluation an [eval] line, a summary line at the end; no raw
    dict on either stream, and with --disable-tqdm False the Trainer's progress bar still on stderr."""
    summary = train(["--task", "synthetic", "--signal", "importance_only", "--output-root", str(tmp_path),
                     "--max-steps", "60", "--tinit", "10", "--tfinal", "20", "--deltaT", "10", "--logging-steps", "10",
                     "--eval-strategy", "steps", "--eval-steps", "20", "--save-strategy", "no",
                     "--max-train-samples", "320", "--max-eval-samples", "64", "--report-to", "none",
                     "--disable-tqdm", disable_tqdm])
    printed = capfd.readouterr()
    lines = [line.strip() for text in (printed.out, printed.err) for line in re.split(r"[\r\n]", text)]
    assert not [line for line in lines if line.startswith("{")]
    assert "train_runtime" not in printed.out + printed.err

    run_dir = tmp_path / "synthetic" / "importance_only" / "42"
    allocations = read_jsonl(run_dir / "rank_pattern.jsonl")
    assert [a["step"] for a in allocations] == [20, 30, 40]

    def rank_at(step):  # the log of step N comes after N optimizer steps: allocations at steps 0..N-1
        before = [a["total_rank"] for a in allocations if a["step"] < step]
        return before[-1] if before else summary["initial_budget"]

    train_lines = [TRAIN_LINE.fullmatch(line) for line in printed.out.splitlines() if line.startswith("[train] step")]
    assert all(train_lines), printed.out
    assert [(int(m[1]), int(m[2])) for m in train_lines] == [(s, rank_at(s)) for s in range(10, 61, 10)]
    assert int(train_lines[-1][2]) == summary["total_rank"] == summary["target_budget"]
    assert rank_at(30) < summary["initial_budget"]  # the rank shown follows the allocations

    eval_lines = [EVAL_LINE.fullmatch(line) for line in printed.out.splitlines() if line.startswith("[eval]")]
    assert all(eval_lines), printed.out
    evaluations = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "eval_accuracy" in m]
    assert [(int(m[1]), m[2]) for m in eval_lines] == [(e["step"], f"{e['eval_accuracy']:.4f}") for e in evaluations]
    assert [e["step"] for e in evaluations] == [20, 40, 60, 60]  # the evaluation after training repeats step 60
    assert sum(line.startswith("[train] finished at step 60/60 in ") for line in printed.out.splitlines()) == 1
    bar = re.search(r"60/60 \[", printed.err)
    assert (bar is not None) == (disable_tqdm == "False")
