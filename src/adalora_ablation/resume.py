"""Checkpoints that stay resumable, and continuing a run exactly where its last checkpoint left off.

PEFT's ``save_pretrained`` prunes AdaLoRA adapters to ``config.rank_pattern`` (and rewrites that attribute), which
is right for a finished adapter but makes a mid-training checkpoint unresumable: the pruned triplets, their
optimizer state and the allocator's EMAs would be gone. Our checkpoints therefore hold the adapters at full
``init_r`` shape, and next to them the allocator's state (every EMA buffer, the current rank pattern, counters).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer

from .runs import ALLOCATOR_STATE, atomic_write


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
            state = self.adalora_callback.resume_state()
            atomic_write(folder / ALLOCATOR_STATE, lambda f: torch.save(state, f))
