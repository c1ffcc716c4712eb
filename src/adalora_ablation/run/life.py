"""A run folder's life in one process: open, train in it, finish or stop, close.

``RunFolder`` owns every decision about the folder that ``train`` used to make in separate places:

- open: take the lock (main process), refuse a finished run, choose the checkpoint to resume from (or clear what an
  unfinished run without one left), rewind the logs to that checkpoint;
- during: a stop signal is recorded, never fatal, from before the lock is taken until it is released; the lock is
  checked at every step (an owner that was taken over stops without writing);
- close: the summary is written last; the lock is released by its owner however the block ends.

The stop contract (docs/at-scale.md): a stop signal at any moment ends the run with exit 75 and,
where there is training state worth keeping, a complete checkpoint of the step it arrived in; before training starts
nothing is kept (the run starts or resumes as before). Once the final adapter is being written the run finishes
(seconds) and a signal changes nothing.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

from transformers import TrainerCallback

from ..errors import RunFileError, RunInterrupted, UsageError
from .folder import checkpoint_step, read_summary, rewind_logs, write_json_atomic, write_summary
from .identity import IDENTITY_FILE, difference, read_identity, summary_settings
from .lock import LOCK_FILE, LockHeld, LockLost, RunLock
from .preemption import StopOnSignal
from .resume import resumable_checkpoint


class RunFolder:
    """One run folder, held by this process from ``open`` until the ``with`` block ends.

    ``checkpoint``/``resume_state`` say where training continues (None: from the start). ``identity`` is the run's
    settings and fingerprint (run/identity.py): a finished run or a checkpoint made with other settings is refused,
    and the folder records it (run_settings.json, copied into every checkpoint)."""

    def __init__(self, run_dir: Path, stopper: StopOnSignal, log, is_main: bool = True):
        self.run_dir = Path(run_dir)
        self.stopper = stopper
        self.log = log
        self.is_main = is_main
        self.lock: RunLock | None = None
        self.checkpoint: Path | None = None
        self.resume_state: dict | None = None
        self.identity: dict | None = None
        self.finished = False

    # -- open ----------------------------------------------------------------------------------------------------
    def open(self, resume: bool, overwrite: bool, restart: bool = True, identity: dict | None = None,
             accept=None) -> RunFolder:
        """``accept(resume_state, checkpoint)`` raises UsageError when the checkpoint found may not be continued
        (other settings); it is called before anything in the folder changes."""
        self.identity = identity
        if self.is_main:
            try:
                self.lock = RunLock(self.run_dir, self.log).acquire()
            except LockHeld as exc:
                raise UsageError(str(exc)) from None
        try:
            refuse_finished_run(self.run_dir, identity, overwrite)  # it may have finished while we were loading
            if resume and read_summary(self.run_dir) is None:
                found = resumable_checkpoint(self.run_dir, self.log, restart=restart)
                if found is not None:
                    self.checkpoint, self.resume_state = found
                    self._refuse_other_checkpoint(accept)
            if self.checkpoint is not None:
                if self.is_main:
                    rewind_logs(self.run_dir, checkpoint_step(self.checkpoint))
            elif self.is_main and any(p.name != LOCK_FILE for p in self.run_dir.iterdir()):
                # an unfinished run without a checkpoint, or --overwrite: start clean (the lock stays: it is ours)
                self.log(f"[run] replacing the previous contents of {self.run_dir}")
                clear_run_folder(self.run_dir)
            if self.is_main and identity is not None:  # what this folder's run is; every checkpoint copies it
                write_json_atomic(self.run_dir / IDENTITY_FILE, identity)
        except BaseException:
            self.close()
            raise
        return self

    def _refuse_other_checkpoint(self, accept) -> None:
        """A checkpoint continues only the run whose settings wrote it: its own run_settings.json (or the folder's).
        A checkpoint written before settings were recorded is checked by ``accept`` (its signal settings)."""
        recorded = read_identity(self.checkpoint) or read_identity(self.run_dir)
        if recorded is None or self.identity is None:
            if accept is not None:
                accept(self.resume_state, self.checkpoint)
            return
        other = difference(recorded["settings"], self.identity["settings"], where="in the checkpoint")
        if other:
            raise UsageError(f"{self.checkpoint} was written with other settings ({other}); resume with the same "
                             f"settings, or run this one with another --output-root or as a sweep variant (--variant)")

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- during --------------------------------------------------------------------------------------------------
    def check_lock(self) -> None:
        """Stop (one line, exit 2) if another process has taken the lock over: writing on would mix two runs."""
        if self.lock is not None:
            try:
                self.lock.check()
            except LockLost as exc:
                raise RunFileError(str(exc)) from None

    def stop_if_signalled(self, args=None, save_checkpoint=None) -> None:
        """At a point between two phases (loading, training, evaluating, writing): if a stop signal came in, stop
        now with exit 75. ``save_checkpoint(step) -> name`` keeps the training state first, where there is some.
        ``args``: the TrainingArguments, so that the processes of a multi-process run agree (all stop or none)."""
        if self.finished or not self.stopper.agreed(args):
            return
        name = signal.Signals(self.stopper.received).name
        if save_checkpoint is None:
            raise RunInterrupted(name, None, None)
        step, checkpoint = save_checkpoint()
        raise RunInterrupted(name, step, checkpoint)

    def write_summary(self, summary: dict) -> None:
        """The last write of a run: from here on it is finished, and a stop signal changes nothing."""
        self.check_lock()
        if self.is_main:
            write_summary(self.run_dir, summary)
        self.finished = True

    # -- close ---------------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


class CheckLock(TrainerCallback):
    """The lock is still ours at every step end (cheap: the file is read only after a pause of two heartbeats)."""

    def __init__(self, run: RunFolder):
        self.run = run

    def on_step_end(self, args, state, control, **kwargs):
        self.run.check_lock()


def clear_run_folder(run_dir: Path) -> None:
    for path in Path(run_dir).iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def refuse_finished_run(run_dir: Path, asked: dict | None, overwrite: bool) -> None:
    """A finished run in the folder is never redone silently, and never taken as this run if its settings differ."""
    summary = read_summary(run_dir)
    if summary is None or overwrite:
        return
    recorded = summary_settings(summary)
    other = difference(recorded, asked["settings"]) if recorded is not None and asked is not None else None
    if other:
        raise UsageError(f"{run_dir} holds a finished run with other settings ({other}); run this one with "
                         f"another --output-root or as a sweep variant (--variant), or pass --overwrite to replace it")
    raise UsageError(f"{run_dir} already holds a finished run; pass --overwrite to replace it "
                     f"or choose another --output-root")
