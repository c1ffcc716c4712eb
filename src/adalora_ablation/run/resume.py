"""Checkpoints that stay resumable, and continuing a run exactly where its last checkpoint left off, through the
Trainer's public API only: its callbacks, ``train(resume_from_checkpoint=...)`` and ``training_step``.

PEFT's ``save_pretrained`` prunes AdaLoRA adapters to ``config.rank_pattern`` (and rewrites that attribute), which
is right for a finished adapter but makes a mid-training checkpoint unresumable: the pruned triplets, their
optimizer state and the allocator's EMAs would be gone. So when the Trainer has written ``checkpoint-N``,
``Checkpoints.on_save`` completes it: the adapters again at full ``init_r`` shape, the allocator's state (every EMA
buffer, the current rank pattern, counters, the loss so far), the run's settings, and last the manifest. A
checkpoint without a manifest (cut off while it was written) is never taken (run/folder.py complete_checkpoints),
and older checkpoints are rotated away here, only after the new one verifies.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainerState

from ..errors import RunFileError, UsageError
from .folder import ALLOCATOR_STATE, MANIFEST, atomic_write, complete_checkpoints, verify_manifest, write_manifest
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


def numpy_rng_globals() -> list:
    """What numpy's RNG state (in the Trainer's rng_state.pth) unpickles through: an array of a dtype. The Trainer
    allows the same when it loads that file with weights_only."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    return [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _safe_load(path: Path):
    """torch.load without pickle's code execution, as the Trainer loads its files (numpy's RNG state allowlisted);
    a refused or damaged file raises ValueError naming it."""
    try:
        with torch.serialization.safe_globals(numpy_rng_globals()):
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


TRAINER_STATE = "trainer_state.json"  # the Trainer's state in every checkpoint (TrainerState.save_to_json)


def _mean_over_processes(value: torch.Tensor, args) -> float:
    """The mean of a scalar tensor over the processes of a multi-process run (a collective: every process calls
    it), gathered in rank order as the Trainer gathers the loss it logs; the value itself in one process."""
    if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [torch.zeros_like(value) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, value)
        return torch.stack(gathered).mean().item()
    return value.mean().item()


def _barrier(args) -> None:
    if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class TrainLoss:
    """The training loss summed over every step of the run, from the tool's own record of each step's loss, so that
    a resumed run's train_loss is the whole run's (the Trainer's covers the steps of its own process only).

    It is summed as the Trainer sums the loss it reports: each micro-batch's loss (``training_step``'s value) adds
    up on the device; at each logged loss the sum so far is averaged over the processes and added on the host; at
    the end of training what is left is added as it is. So an uninterrupted run's total divided by its steps is
    the Trainer's own train_loss, and a resumed run's differs from it only in the order of the host additions."""

    def __init__(self, before: float | None = 0.0):
        self.before = before  # the sum over the steps of earlier processes (None: that checkpoint did not record it)
        self.logged = 0.0  # this process's steps, up to the last logged loss
        self.pending: torch.Tensor | None = None  # since then, on the device
        self.last_logged = 0

    def start(self, args, state) -> None:
        self.pending = torch.zeros((), device=args.device)
        self.last_logged = state.global_step

    def add(self, loss: torch.Tensor, args, state) -> None:
        if self.pending is None:
            return
        if args.logging_nan_inf_filter and not bool(torch.isfinite(loss)):
            # the Trainer counts a non-finite loss as the mean of the others since the last log
            self.pending += self.pending / (1 + state.global_step - self.last_logged)
        else:
            self.pending += loss.detach().to(self.pending.device)

    def log(self, args, state) -> None:
        """The Trainer logged the loss since the last log (on every process)."""
        if self.pending is None:
            return
        self.logged += _mean_over_processes(self.pending, args)
        self.pending -= self.pending
        self.last_logged = state.global_step

    def finish(self) -> None:
        if self.pending is not None:
            self.logged += self.pending.item()
            self.pending = None

    def so_far(self, args) -> float | None:
        """The whole run's sum up to now (a collective in a multi-process run)."""
        pending = _mean_over_processes(self.pending, args) if self.pending is not None else 0.0
        return None if self.before is None else self.before + self.logged + pending

    def total(self) -> float | None:
        """The whole run's sum, once training has finished."""
        return None if self.before is None else self.before + self.logged


def _write_error(folder: Path, exc: BaseException) -> RunFileError:
    return RunFileError(f"cannot write checkpoint {folder} ({_error_line(exc)}); the run stopped, and its last "
                        f"verified checkpoint stays resumable: free space, then run the same command with "
                        f"--resume True")


class Checkpoints(TrainerCallback):
    """Completes every checkpoint the Trainer writes, so that it continues the run bit for bit, and keeps the
    ``--save-total-limit`` newest. Must be the Trainer's last callback: it sees the save every other one asked for.

    ``adalora``: the AdaLoRA callback (its ``resume_state()``); ``resume_state``: the state of the checkpoint this
    run continues, or None."""

    def __init__(self, peft_model, adalora, run_dir: Path, resume_state: dict | None):
        self.peft_model = peft_model
        self.adalora = adalora
        self.run_dir = Path(run_dir)
        self.loss = TrainLoss(0.0 if resume_state is None else resume_state.get("train_loss_sum"))
        self.save_total_limit: int | None = None
        self.saving: int | None = None  # the step whose checkpoint the Trainer is about to write
        self._rank_pattern = None

    @property
    def _config(self):
        return self.peft_model.peft_config[self.peft_model.base_model.trainable_adapter_name]

    # -- Trainer events ------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.loss.start(args, state)
        # the Trainer would rotate older checkpoints away before this one completes the new one
        self.save_total_limit, args.save_total_limit = args.save_total_limit, None

    def on_train_end(self, args, state, control, **kwargs):
        self.loss.finish()
        if args.save_total_limit is None:
            args.save_total_limit = self.save_total_limit

    def _before_a_save(self, args, state, control) -> None:
        # the pattern in force, kept before the Trainer's save (PEFT's prunes by it and rewrites it)
        self._rank_pattern = self._config.rank_pattern
        if control.should_save and (self.run_dir / f"checkpoint-{state.global_step}" / MANIFEST).is_file():
            control.should_save = False  # complete already: a checkpoint is never rewritten in place
        self.saving = state.global_step if control.should_save and not control.should_evaluate else None

    def on_step_end(self, args, state, control, **kwargs):
        self._before_a_save(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._before_a_save(args, state, control)

    def on_evaluate(self, args, state, control, **kwargs):
        if control.should_save:  # the evaluation before a save is over; the save comes next
            self.saving = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:  # the Trainer's training loss since its last log
            self.loss.log(args, state)

    def on_save(self, args, state, control, **kwargs):
        folder = self.run_dir / f"checkpoint-{state.global_step}"
        self._config.rank_pattern = self._rank_pattern
        loss_sum = self.loss.so_far(args)
        _barrier(args)  # every process's files (its RNG state) are in the folder
        if args.should_save:
            try:
                self._save_full_adapter(folder)
            except Exception as exc:  # OSError, or a serializer's own error type wrapping one (safetensors)
                raise _write_error(folder, exc) from None
            self._complete(folder, loss_sum)
        self.saving = None

    # -- writing ---------------------------------------------------------------------------------------------
    def _save_full_adapter(self, folder: Path) -> None:
        """The adapters at full init_r shape, where the Trainer's save wrote them pruned (in the same format)."""
        safe = not (folder / "adapter_model.bin").is_file()
        config = self._config
        rank_pattern, config.rank_pattern = config.rank_pattern, None
        try:
            self.peft_model.save_pretrained(str(folder), safe_serialization=safe)
        finally:
            config.rank_pattern = rank_pattern

    def _complete(self, folder: Path, loss_sum: float | None) -> None:
        """Our files, the manifest last, verified; then the older checkpoints beyond the limit go."""
        try:
            state = {**self.adalora.resume_state(), "train_loss_sum": loss_sum}
            atomic_write(folder / ALLOCATOR_STATE, lambda f: torch.save(state, f))
            settings = self.run_dir / IDENTITY_FILE  # the settings this checkpoint continues (run/identity.py)
            if settings.is_file():
                identity = settings.read_bytes()
                atomic_write(folder / IDENTITY_FILE, lambda f: f.write(identity))
            write_manifest(folder)  # a checkpoint without it is incomplete
            verify_manifest(folder)  # what is on disk is what the manifest says, before it counts
        except RunFileError:
            raise
        except Exception as exc:
            raise _write_error(folder, exc) from None
        self.rotate()

    def rotate(self) -> None:
        """Keep the ``--save-total-limit`` newest complete checkpoints (all when it is unset)."""
        if not self.save_total_limit or self.save_total_limit <= 0:
            return
        for old in complete_checkpoints(self.run_dir)[:-self.save_total_limit]:
            (old / MANIFEST).unlink()  # first: a folder cut off while being removed is never taken
            shutil.rmtree(old, ignore_errors=True)

    def write_last_step(self, trainer) -> str:
        """After training (a stop signal during the final evaluation): the checkpoint of the last step, unless it
        was written already; what a resume at the last step reads (weights, Trainer state, allocator state). Every
        process calls it. Returns the checkpoint's name."""
        args, state = trainer.args, trainer.state
        folder = self.run_dir / f"checkpoint-{state.global_step}"
        if (folder / MANIFEST).is_file():
            return folder.name
        loss_sum = self.loss.so_far(args)
        if args.should_save:
            try:
                if folder.exists():
                    shutil.rmtree(folder)  # cut off while it was written
                folder.mkdir(parents=True)
                self._save_full_adapter(folder)
                state.save_to_json(str(folder / TRAINER_STATE))
            except Exception as exc:
                raise _write_error(folder, exc) from None
            self._complete(folder, loss_sum)
        return folder.name

    @contextlib.contextmanager
    def naming_write_errors(self):
        """An error while the Trainer writes a checkpoint stops the run in one line naming it (a full disk)."""
        try:
            yield
        except (RunFileError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if self.saving is None:
                raise
            raise _write_error(self.run_dir / f"checkpoint-{self.saving}", exc) from None


class AdaLoraTrainer(Trainer):
    """The Trainer, with the tool's own record of each step's loss (``training_step``, which the Trainer documents
    for overriding), the checkpoint completion as its last callback, and on the planted task with
    ``--planted-targets hidden`` a second training loss term (``compute_loss``, documented for overriding too)."""

    def __init__(self, *args, checkpoints: Checkpoints, hidden_targets=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.checkpoints = checkpoints
        self.hidden_targets = hidden_targets  # data/planted.HiddenStateTargets, or None
        self.add_callback(checkpoints)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        """The model's own loss (the logits' MSE, to which PEFT adds AdaLoRA's orthogonal regulariser), plus while
        training the distance to the teacher's final hidden states, added to the model's output loss itself: the
        Trainer then scales the sum as it scales any model's loss (gradient accumulation, processes), whatever its
        version does. Evaluation keeps the model's own loss, so that eval_loss means the same whatever the targets."""
        if self.hidden_targets is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        with self.hidden_targets.added_to_loss(model, inputs):
            return super().compute_loss(model, {**inputs, "output_hidden_states": True},
                                        return_outputs=return_outputs, **kwargs)

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.checkpoints.loss.add(loss, self.args, self.state)
        return loss

    def load_without_training(self, checkpoint: Path) -> None:
        """Continue from a checkpoint of the last step: load its adapters and the Trainer's state, train nothing.
        (The Trainer's own resume would take one step past max_steps before it checks, when the last step is not
        on an epoch boundary.)"""
        model = self.checkpoints.peft_model
        model.load_adapter(str(checkpoint), adapter_name=model.base_model.trainable_adapter_name, is_trainable=True)
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))
