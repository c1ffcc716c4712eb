"""The command line answers before it imports torch, transformers or peft: ``--help``, ``--version`` and every
one-line usage error of train, ablate, report, plot and demo (a cluster login node pays tens of seconds for that
import). And train's flag list (configs/trainer_flags.json) is the installed transformers' TrainingArguments."""

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "transformers", "peft", "datasets")
CONFIG = "cfg.yaml"  # written by the probe into its working folder

# (argv, expected exit code, a piece of what it prints: stdout for 0, the one-line error for 2)
CASES = [
    (["--version"], 0, "adalora-ablation "),
    (["train", "--help"], 0, "--per_device_train_batch_size"),
    (["train", "--version"], 0, "adalora-ablation "),
    (["train", "--task", "nope"], 2, "unknown task 'nope'"),
    (["train", "--task", "rte", "--signal", "oracle"], 2, "--signal oracle needs --task planted"),
    (["train", "--learning_rate", "fast"], 2, "invalid float value: 'fast'"),
    (["train", "--optim", "nope"], 2, "invalid choice: 'nope'"),
    (["train", "--seed", "-1"], 2, "--seed -1 must be >= 0"),
    (["train", "--init-r", "4", "--target-r", "8"], 2, "--target-r 8 must be between 1 and --init-r 4"),
    (["train", "--no-such-flag", "1"], 2, "unrecognized arguments: --no-such-flag 1"),
    (["train", "--task", "rte", CONFIG], 2, f"unrecognized arguments: {CONFIG}"),
    (["train", "--task", "rte", "--preset", "nope"], 2, "no preset 'nope' for task 'rte'"),
    (["train", "missing.yaml"], 2, "cannot read config file missing.yaml"),
    (["ablate", "--help"], 0, "--no-share-warmup"),
    (["ablate", "--version"], 0, "adalora-ablation "),
    (["ablate", "--seeds", "-1"], 2, "seeds are numbers >= 0"),
    (["ablate", "--task", "nope"], 2, "invalid choice: 'nope'"),
    (["ablate", "--time", "1:00:00"], 2, "--time is for --launcher slurm"),
    (["ablate", "--task", "synthetic", "--init-r", "4", "--target-r", "8"], 2, "--target-r 8 must be between"),
    (["ablate", "--task", "synthetic", "--no-such-flag", "1"], 2, "unrecognized arguments: --no-such-flag 1"),
    (["ablate", "--task", "synthetic", "--sweep", "logging_steps=1,2"], 2, "does not change a run's result"),
    (["ablate", "--task", "synthetic", "--sweep", "target_r=2,9", "--init-r", "8"], 2, "variant target_r=9"),
    (["ablate", "--task", "synthetic", "--max_steps", "5", CONFIG], 2, f"unrecognized arguments: {CONFIG}"),
    (["report", "--help"], 0, "--detect"),
    (["report", "--version"], 0, "adalora-ablation "),
    (["report", "--task", "rte", "--format", "nope"], 2, "invalid choice: 'nope'"),
    (["report"], 2, "the following arguments are required: --task"),
    (["plot", "--help"], 0, "--compare"),
    (["plot", "--version"], 0, "adalora-ablation "),
    (["plot", "--task", "rte", "--seed", "x"], 2, "invalid int value: 'x'"),
    (["demo", "--help"], 0, "--max-steps"),
    (["demo", "--version"], 0, "adalora-ablation "),
    (["demo", "--task", "nope"], 2, "invalid choice: 'nope'"),
    (["demo", "--seed", "-1"], 2, "--seed -1 must be >= 0"),
    (["demo", "--max-steps", "x"], 2, "invalid int value: 'x'"),
    (["demo", "--jobs", "0"], 2, "--jobs: must be at least 1 (got 0)"),
]

PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    from adalora_ablation.cli import main

    open(sys.argv[1], "w").write("task: synthetic\\n")
    results = []
    for argv in json.loads(sys.argv[2]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's --help and --version
                code = exc.code
        heavy = sorted(m for m in {heavy!r} if m in sys.modules)
        results.append({{"code": code, "out": out.getvalue(), "err": err.getvalue(), "heavy": heavy}})
    print(json.dumps(results))
""").format(heavy=HEAVY)


def run_probe(folder, cases, probe=PROBE):
    result = subprocess.run([sys.executable, "-c", probe, CONFIG, json.dumps(cases)], capture_output=True, text=True,
                            timeout=300, cwd=folder)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_answers_before_importing_the_training_stack(tmp_path):
    """Every case in one interpreter (one test, so that two test workers do not start it twice), the loaded
    modules checked after each: every case that loads torch or answers otherwise is named."""
    from adalora_ablation.args import trainer_flags

    # On a release other than the packaged file's, the first call caches its flags (one import) in this test's cache
    # folder, where the probe looks; an earlier test in this process may have read them already, under its own.
    trainer_flags.cache_clear()
    trainer_flags()
    answers = run_probe(tmp_path, [argv for argv, _, _ in CASES])
    assert len(answers) == len(CASES)
    wrong = []
    for (argv, code, text), got in zip(CASES, answers):
        command = " ".join(argv)
        lines = got["err"].strip().splitlines()
        if got["heavy"]:
            wrong.append(f"{command} imported {got['heavy']}")
        elif got["code"] != code:
            wrong.append(f"{command} exited {got['code']}, not {code}: {got}")
        elif code == 0 and text not in got["out"]:
            wrong.append(f"{command} printed no {text!r}: {got['out'][-300:]}")
        elif code != 0 and not (len(lines) == 1 and lines[0].startswith("adalora-ablation: error: ")
                                and text in lines[0]):
            wrong.append(f"{command} gave not the one-line error {text!r}: {got['err']}")
    assert not wrong, "\n".join(wrong)


def test_the_probe_sees_an_import_of_torch(tmp_path):
    """The check above can fail: a command that does import torch is caught."""
    code = PROBE.replace("code = main(argv)", "import torch; code = 0")
    assert "torch" in run_probe(tmp_path, [["--version"]], probe=code)[0]["heavy"]


def test_train_help_lists_every_flag_train_accepts():
    """train --help is complete: every TrainingArguments flag and every one of ours, with its help."""
    from transformers import HfArgumentParser, TrainingArguments

    from adalora_ablation.args import RUN_CLASSES, help_text

    text = help_text()
    reference = HfArgumentParser((*RUN_CLASSES, TrainingArguments))
    missing = [opt for action in reference._actions for opt in action.option_strings if opt not in text]
    assert missing == []
    learning_rate_help = TrainingArguments.__dataclass_fields__["learning_rate"].metadata["help"]
    assert "Scoring signal" in text and learning_rate_help in text  # the installed release's own wording


def test_train_reads_the_installed_transformers_flags(tmp_path, monkeypatch):
    """train's flags are the installed transformers' TrainingArguments: configs/trainer_flags.json (what
    scripts/make_trainer_flags.py writes) when that release is installed, else a copy cached once per release."""
    import importlib.metadata

    from adalora_ablation import args

    monkeypatch.setenv("ADALORA_CACHE", str(tmp_path))
    args.trainer_flags.cache_clear()
    try:
        expected = args.trainer_flags_of_transformers()
        assert args.trainer_flags() == expected["flags"]
    finally:
        args.trainer_flags.cache_clear()
    packaged = json.loads(args.TRAINER_FLAGS.read_text(encoding="utf-8"))
    cached = sorted(p.name for p in tmp_path.iterdir())
    if packaged["transformers"] == importlib.metadata.version("transformers"):
        assert packaged["flags"] == expected["flags"] and cached == []
    else:
        assert cached == [f"trainer_flags-transformers-{expected['transformers']}.json"]


def test_our_flags_are_made_as_hf_argument_parser_makes_them():
    """The run's four groups parse as they did under HfArgumentParser: the same options, defaults, nargs, const."""
    import argparse

    from transformers import HfArgumentParser

    from adalora_ablation.args import RUN_CLASSES, add_dataclass_flags

    def described(parser):
        return sorted((tuple(a.option_strings), a.dest, a.nargs, a.const, repr(a.default), type(a).__name__,
                       getattr(a.type, "__name__", None)) for a in parser._actions if a.dest != "help")

    for cls in RUN_CLASSES:
        ours = argparse.ArgumentParser()
        add_dataclass_flags(ours, cls)
        assert described(ours) == described(HfArgumentParser(cls)), cls.__name__


def test_settings_parsed_without_transformers_build_the_same_training_arguments():
    """Trainer flags are checked here and read by TrainingArguments' own parser: the result is HfArgumentParser's."""
    from transformers import HfArgumentParser, TrainingArguments

    from adalora_ablation.args import parse_settings

    flags = ["--learning-rate", "1e-3", "--fp16", "False", "--optim", "sgd", "--lr_scheduler_type=cosine",
             "--debug", "underflow_overflow", "--no_remove_unused_columns", "--report_to", "tensorboard", "--use_cpu"]
    settings = parse_settings(["--task", "rte", "--preset", "paper", *flags])
    (expected,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        args=["--report_to", "none", "--save_total_limit", "2", "--logging_steps", "10", "--disable_tqdm", "True",
              "--learning_rate", "1.2e-3", "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64",
              "--num_train_epochs", "50", "--warmup_steps", "200", "--weight_decay", "0.01", "--eval_strategy", "epoch",
              "--save_strategy", "epoch", *flags])
    assert settings.training.to_dict() == expected.to_dict()
    assert settings.training.learning_rate == 1e-3 and settings.training.report_to == ["tensorboard"]
    assert settings.training.remove_unused_columns is False
