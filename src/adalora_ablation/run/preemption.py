"""Checkpoint on signal: a pre-empted or timed-out job loses at most the optimizer step it is in.

Slurm signals a job before its time limit (``--signal=USR1@90``; submitit: USR2) and on pre-emption (SIGTERM). On
any of these signals during training the run finishes its current optimizer step (the AdaLoRA update included),
writes a complete checkpoint at that step and stops; ``train`` then raises ``RunInterrupted`` and the command exits
with ``errors.REQUEUE_EXIT_CODE``, which the launchers read as "requeue, it will resume from that checkpoint". The
handler is installed for the whole of ``train``; ``run.life.RunFolder`` acts on a signal that comes in outside the
training loop.
"""

from __future__ import annotations

import signal

import torch
from transformers import TrainerCallback

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopOnSignal(TrainerCallback):
    """Turns a stop signal into "save a checkpoint at the end of this step, then stop training".

    The handler only records the signal (it may arrive anywhere, e.g. inside a CUDA call); the Trainer acts on it at
    the next step end. In a multi-process run every process must stop at the same step or the checkpoint's
    collectives would hang, so the processes agree on the flag with one tiny all-reduce per step.
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.received: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame):
        if self.received is None:
            self.received = signum

    def install(self) -> StopOnSignal:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, args=None) -> bool:
        """Whether a stop signal came in, agreed by every process of a multi-process run (``args``: the Trainer's
        arguments; every process must call this at the same point)."""
        flag = self.received is not None
        if args is not None and args.world_size > 1:
            import torch.distributed as dist

            t = torch.tensor([int(flag)], device=args.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
            if flag and self.received is None:
                self.received = signal.SIGTERM  # another process got it
        return flag

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_at is None and self.agreed(args):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
            control.should_log = True  # the loss since the last log line would otherwise be lost with the process

    def on_epoch_end(self, args, state, control, **kwargs):
        # Breaking out of the epoch on our stop ends it early, and the Trainer's flow callback (called before this
        # one) turns evaluation and saving back on for --eval/--save-strategy epoch: a full evaluation and a second
        # write of the checkpoint of this step, inside the grace period before SIGKILL. The checkpoint is written.
        if self.stopped_at is not None:
            control.should_evaluate = False
            control.should_save = False
