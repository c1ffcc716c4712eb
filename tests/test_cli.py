"""The command line as a user meets it: flags with dashes or underscores, presets, config files, one-line errors."""

import json
import subprocess
import sys

import pytest

from adalora_ablation.args import parse_train_args
from adalora_ablation.errors import UsageError


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "adalora_ablation", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_dashes_and_underscores_and_preset_precedence():
    run, model, data, ada, training = parse_train_args(
        ["--task", "mnli", "--init-r", "10", "--target_r", "3", "--deltaT", "5", "--max-seq-length", "99",
         "--learning-rate", "1e-4", "--combo-lambda", "0.5", "--normalize-method", "rank",
         "--plasticity-norm", "rms"])
    assert (ada.init_r, ada.target_r, ada.deltaT, data.max_seq_length) == (10, 3, 5, 99)
    assert training.learning_rate == 1e-4 and ada.combo_lambda == 0.5 and ada.normalize_method == "rank"
    assert ada.plasticity_norm == "rms" and parse_train_args([])[3].plasticity_norm == "l2"
    assert training.per_device_train_batch_size == 32  # from configs/mnli.yaml
    assert training.report_to == [] or training.report_to == "none" or training.report_to == ["none"]


def test_paper_preset_values():
    _, _, data, ada, training = parse_train_args(["--task", "rte", "--preset", "paper"])
    assert (training.learning_rate, training.num_train_epochs, data.max_seq_length) == (1.2e-3, 50, 320)
    assert (ada.tinit, ada.tfinal, ada.deltaT, ada.orth_reg_weight, ada.lora_alpha) == (600, 1800, 1, 0.3, 32)
    assert training.warmup_steps == 200 and training.weight_decay == 0.01
    _, _, data, ada, training = parse_train_args(["--task", "mnli", "--preset", "paper"])
    assert (ada.tinit, ada.tfinal, ada.deltaT, ada.orth_reg_weight, ada.lora_alpha) == (8000, 50000, 100, 0.1, 16)
    assert (training.learning_rate, training.num_train_epochs, training.warmup_steps) == (5e-4, 7, 1000)


def test_yaml_and_json_config_files_with_flags_on_top(tmp_path):
    (tmp_path / "c.yaml").write_text("task: mnli\nsignal: combo\ninit_r: 9\nseed: 3\n")
    run, _, _, ada, training = parse_train_args([str(tmp_path / "c.yaml"), "--init-r", "7"])
    assert (run.task, run.signal, ada.init_r, training.seed) == ("mnli", "combo", 7, 3)
    (tmp_path / "c.json").write_text(json.dumps({"task": "rte", "tfinal": 11}))
    run, _, _, ada, _ = parse_train_args([str(tmp_path / "c.json")])
    assert (run.task, ada.tfinal) == ("rte", 11)


@pytest.mark.parametrize("argv, message", [
    (["--task", "wnli"], "unknown task 'wnli'"),
    (["--signal", "magic"], "unknown signal 'magic'"),
    (["--task", "rte", "--preset", "fast"], "no preset 'fast' for task 'rte'"),
    (["--normalize-method", "l2"], "unknown --normalize-method"),
    (["--plasticity-norm", "l1"], "unknown --plasticity-norm 'l1'; choose one of: l2, rms"),
    (["--target-r", "20"], "--target-r 20 must be between 1 and --init-r 12"),
    (["--no-such-flag", "1"], "unrecognized arguments"),
])
def test_bad_arguments_raise_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse_train_args(argv)


def assert_one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()  # progress bars may come first; the error is one line, the last
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == [lines[-1]] and lines[-1].startswith("adalora-ablation: error:") and fragment in lines[-1], lines
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys):
    from adalora_ablation.cli import main

    out = tmp_path / "out"
    # One case through a real process (exit status, no traceback on stderr); the rest through main(), which is what
    # the process runs, so that each case costs no interpreter start.
    assert_one_line_error(cli("train", "--task", "wnli", "--output-root", str(out)), "unknown task")
    cases = [
        (["train", "--task", "rte", "--model", str(tmp_path / "missing"), "--output-root", str(out)],
         "does not exist"),
        (["train", "--task", "rte", "--model", "tiny-deberta", "--data-dir", str(tmp_path / "nodata"),
          "--output-root", str(out)], "missing data file"),
        (["train", "--task", "synthetic", "--max-steps", "100", "--tinit", "90", "--tfinal", "20",
          "--output-root", str(out)], "total_step came out as 100"),
        (["train", "--task", "synthetic", "--load-best-model-at-end", "True", "--eval-strategy", "steps",
          "--save-strategy", "steps", "--output-root", str(out)], "--load-best-model-at-end is not supported"),
        (["fly"], "unknown command 'fly'"),
        (["demo", "--signals", "nope"], "invalid choice"),
    ]
    for argv, fragment in cases:
        code = main(argv)
        captured = capsys.readouterr()
        assert_one_line_error(subprocess.CompletedProcess(argv, code, captured.out, captured.err), fragment)
    assert not out.exists()


def test_finished_run_is_refused_without_overwrite(tmp_path, capsys):
    from adalora_ablation.cli import main

    run_dir = tmp_path / "synthetic" / "combo" / "42"
    run_dir.mkdir(parents=True)
    (run_dir / "final_summary.json").write_text('{"signal": "combo"}')
    code = main(["train", "--task", "synthetic", "--signal", "combo", "--output-root", str(tmp_path)])
    captured = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess([], code, captured.out, captured.err),
                          "already holds a finished run; pass --overwrite")
    assert (run_dir / "final_summary.json").read_text() == '{"signal": "combo"}'


@pytest.mark.slow
def test_run_scripts_pass_signal_seed_and_extra_args(tmp_path):
    """Each of the script's arguments reaches `train`, which refuses it at parse time (before it imports torch):
    the signal (oracle is for --task planted, the script's task is rte), the seed, and the extra flags."""
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "run_rte.sh"
    out = ["--output-root", str(tmp_path / "o")]
    for args, fragment in ((["oracle", "5"], "--signal oracle needs --task planted"),
                           (["combo", "-1"], "--seed -1 must be >= 0"),
                           (["combo", "5", "--target-r", "20"], "--target-r 20 must be between 1 and --init-r 12")):
        result = subprocess.run(["bash", str(script), *args, *out], capture_output=True, text=True, timeout=300)
        assert_one_line_error(result, fragment)
    assert not (tmp_path / "o").exists()
    usage = subprocess.run(["bash", str(script.with_name("run_mnli.sh"))], capture_output=True, text=True)
    assert usage.returncode == 2 and "SIGNAL SEED" in usage.stderr


def test_help_and_docs_show_every_signals_role_and_description(capsys):
    from pathlib import Path

    from adalora_ablation.cli import main
    from adalora_ablation.signals import SIGNALS

    assert main(["train", "--help"]) == 0
    train_help = capsys.readouterr().out
    for flag in ("--task", "--signal", "--data-dir", "--output-root", "--init-r", "--ema-decay", "--combo-lambda",
                 "--max-steps", "--learning-rate"):
        assert flag in train_help
    with pytest.raises(SystemExit) as done:
        main(["ablate", "--help"])
    assert done.value.code == 0
    ablate_help = capsys.readouterr().out
    table = (Path(__file__).resolve().parents[1] / "docs" / "signals.md").read_text().replace("\\|", "|")  # escapes
    for name, cls in SIGNALS.items():
        line = f"  {name:{max(map(len, SIGNALS))}}  {cls.role:8}  {cls.description}"
        assert line in train_help.splitlines() and line in ablate_help.splitlines(), name
        assert f"| `{name}` | {cls.role} | {cls.description} |" in table, name
