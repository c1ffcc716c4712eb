"""Scale-out on CPU: two DDP processes (gloo) apply identical masks; bf16 and fp16 (with skipped steps) work."""

import json
import shutil
import subprocess

import pytest
import torch

from adalora_ablation.run.resume import AdaLoraTrainer
from adalora_ablation.run.folder import read_jsonl
from adalora_ablation.train import train

TINY = ["--task", "synthetic", "--tinit", "10", "--tfinal", "20", "--deltaT", "10", "--save-strategy", "no",
        "--eval-strategy", "no", "--logging-steps", "10"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_ddp_processes_apply_identical_masks_and_write_once(tmp_path):
    cmd = ["torchrun", "--nproc_per_node", "2", "--master_port", "29533", "-m", "adalora_ablation", "--", "train",
           *TINY, "--signal", "combo", "--output-root", str(tmp_path), "--max-train-samples", "640",
           "--per-device-train-batch-size", "16", "--max-steps", "-1", "--num-train-epochs", "3"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "synthetic" / "combo" / "42"
    summary = json.loads((run_dir / "final_summary.json").read_text())
    # 640 rows / 16 per device / 2 processes = 20 optimizer steps per epoch, 3 epochs; the Trainer agreed
    # (the callback stops the run if its max_steps differs from AdaLoRA's total_step).
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
    summary = train([*TINY, "--signal", "importance_only", "--output-root", str(tmp_path), "--max-steps", "60",
                     "--bf16", "True"])
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


@pytest.mark.slow
@pytest.mark.parametrize("max_grad_norm", ["1.0", "0"])  # with clipping the Trainer unscales; without it we do
def test_fp16_skipped_steps_update_no_ema_and_no_mask(tmp_path, monkeypatch, max_grad_norm):
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
    train([*TINY, "--signal", "importance_only", "--output-root", str(tmp_path / "fp32"), "--max-steps", "60",
                  "--max-grad-norm", max_grad_norm])

    steps = [r["step"] for r in read_jsonl(tmp_path / "fp16" / "synthetic" / "importance_only" / "42" /
                                           "rank_pattern.jsonl")]
    assert 30 not in steps and 40 in steps and steps[-1] == 40  # the final budget was still fixed at 60 - 20
    assert fp16["scaler_skipped_steps"] >= 1 and fp16["budget_check_passed"]
    # Every EMA update happened on a step the optimizer really took: score updates + skipped = steps before tfinal.
    last = read_jsonl(tmp_path / "fp16" / "synthetic" / "importance_only" / "42" / "rank_pattern.jsonl")[-1]
    assert last["score_updates"] + fp16["scaler_skipped_steps"] == 40 and last["nonfinite_steps"] == 0
    # The allocator reads unscaled gradients: scores are on the fp32 run's scale, not 2**16 times larger.
    def score_total(root):
        first = read_jsonl(root / "synthetic" / "importance_only" / "42" / "signal_scores.jsonl")[0]
        return sum(m["sum"] for m in first["modules"].values())
    ratio = score_total(tmp_path / "fp16") / score_total(tmp_path / "fp32")
    assert 0.1 < ratio < 10, ratio
