"""Exact resume and crash safety: a run stopped by a signal, killed with SIGKILL and resumed equals the same run
uninterrupted; damaged, unsafe or foreign checkpoints are skipped or refused in one line.

The behaviours about processes (a signal's checkpoint and exit code, a SIGKILL, a failed write under a file-size
limit) run `python -m adalora_ablation train` in subprocesses; the checks of which checkpoint a resume takes run the
command line in this process (tests/cli_in_process.py), on copies of one interrupted run trained here once.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from peft import PeftModel
from transformers import set_seed

from adalora_ablation.adalora.model import TINY_DEBERTA, load_model_and_tokenizer
from adalora_ablation.run.folder import latest_complete_checkpoint, truncate_jsonl, verify_manifest, write_manifest
from adalora_ablation.train import train
from cli_in_process import run_cli

# 120 steps: allocations every 5 steps from 20 to 90 (tinit 15, tfinal 30), checkpoints at 40, 80 and 120
ARGS = ["--task", "synthetic", "--seed", "3", "--max-steps", "120", "--tinit", "15", "--tfinal", "30", "--deltaT", "5",
        "--save-strategy", "steps", "--save-steps", "40", "--logging-steps", "10", "--eval-strategy", "steps",
        "--eval-steps", "60"]


def lines(path):
    return path.read_text().splitlines()


def run_folder(root, signal_name):
    return root / "synthetic" / signal_name / "3"


# Bitwise equality needs every compared run computed under the same settings (CPU matmul reductions differ in the
# last bits between thread counts), so every run compared with the uninterrupted one is a subprocess with this same
# environment.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train_command(*args):
    return [sys.executable, "-m", "adalora_ablation", "train", *ARGS, *args]


def run_train(*args, check=True):
    result = subprocess.run(train_command(*args), capture_output=True, text=True, env=ENV, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def summary_of(run_dir):
    return json.loads((run_dir / "final_summary.json").read_text())


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted combo run the interrupted ones must equal."""
    root = tmp_path_factory.mktemp("straight")
    run_train("--signal", "combo", "--output-root", str(root))
    return run_folder(root, "combo")


def assert_same_run(run_dir, straight_dir):
    resumed, straight = summary_of(run_dir), summary_of(straight_dir)
    for name in ("rank_pattern.jsonl", "signal_scores.jsonl"):
        assert lines(run_dir / name) == lines(straight_dir / name), name
    assert resumed["eval_accuracy"] == straight["eval_accuracy"]
    assert resumed["final_ranks"] == straight["final_ranks"]
    assert resumed["eval_metrics"]["eval_loss"] == straight["eval_metrics"]["eval_loss"]
    return resumed


def wait_for(condition, proc, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.02)


def checkpoint_step(checkpoint):
    return int(checkpoint.name.split("-")[1]) if checkpoint is not None else None


# combo: the signal with the most state. random's generator surviving a checkpoint is shown bit for bit by
# tests/test_warmup.py (runs continued from a shared warm-up's checkpoint equal runs trained alone). SIGTERM and
# SIGUSR1 share one handler (run/preemption.py); SIGTERM's exit 75 is checked by tests/test_run_lock.py and
# tests/test_life.py, in a two-process job by tests/test_distributed.py.
@pytest.mark.slow
def test_a_signalled_then_killed_run_resumes_each_time_and_equals_the_uninterrupted_run(tmp_path, straight_run):
    """One run, interrupted twice: SIGUSR1 in the reduction phase (a checkpoint of the step it is in, exit 75), then,
    resumed from it, SIGKILL after its next periodic checkpoint (whole log lines only); resumed again, it equals
    the uninterrupted run bit for bit, which it can only if both resumes were exact."""
    run_dir = run_folder(tmp_path, "combo")
    command = train_command("--signal", "combo", "--output-root", str(tmp_path))
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    allocations = run_dir / "rank_pattern.jsonl"
    # the reduction phase runs from step 15 to 90; signal after its 3rd allocation (step 30), before checkpoint-40
    wait_for(lambda: allocations.exists() and len(lines(allocations)) >= 3, proc)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 75, err[-2000:]  # "requeue me"
    message = [line for line in err.splitlines() if line.startswith("adalora-ablation: stopped by")]
    step = int(message[0].split("after step ")[1].split(";")[0])
    assert message == [f"adalora-ablation: stopped by SIGUSR1 after step {step}; checkpoint-{step} written; run the "
                       f"same command with --resume True to continue from it"]
    assert 30 <= step < 90  # in the reduction phase
    assert latest_complete_checkpoint(run_dir).name == f"checkpoint-{step}"
    assert not (run_dir / "final_summary.json").exists()

    resume = [*command, "--resume", "True"]
    with open(tmp_path / "resumed.log", "w") as log:
        proc = subprocess.Popen(resume, stdout=log, stderr=subprocess.STDOUT, env=ENV)

        def periodic_checkpoint():
            reached = checkpoint_step(latest_complete_checkpoint(run_dir))
            return reached is not None and step < reached < 120
        wait_for(periodic_checkpoint, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert f"[run] resuming {run_dir} from checkpoint-{step}" in (tmp_path / "resumed.log").read_text()
    assert not (run_dir / "final_summary.json").exists(), "the run finished before it could be killed"
    for name in ("metrics.jsonl", "rank_pattern.jsonl", "signal_scores.jsonl"):
        for line in lines(run_dir / name):
            json.loads(line)  # a SIGKILL leaves only whole lines
    killed_after = latest_complete_checkpoint(run_dir).name

    output = subprocess.run(resume, capture_output=True, text=True, env=ENV, timeout=600)
    assert output.returncode == 0, output.stderr[-3000:]
    assert "resuming with different settings" not in output.stdout + output.stderr
    resumed = assert_same_run(run_dir, straight_run)
    assert resumed["resumed_from"] == killed_after
    # no duplicated or missing log line; the signal's stop logged the loss since the last log line at its step
    steps = [json.loads(line)["step"] for line in lines(run_dir / "metrics.jsonl") if '"loss"' in line]
    assert steps == sorted(set(steps)) and set(steps) == {*range(10, 121, 10), step}


# 40 steps of a signal with little state, checkpoints at 20 and 40: the resume checks below need checkpoints, not
# a long run
SHORT = ["--signal", "importance_only", "--max-steps", "40", "--tinit", "10", "--tfinal", "10", "--save-steps", "20",
         "--eval-strategy", "no"]


@pytest.fixture(scope="module")
def _interrupted_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupted")
    train([*ARGS, *SHORT, "--output-root", str(root)])
    run_dir = run_folder(root, "importance_only")
    (run_dir / "final_summary.json").unlink()
    shutil.rmtree(run_dir / "final_adapter")
    return run_dir


@pytest.fixture
def interrupted_run(_interrupted_template, tmp_path):
    """A run folder as an interruption after step 40 leaves it: checkpoints 20 and 40, no final files."""
    run_dir = run_folder(tmp_path, "importance_only")
    shutil.copytree(_interrupted_template, run_dir)
    return run_dir


def resume_short(capsys, root, *args):
    """``train`` over the interrupted run's folder with --resume True, in this process (exit code, stdout, stderr)."""
    return run_cli(capsys, "train", *ARGS, *SHORT, "--output-root", str(root), "--resume", "True", *args)


class RunsCode:
    """An object whose unpickling runs code: it would create the file at ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow
def test_resume_never_unpickles_code_and_falls_back_to_an_older_checkpoint(interrupted_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    newest = interrupted_run / "checkpoint-40"
    torch.save({"state": RunsCode(marker)}, newest / "adalora_allocator.pt")
    torch.save({"state": RunsCode(marker)}, interrupted_run / "checkpoint-20" / "optimizer.pt")
    for checkpoint in ("checkpoint-20", "checkpoint-40"):  # whoever crafted the files can write manifests too
        write_manifest(interrupted_run / checkpoint)

    refused = resume_short(capsys, tmp_path, "--resume-fallback", "stop")
    assert refused.returncode == 2 and not marker.exists()
    error = [line for line in refused.stderr.splitlines() if line.startswith("adalora-ablation: error:")]
    assert len(error) == 1 and "Traceback" not in refused.stderr
    assert str(newest / "adalora_allocator.pt") in error[0]
    assert str(interrupted_run / "checkpoint-20" / "optimizer.pt") in error[0]

    (interrupted_run / "checkpoint-20" / "optimizer.pt").unlink()  # an optimizer-less checkpoint still resumes
    write_manifest(interrupted_run / "checkpoint-20")
    resumed = resume_short(capsys, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not marker.exists()
    skipped = f"skipping checkpoint-40: {newest / 'adalora_allocator.pt'} cannot be loaded safely"
    assert skipped in resumed.stdout + resumed.stderr
    assert summary_of(interrupted_run)["resumed_from"] == "checkpoint-20"


@pytest.mark.slow
def test_resume_under_other_settings_says_so_once(interrupted_run, tmp_path, capsys):
    path = interrupted_run / "checkpoint-40" / "adalora_allocator.pt"
    state = torch.load(path, weights_only=True)
    assert state["settings"]["intra_op_threads"] == 1  # recorded from the process that wrote the checkpoint
    assert state["rank_pattern"] is not None  # the pattern in force, not the None the adapters are saved under
    state["settings"]["intra_op_threads"] = 7
    torch.save(state, path)
    write_manifest(path.parent)
    result = resume_short(capsys, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if "resuming with different settings" in line]
    assert warnings == ["[run] resuming with different settings (intra_op_threads 7 -> 1): the result may differ "
                        "in the last bits from an uninterrupted run"]


@pytest.mark.slow
def test_final_adapter_is_pruned_and_reloads_with_the_same_accuracy(straight_run):
    summary = summary_of(straight_run)
    adapter_dir = straight_run / "final_adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert sum(sum(v) for v in config["rank_pattern"].values()) == summary["total_rank"]

    set_seed(3)  # tiny-deberta's random base weights come from the run's seed, as in train()
    base, tokenizer = load_model_and_tokenizer(TINY_DEBERTA, ("entailment", "not_entailment"))
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    lora_e = [p for n, p in model.named_parameters() if "lora_E" in n]
    assert sum(p.shape[0] for p in lora_e) == summary["total_rank"]  # really pruned, not masked
    from adalora_ablation.data.loading import synthetic_task

    dev = synthetic_task()["validation"]
    with torch.no_grad():
        enc = tokenizer(list(dev["sentence1"]), list(dev["sentence2"]), padding=True, truncation=True, max_length=16,
                        return_tensors="pt")
        predictions = model(**enc).logits.argmax(-1)
    accuracy = (predictions == torch.tensor(list(dev["label"]))).float().mean().item()
    assert accuracy == pytest.approx(summary["eval_accuracy"], abs=1e-9)
    # the accuracy the adapters make: a reload that lost them would not reach it
    assert abs(summary["eval_accuracy"] - summary["eval_accuracy_without_adapters"]) > 0.05


def test_resume_without_checkpoint_starts_fresh_and_truncation_drops_torn_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "tor')
    assert truncate_jsonl(path, lambda r: r["step"] < 3) == 2
    assert lines(path) == ['{"step": 1}', '{"step": 2}']


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_skipped_for_the_newest_that_verifies(interrupted_run, tmp_path, capsys):
    damaged = interrupted_run / "checkpoint-40" / "adalora_allocator.pt"
    damaged.write_bytes(damaged.read_bytes()[:100])  # a half-copied file
    (interrupted_run / "checkpoint-60").mkdir()  # a checkpoint whose writing was cut off before its manifest
    resumed = resume_short(capsys, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    skipped = f"[run] skipping checkpoint-40: {damaged} has 100 bytes, the manifest says"
    assert skipped in resumed.stdout + resumed.stderr
    assert summary_of(interrupted_run)["resumed_from"] == "checkpoint-20"
    assert not (interrupted_run / "checkpoint-60").exists()  # the abandoned future is removed ...
    verify_manifest(interrupted_run / "checkpoint-40")  # ... and checkpoint-40 written anew


@pytest.mark.slow
def test_a_run_whose_checkpoints_all_fail_starts_over(interrupted_run, tmp_path, capsys):
    for checkpoint in ("checkpoint-20", "checkpoint-40"):
        (interrupted_run / checkpoint / "scheduler.pt").write_bytes(b"damaged")
    result = resume_short(capsys, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert f"[run] no checkpoint of {interrupted_run} verifies; starting over" in output
    summary = summary_of(interrupted_run)
    assert summary["resumed_from"] is None and summary["budget_check_passed"]
    steps = [json.loads(line)["step"] for line in lines(interrupted_run / "metrics.jsonl") if '"loss"' in line]
    assert steps == sorted(set(steps))  # the old logs went with the old run


@pytest.mark.slow
def test_a_failed_checkpoint_write_stops_the_run_in_one_line_and_the_last_verified_one_stays_resumable(
        interrupted_run, tmp_path, capsys):
    shutil.rmtree(interrupted_run / "checkpoint-40")

    def small_files_only():  # as a full disk would: writing more than 64 KiB to one file fails (EFBIG)
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))

    # a subprocess: the file-size limit holds for a whole process
    result = subprocess.run(train_command(*SHORT, "--output-root", str(tmp_path), "--resume", "True"),
                            capture_output=True, text=True, env=ENV, timeout=600, preexec_fn=small_files_only)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("adalora-ablation: error:")]
    # the cause as the serializer words it: safetensors passes the OS error on ("File too large"), torch.save
    # (optimizer.pt, the first file over the limit when the Trainer writes the adapters pruned) its own position check
    assert len(error) == 1 and ("File too large" in error[0] or "unexpected pos" in error[0]), result.stderr[-2000:]
    assert f"cannot write checkpoint {interrupted_run / 'checkpoint-40'}" in error[0]
    assert latest_complete_checkpoint(interrupted_run).name == "checkpoint-20"  # the cut-off one has no manifest

    resumed = resume_short(capsys, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert summary_of(interrupted_run)["resumed_from"] == "checkpoint-20"


@pytest.mark.slow
def test_a_checkpoint_resumes_only_under_the_settings_that_wrote_it(interrupted_run, tmp_path, capsys):
    recorded = json.loads((interrupted_run / "checkpoint-40" / "run_settings.json").read_text())
    assert recorded["settings"]["target_r"] == 4 and recorded["settings"]["max_steps"] == 40
    result = resume_short(capsys, tmp_path, "--target-r", "2")
    error = [line for line in result.stderr.splitlines() if line.startswith("adalora-ablation: error:")]
    assert result.returncode == 2 and len(error) == 1, result.stderr[-2000:]
    assert "checkpoint-40 was written with other settings (target_r: 4 in the checkpoint, 2 asked)" in error[0]
    assert latest_complete_checkpoint(interrupted_run).name == "checkpoint-40"  # nothing rewound or removed
    assert not (interrupted_run / "final_summary.json").exists()


@pytest.mark.slow
def test_a_checkpoint_from_before_recorded_settings_is_checked_by_its_signal_settings(interrupted_run, tmp_path,
                                                                                      capsys):
    for folder in (interrupted_run, *interrupted_run.glob("checkpoint-*")):
        (folder / "run_settings.json").unlink()
        if folder != interrupted_run:
            write_manifest(folder)
    result = resume_short(capsys, tmp_path, "--ema-decay", "0.8")
    error = [line for line in result.stderr.splitlines() if line.startswith("adalora-ablation: error:")]
    assert result.returncode == 2 and len(error) == 1, result.stderr[-2000:]
    assert "was written with --ema-decay 0.9 (now 0.8)" in error[0]


def ablate_dry_run(capsys, root, *args):
    """ablate --dry-run over the interrupted run's grid cell (synthetic/importance_only/3) with SHORT's settings."""
    train_flags = [a for a in ARGS if a not in ("--task", "synthetic", "--seed", "3")] + SHORT[2:]
    return run_cli(capsys, "ablate", "--task", "synthetic", "--signals", "importance_only", "--seeds", "3",
                   "--output-root", str(root), "--dry-run", *train_flags, *args)


@pytest.mark.slow
def test_ablate_resumes_a_checkpoint_only_under_its_settings_and_a_one_value_sweep_is_no_sweep(interrupted_run,
                                                                                                tmp_path, capsys):
    same = ablate_dry_run(capsys, tmp_path, "--sweep", "target_r=4")  # one value: the plain flag, today's folder
    assert same.returncode == 0, same.stderr[-2000:]
    assert "| synthetic | importance_only | 3 | would resume | from checkpoint-40 |" in same.stdout
    other = ablate_dry_run(capsys, tmp_path, "--sweep", "target_r=2")
    assert other.returncode == 0, other.stderr[-2000:]
    assert ("| synthetic | importance_only | 3 | other settings | target_r: 4 in the checkpoint, 2 asked |"
            in other.stdout)
