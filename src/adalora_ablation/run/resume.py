"""Checkpoints that stay resumable, and continuing a run exactly where its last checkpoint left off.

PEFT's ``save_pretrained`` prunes AdaLoRA adapters to ``config.rank_pattern`` (and rewrites that attribute), which
is right for a finished adapter but makes a mid-training checkpoint unresumable: the pruned triplets, their
optimizer state and the allocator's EMAs would be gone. Our checkpoints therefore hold the adapters at full
``init_r`` shape, and next to them the allocator's state (every EMA buffer, the current rank pattern, counters).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
from pathlib import Path

import torch
import transformers
from transformers import Trainer, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import nested_gather, safe_globals
from transformers.trainer_utils import rotate_checkpoints

from ..errors import RunFileError, UsageError
from .folder import (
    ALLOCATOR_STATE, MANIFEST, STAGING, atomic_write, complete_checkpoints, verify_manifest, write_manifest,
)
from .identity import IDENTITY_FILE

# Files of a checkpoint that torch.load reads on resume (ours and the Trainer's). All are loaded with
# weights_only=True: a checkpoint folder may come from someone else (a shared directory, a downloaded run), and a
# full pickle load would run whatever code it holds.
_TORCH_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")


def _error_line(exc: BaseException) -> str:
    """The informative line of a torch.load error: for a refused pickle, the global it wanted to call."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    refused = [line.split("error:", 1)[1].split(" was not")[0].strip() for line in lines if "WeightsUnpickler" in line]
    if refused:
        return f"refused: {refused[0]}"
    return lines[0] if lines else type(exc).__name__


def _safe_load(path: Path):
    """torch.load without pickle's code execution, as the Trainer loads its files (numpy's RNG state allowlisted);
    a refused or damaged file raises ValueError naming it."""
    try:
        with safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and OS errors all mean "cannot resume from this file"
        raise ValueError(f"{path} cannot be loaded safely ({_error_line(exc)})") from None


def load_checkpoint_state(checkpoint: Path) -> dict:
    """Our allocator state from a checkpoint, after checking that every torch file the resume will read (ours and
    the Trainer's) loads safely: a damaged or crafted file is found here, with its name, instead of as a traceback
    in the middle of the Trainer's resume. Raises ValueError naming the first file that does not."""
    checkpoint = Path(checkpoint)
    verify_manifest(checkpoint)
    state = _safe_load(checkpoint / ALLOCATOR_STATE)
    for path in [checkpoint / name for name in _TORCH_FILES] + sorted(checkpoint.glob("rng_state_*.pth")):
        if path.is_file():
            _safe_load(path)
    return state


def resumable_checkpoint(run_dir: Path, log, restart: bool = True) -> tuple[Path, dict] | None:
    """The newest complete checkpoint that verifies (manifest, safe loading), with our allocator state; None if the
    run has none. Checkpoints that fail are named and skipped, one line each. If every one fails, the run starts
    over (``restart``) or stops with a one-line error."""
    refused = []
    for checkpoint in reversed(complete_checkpoints(run_dir)):
        try:
            return checkpoint, load_checkpoint_state(checkpoint)
        except ValueError as problem:
            log(f"[run] skipping {checkpoint.name}: {problem}")
            refused.append(str(problem))
    if refused and not restart:
        raise UsageError(f"no checkpoint of {run_dir} can be resumed from: {'; '.join(refused)}; remove the damaged "
                         f"checkpoint-* folders, or pass --resume-fallback restart to start over")
    if refused:
        log(f"[run] no checkpoint of {run_dir} verifies; starting over")
    return None


def run_settings(device: torch.device | str) -> dict:
    """What bitwise equality of a resumed run with an uninterrupted one depends on (beyond the data and flags)."""
    return {"torch": str(torch.__version__), "device": torch.device(device).type,
            "intra_op_threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


def settings_difference(saved: dict | None, now: dict) -> str | None:
    """One line naming the settings that differ between a checkpoint's run and this process, or None."""
    if saved is None:
        return None
    changed = [f"{k} {saved.get(k)} -> {v}" for k, v in now.items() if saved.get(k) != v]
    if not changed:
        return None
    return (f"[run] resuming with different settings ({', '.join(changed)}): the result may differ in the last bits "
            f"from an uninterrupted run")




# The Trainer's private members that this module and train.py rely on: transformers has no public hook to stage a
# checkpoint before it counts, to save one at any moment, or to read the running train loss. So pyproject allows
# only the transformers versions the tests ran with (TESTED_TRANSFORMERS), and tests/test_trainer_internals.py
# checks each member on the installed one. Methods: their parameters after self; attributes: set as training starts.
TESTED_TRANSFORMERS = "transformers>=5.25,<5.26"
TRAINER_METHODS = {"_save_checkpoint": ("model", "trial"), "_get_output_dir": ("trial",),
                   "_load_from_checkpoint": ("resume_from_checkpoint", "model")}
TRAINER_ATTRIBUTES = ("_tr_loss", "_total_loss_scalar")  # the loss since the last log (a tensor), and before it


def changed_trainer_internals() -> list[str]:
    """How the installed transformers' Trainer differs from the private methods this tool overrides or calls."""
    changed = []
    for name, expected in TRAINER_METHODS.items():
        method = getattr(Trainer, name, None)
        found = tuple(inspect.signature(method).parameters)[1:] if callable(method) else None
        if found != expected:
            changed.append(f"Trainer.{name} is gone" if found is None else
                           f"Trainer.{name} takes ({', '.join(found)}), not ({', '.join(expected)})")
    return changed


class AdaLoraTrainer(Trainer):
    """A Trainer whose checkpoints keep full-shape adapters and the allocator's state, appear whole or not at all,
    and are never rewritten in place.

    A checkpoint is written under ``<run>/.partial/checkpoint-N``, completed with our allocator state and manifest,
    verified, and only then renamed to ``<run>/checkpoint-N``; older checkpoints are rotated away
    (``--save-total-limit``) only after that, so a kill at any moment leaves the last verified checkpoint in place."""

    def __init__(self, *args, adalora_callback, **kwargs):
        changed = changed_trainer_internals()
        if changed:  # before a run trains for hours and then fails at its first checkpoint
            raise UsageError(f"transformers {transformers.__version__} changed Trainer internals this tool relies on "
                             f"({'; '.join(changed)}); install a tested version: pip install '{TESTED_TRANSFORMERS}'")
        super().__init__(*args, **kwargs)
        self.adalora_callback = adalora_callback
        self._staging = False

    def _get_output_dir(self, trial) -> str:
        if self._staging:
            return str(Path(self.args.output_dir) / STAGING)
        return super()._get_output_dir(trial)

    def _barrier(self) -> None:
        if self.args.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def _save_checkpoint(self, model, trial):
        run_dir = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        if (run_dir / name / MANIFEST).is_file():
            return  # this step's checkpoint is complete already: never rewrite one in place
        staged = run_dir / STAGING / name
        peft_config = self.model.peft_config[self.model.base_model.trainable_adapter_name]
        rank_pattern = peft_config.rank_pattern
        # The loss summed over every step so far (all processes' mean, as the Trainer logs it), so that a resumed
        # run's train_loss is the whole run's; a collective, so every process computes it.
        pending = nested_gather(self._tr_loss, self.args.parallel_mode).mean().item()
        loss_sum = self.adalora_callback.train_loss_sum(self._total_loss_scalar + pending)
        try:
            if self.args.should_save and staged.exists():
                shutil.rmtree(staged)  # left by a process killed while writing it
            self._barrier()
            peft_config.rank_pattern = None  # save every triplet: the checkpoint must continue training, not infer
            self._staging = True
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging = False
                peft_config.rank_pattern = rank_pattern  # restored before the allocator state records it
            self._barrier()  # every process's RNG state is in the staged folder
            if self.args.should_save:
                state = {**self.adalora_callback.resume_state(), "train_loss_sum": loss_sum}
                atomic_write(staged / ALLOCATOR_STATE, lambda f: torch.save(state, f))
                settings = run_dir / IDENTITY_FILE  # the settings this checkpoint continues (run/identity.py)
                if settings.is_file():
                    atomic_write(staged / IDENTITY_FILE, lambda f: f.write(settings.read_bytes()))
                write_manifest(staged)  # a checkpoint without it is incomplete
                verify_manifest(staged)  # what is on disk is what the manifest says, before it counts
                os.rename(staged, run_dir / name)
                with contextlib.suppress(OSError):
                    staged.parent.rmdir()  # empty now
                rotate_checkpoints(str(run_dir), self.args.save_total_limit, use_mtime=False)
        except RunFileError:
            raise
        except Exception as exc:  # OSError, or a serializer's own error type wrapping one (safetensors)
            raise RunFileError(f"cannot write checkpoint {run_dir / name} ({_error_line(exc)}); the run stopped, "
                               f"and its last verified checkpoint stays resumable: free space, then run the same "
                               f"command with --resume True") from None

    def load_without_training(self, checkpoint: Path) -> None:
        """Continue from a checkpoint of the last step: load its weights and the Trainer's state, train nothing.
        (The Trainer's own resume would take one step past max_steps before it checks, when the last step is not
        on an epoch boundary.)"""
        self._load_from_checkpoint(str(checkpoint))
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
