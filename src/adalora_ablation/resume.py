"""Checkpoints that stay resumable, and continuing a run exactly where its last checkpoint left off.

PEFT's ``save_pretrained`` prunes AdaLoRA adapters to ``config.rank_pattern`` (and rewrites that attribute), which
is right for a finished adapter but makes a mid-training checkpoint unresumable: the pruned triplets, their
optimizer state and the allocator's EMAs would be gone. Our checkpoints therefore hold the adapters at full
``init_r`` shape, and next to them the allocator's state (every EMA buffer, the current rank pattern, counters).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch
from transformers import Trainer

from .run_files import ALLOCATOR_STATE, METRICS, RANK_PATTERN, SIGNAL_SCORES, truncate_jsonl

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def latest_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint-N that was completely written (the allocator state is written last)."""
    found = []
    for path in Path(run_dir).glob("checkpoint-*"):
        match = _CHECKPOINT.match(path.name)
        if match and (path / ALLOCATOR_STATE).is_file() and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def checkpoint_step(checkpoint: Path) -> int:
    return int(_CHECKPOINT.match(Path(checkpoint).name).group(1))


def rewind_logs(run_dir: Path, step: int) -> None:
    """Cut the jsonl logs back to what had happened when checkpoint-<step> was written, so that resuming neither
    duplicates nor loses a line. Allocation records carry the 0-based step they ran at (< step); Trainer logs
    carry the global step after it (the checkpoint is written after the log and eval of its own step)."""
    truncate_jsonl(run_dir / RANK_PATTERN, lambda r: r["step"] < step)
    truncate_jsonl(run_dir / SIGNAL_SCORES, lambda r: r["step"] < step)
    truncate_jsonl(run_dir / METRICS, lambda r: r["step"] <= step and "train_runtime" not in r)


def save_torch_atomic(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AdaLoraTrainer(Trainer):
    """A Trainer whose checkpoints keep full-shape adapters and the allocator's state."""

    def __init__(self, *args, adalora_callback, **kwargs):
        super().__init__(*args, **kwargs)
        self.adalora_callback = adalora_callback

    def _save_checkpoint(self, model, trial):
        peft_config = self.model.peft_config[self.model.base_model.trainable_adapter_name]
        rank_pattern = peft_config.rank_pattern
        peft_config.rank_pattern = None  # save every triplet: the checkpoint must continue training, not infer
        try:
            super()._save_checkpoint(model, trial)
        finally:
            peft_config.rank_pattern = rank_pattern
        if self.args.should_save:
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            save_torch_atomic(self.adalora_callback.resume_state(), folder / ALLOCATOR_STATE)
