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
from transformers.trainer_pt_utils import safe_globals

from ..errors import RunFileError, UsageError
from .identity import IDENTITY_FILE
from .folder import ALLOCATOR_STATE, atomic_write, complete_checkpoints, verify_manifest, write_manifest

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




class AdaLoraTrainer(Trainer):
    """A Trainer whose checkpoints keep full-shape adapters and the allocator's state."""

    def __init__(self, *args, adalora_callback, **kwargs):
        super().__init__(*args, **kwargs)
        self.adalora_callback = adalora_callback

    def _save_checkpoint(self, model, trial):
        peft_config = self.model.peft_config[self.model.base_model.trainable_adapter_name]
        rank_pattern = peft_config.rank_pattern
        peft_config.rank_pattern = None  # save every triplet: the checkpoint must continue training, not infer
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        try:
            try:
                super()._save_checkpoint(model, trial)
            finally:
                peft_config.rank_pattern = rank_pattern  # restored before the allocator state records it
            if self.args.should_save:
                state = self.adalora_callback.resume_state()
                atomic_write(folder / ALLOCATOR_STATE, lambda f: torch.save(state, f))
                settings = Path(self.args.output_dir) / IDENTITY_FILE  # the settings this checkpoint continues
                if settings.is_file():
                    atomic_write(folder / IDENTITY_FILE, lambda f: f.write(settings.read_bytes()))
                write_manifest(folder)  # last: a checkpoint without it is incomplete
        except RunFileError:
            raise
        except Exception as exc:  # OSError, or a serializer's own error type wrapping one (safetensors)
            raise RunFileError(f"cannot write checkpoint {folder} ({_error_line(exc)}); the run stopped, and its "
                               f"last verified checkpoint stays resumable: free space, then run the same command "
                               f"with --resume True") from None
