"""Scale-out on CPU: two DDP processes (gloo) apply identical masks and survive pre-emption; bf16 and fp16 work."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
import torch
import transformers

from adalora_ablation.run.folder import latest_complete_checkpoint, read_jsonl, verify_manifest
from adalora_ablation.run.lock import LOCK_FILE
from adalora_ablation.run.resume import AdaLoraTrainer
from adalora_ablation.train import train

def free_port() -> int:
    """A port no process listens on now: fixed ports collide when xdist runs the module-scoped uninterrupted run on
    both workers at once, or when another suite runs on the same machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY = ["--task", "synthetic", "--tinit", "10", "--tfinal", "20", "--deltaT", "10", "--save-strategy", "no",
        "--eval-strategy", "no", "--logging-steps", "10"]
NO_TORCHRUN = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")

# One two-process job's flags, for the uninterrupted run and the interrupted ones compared with it: 640 rows / 16 per
# device / 2 processes = 20 optimizer steps per epoch, 3 epochs; allocations at steps 20, 30 and 40. Checkpoints only
# when a signal asks for one.
DDP = ["--task", "synthetic", "--signal", "combo", "--tinit", "10", "--tfinal", "20", "--deltaT", "10",
       "--save-strategy", "steps", "--save-steps", "10000", "--eval-strategy", "no", "--logging-steps", "10",
       "--max-train-samples", "640", "--per-device-train-batch-size", "16", "--max-steps", "-1",
       "--num-train-epochs", "3"]
SAME_THREADS = {**os.environ, "OMP_NUM_THREADS": "1"}  # bitwise equality needs the same CPU settings everywhere


def torchrun(port, root, *extra, launcher=()):
    return ["torchrun", "--nproc_per_node", "2", "--master_port", str(port), *launcher, "-m", "adalora_ablation",
            "--", "train", *DDP, "--output-root", str(root), *extra]


@pytest.fixture(scope="module")
def uninterrupted_ddp_run(tmp_path_factory):
    """The two-process job trained without a stop: (its run folder, the launcher's stdout and stderr)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    result = subprocess.run(torchrun(free_port(), root), capture_output=True, text=True, timeout=600, cwd=root,
                            env=SAME_THREADS)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "synthetic" / "combo" / "42", result


@pytest.mark.slow
@NO_TORCHRUN
def test_two_ddp_processes_apply_identical_masks_and_write_once(uninterrupted_ddp_run):
    run_dir, result = uninterrupted_ddp_run
    summary = json.loads((run_dir / "final_summary.json").read_text())
    # 3 epochs of 20 steps (no --max-steps); the Trainer agreed (the callback stops the run if its max_steps differs
    # from AdaLoRA's total_step).
    assert summary["total_step"] == 60
    assert summary["settings"]["world_size"] == 2  # the global batch is part of what the run is
    consistency = json.loads((run_dir / "ddp_consistency.json").read_text())
    digests = consistency["mask_digests"]
    assert consistency["world_size"] == 2 and set(digests) == {"0", "1"}
    assert digests["0"] == digests["1"] and len(digests["0"]) == summary["allocations"] == 3
    ranks = read_jsonl(run_dir / "rank_pattern.jsonl")  # written by rank 0 only: one line per allocation
    assert [r["step"] for r in ranks] == [20, 30, 40]
    assert result.stdout.count("[run] synthetic/combo/42") == 1
    # the Trainer's log lines: readable, from rank 0 only (once per logging step), no raw dicts from any process
    console = (result.stdout + result.stderr).splitlines()
    assert not [line for line in console if line.startswith("{")]
    assert [line.split("  ")[0] for line in console if line.startswith("[train] step")] == [
        f"[train] step {step}/60" for step in range(10, 61, 10)]


@pytest.mark.slow
def test_bf16_end_to_end(tmp_path):
    summary = train([*TINY, "--signal", "importance_only", "--output-root", str(tmp_path), "--max-steps", "20",
                     "--tinit", "5", "--tfinal", "5", "--deltaT", "5", "--max-eval-samples", "64", "--bf16", "True"])
    assert summary["config"]["training"]["bf16"] is True
    assert summary["settings"]["world_size"] == 1 and summary["settings"]["bf16"] is True
    assert summary["budget_check_passed"] and summary["total_rank"] == summary["target_budget"]
    assert summary["nonfinite_steps"] == 0


def install_cpu_grad_scaler(trainer):
    """Give the Trainer's accelerator and optimizer a real torch GradScaler, as accelerate does on a GPU for fp16."""
    from accelerate.optimizer import patch_optimizer_step

    scaler = torch.amp.GradScaler("cpu")
    trainer.accelerator.scaler = scaler
    trainer.accelerator.native_amp = True  # so that clipping unscales first, as on a GPU
    optimizer = trainer.optimizer
    optimizer.scaler = scaler
    optimizer._accelerate_step_called = False
    optimizer._optimizer_original_step_method = optimizer.optimizer.step
    optimizer._optimizer_patched_step_method = patch_optimizer_step(optimizer, optimizer.optimizer.step)


def first_score_total(root):
    """The sum of the first recorded signal scores of a run under ``root``."""
    first = read_jsonl(root / "synthetic" / "importance_only" / "42" / "signal_scores.jsonl")[0]
    return sum(m["sum"] for m in first["modules"].values())


@pytest.fixture(scope="module")
def fp32_score_total(tmp_path_factory):
    """The first scores' scale in full precision, for the fp16 runs to be compared with."""
    root = tmp_path_factory.mktemp("fp32")
    train([*TINY, "--signal", "importance_only", "--output-root", str(root), "--max-steps", "60"])
    return first_score_total(root)


@pytest.mark.slow
@pytest.mark.parametrize("max_grad_norm", ["1.0", "0"])  # with clipping the Trainer unscales; without it we do
def test_fp16_skipped_steps_update_no_ema_and_no_mask(tmp_path, monkeypatch, max_grad_norm, fp32_score_total):
    injected = {30}  # an allocation step (tinit 10, deltaT 10): its allocation must not happen
    original = AdaLoraTrainer.training_step

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.accelerator.scaler is None:  # accelerate scales fp16 losses only on GPUs; use torch's CPU scaler
            install_cpu_grad_scaler(self)
        loss = original(self, model, inputs, num_items_in_batch)
        if self.state.global_step in injected:  # as an fp16 overflow would: the scaler then skips the step
            next(p for n, p in model.named_parameters() if "lora_A" in n).grad.view(-1)[0] = float("inf")
        return loss

    monkeypatch.setattr(AdaLoraTrainer, "training_step", training_step)
    fp16 = train([*TINY, "--signal", "importance_only", "--output-root", str(tmp_path / "fp16"), "--max-steps", "60",
                  "--fp16", "True", "--max-grad-norm", max_grad_norm])
    monkeypatch.setattr(AdaLoraTrainer, "training_step", original)

    steps = [r["step"] for r in read_jsonl(tmp_path / "fp16" / "synthetic" / "importance_only" / "42" /
                                           "rank_pattern.jsonl")]
    assert 30 not in steps and 40 in steps and steps[-1] == 40  # the final budget was still fixed at 60 - 20
    assert fp16["scaler_skipped_steps"] >= 1 and fp16["budget_check_passed"]
    # Every EMA update happened on a step the optimizer really took: score updates + skipped = steps before tfinal.
    last = read_jsonl(tmp_path / "fp16" / "synthetic" / "importance_only" / "42" / "rank_pattern.jsonl")[-1]
    assert last["score_updates"] + fp16["scaler_skipped_steps"] == 40 and last["nonfinite_steps"] == 0
    # The allocator reads unscaled gradients: scores are on the fp32 run's scale (clipped or not, the same order of
    # magnitude), not 2**16 times larger.
    ratio = first_score_total(tmp_path / "fp16") / fp32_score_total
    assert 0.1 < ratio < 10, ratio


# Pre-emption of a multi-process job: Slurm signals every process of the job step, as os.killpg does here.
def lines(path):
    return path.read_text().splitlines() if path.exists() else []


def allocation_steps(run_dir) -> list[int]:
    """The steps of the allocations rank 0 has logged so far; a line still being written is not one yet."""
    steps = []
    for line in lines(run_dir / "rank_pattern.jsonl"):
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:  # read while it was written: the line is torn
            pass
    return steps


def stop_ddp_job(proc, run_dir, stop_signal, after_step):
    """Send ``stop_signal`` to the launcher and both workers once rank 0 has logged an allocation after
    ``after_step``; returns the step the job says it stopped after, having checked its checkpoint and release."""
    deadline = time.time() + 400
    while proc.poll() is None and time.time() < deadline and not any(
            step > after_step for step in allocation_steps(run_dir)):
        time.sleep(0.02)
    if proc.poll() is not None:
        out, err = proc.communicate()
        raise AssertionError(f"the run ended (exit {proc.returncode}) before it could be signalled:\n"
                             f"{(out + err)[-9000:]}")
    os.killpg(proc.pid, stop_signal)  # inside training, in the reduction phase (steps 10 to 40)
    out, err = proc.communicate(timeout=240)
    # torchrun reports its own status for a signalled job (not the workers' 75); see docs/at-scale.md
    assert proc.returncode != 0
    stopped = [line for line in (out + err).splitlines() if "adalora-ablation: stopped by" in line]
    assert len(stopped) == 1, (out + err)[-3000:]  # written once, by the main process
    step = int(stopped[0].split("after step ")[1].split(";")[0])
    assert f"stopped by {signal.Signals(stop_signal).name} after step {step}; checkpoint-{step} written" in stopped[0]
    assert after_step < step < 40, (out + err)[-3000:]
    checkpoint = latest_complete_checkpoint(run_dir)  # verified: manifest sizes and checksums
    assert checkpoint is not None and checkpoint.name == f"checkpoint-{step}"
    verify_manifest(checkpoint)
    assert not (run_dir / "final_summary.json").exists()
    assert not (run_dir / LOCK_FILE).exists()  # released: the resume needs no takeover
    return step, out


@pytest.mark.slow
@NO_TORCHRUN
def test_a_signalled_ddp_job_checkpoints_one_agreed_step_and_resumes_from_it(tmp_path, uninterrupted_ddp_run):
    """Stopped twice, each time through another path of the launcher: SIGUSR1 (Slurm's --signal=USR1@90), which
    torchrun forwards only when told to (without the flag it dies of it), then, resumed, SIGTERM (pre-emption),
    which it forwards by default. Resumed again, the job equals the uninterrupted one: both resumes were exact."""
    port = free_port()
    run_dir = tmp_path / "synthetic" / "combo" / "42"
    forward_usr1 = ("--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
    proc = subprocess.Popen(torchrun(port, tmp_path, launcher=forward_usr1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=SAME_THREADS, start_new_session=True)
    first, _ = stop_ddp_job(proc, run_dir, signal.SIGUSR1, after_step=10)
    if int(transformers.__version__.split(".")[0]) < 5:  # it cannot resume on CPUs: refused in one line
        refused = subprocess.run(torchrun(port, tmp_path, "--resume", "True"), capture_output=True, text=True,
                                 timeout=600, env=SAME_THREADS)
        assert refused.returncode != 0
        assert "resuming a run of 2 processes on CPUs fails in transformers" in refused.stderr
        assert latest_complete_checkpoint(run_dir).name == f"checkpoint-{first}"  # left to resume elsewhere
        return
    proc = subprocess.Popen(torchrun(port, tmp_path, "--resume", "True"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=SAME_THREADS, start_new_session=True)
    second, out = stop_ddp_job(proc, run_dir, signal.SIGTERM, after_step=first)
    assert out.count(f"[run] resuming {run_dir} from checkpoint-{first}") == 1

    resumed = subprocess.run(torchrun(port, tmp_path, "--resume", "True"), capture_output=True, text=True,
                             timeout=600, env=SAME_THREADS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight_dir = uninterrupted_ddp_run[0]
    summary = json.loads((run_dir / "final_summary.json").read_text())
    straight = json.loads((straight_dir / "final_summary.json").read_text())
    assert summary["resumed_from"] == f"checkpoint-{second}"
    for name in ("rank_pattern.jsonl", "signal_scores.jsonl"):
        assert lines(run_dir / name) == lines(straight_dir / name), name
    for key in ("eval_accuracy", "final_ranks"):
        assert summary[key] == straight[key], key
    assert summary["eval_metrics"]["eval_loss"] == straight["eval_metrics"]["eval_loss"]
    # the whole run's mean loss, summed across the interruptions: equal up to the order of the additions (each stop
    # between two log lines splits a float32 window sum in two: a few float32 ulps of ~20 in a total of ~115, so
    # ~1e-8 relative; a step's loss lost or counted twice would move it by ~1e-2)
    assert summary["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6)
    # metrics.jsonl: one extra loss line at each stop step (the loss since the last log line, kept), and the next
    # log line's loss covers the steps after it; every other line is the uninterrupted run's
    logged = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r}
    expected = {r["step"]: r for r in read_jsonl(straight_dir / "metrics.jsonl") if "loss" in r}
    stops = {first, second}
    next_logs = {(step // 10 + 1) * 10 for step in stops}
    assert set(logged) - set(expected) == {step for step in stops if step % 10}
    assert {k: r for k, r in logged.items() if k not in stops | next_logs} == \
        {k: r for k, r in expected.items() if k not in next_logs}
