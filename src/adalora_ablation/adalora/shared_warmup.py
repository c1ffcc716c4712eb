"""Training side of a shared warm-up: one process trains the first ``tinit`` steps once for several runs.

Until step ``tinit`` PEFT's budget schedule keeps the initial budget and never masks (``budget_schedule`` returns
``mask_ind = False`` for every ``step <= tinit``, whatever ``target_r``), no signal touches the model or draws a
random number (``random`` draws only when it scores, at an allocation), and the signals only read the weights and
gradients. So every run that shares everything but its signal, the signal's settings and ``target_r`` trains
exactly the same weights until then; only each signal's own state (its EMAs) differs. This allocator feeds every
member signal the same gradients, and ``StopAtWarmupEnd`` ends training with a checkpoint at step ``tinit``.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from ..signals import SIGNALS, SignalConfig, build_signal
from ..signals.base import Signal
from .allocator import SignalRankAllocator


class SharedWarmupAllocator(SignalRankAllocator):
    """Tracks one signal per variant (signal + its settings) on the same gradients; never allocates."""

    def __init__(self, model, peft_config, adapter_name: str, variants: dict[str, tuple[str, SignalConfig]],
                 config: SignalConfig):
        fixed = [signal for signal, _ in variants.values() if SIGNALS[signal].fixed_pattern]
        if fixed:  # it masks from step 0: its warm-up is not the others' (grid/warmup.py never groups it)
            raise ValueError(f"signal {fixed[0]} holds a fixed rank pattern from step 0 and cannot share a warm-up")
        first_signal = next(iter(variants.values()))[0]
        super().__init__(model, peft_config, adapter_name, first_signal, config)
        self.signal_name = shared_signal_name(variants)  # what check_same_signal compares on resume
        self.members: dict[str, Signal] = {variant: build_signal(signal, self.layout, signal_config)
                                           for variant, (signal, signal_config) in variants.items()}
        self.member_signals = {variant: signal for variant, (signal, _) in variants.items()}
        self.signal = next(iter(self.members.values()))  # the base class's own is not needed

    def updated_signals(self) -> list[Signal]:
        return list(self.members.values())

    def mask_to_budget(self, model, budget):
        raise RuntimeError(f"a shared warm-up must stop at step tinit={self.peft_config.tinit}, before the first "
                           f"allocation (budget {budget}); please report this with your arguments")

    def member_state(self, variant: str) -> dict:
        """The allocator state that the variant's own run would have checkpointed at this step."""
        return {"signal": self.member_signals[variant], "buffers": self.members[variant].state_dict(),
                "steps_seen": torch.tensor(self.steps_seen), "nonfinite_steps": self.nonfinite_steps}

    def state_dict(self) -> dict:
        return {"signal": self.signal_name, "members": {v: self.member_state(v) for v in self.members},
                "steps_seen": torch.tensor(self.steps_seen), "nonfinite_steps": self.nonfinite_steps}

    def load_state_dict(self, state: dict) -> None:
        if state["signal"] != self.signal_name:
            raise ValueError(f"allocator state is for {state['signal']!r}, not {self.signal_name!r}")
        for variant, member in state["members"].items():
            self.members[variant].load_state_dict(member["buffers"])
        self.steps_seen = int(state["steps_seen"])
        self.finite_steps.fill_(self.steps_seen - int(state["nonfinite_steps"]))


def shared_signal_name(variants) -> str:
    return "shared warm-up of " + ", ".join(variants)


class StopAtWarmupEnd(TrainerCallback):
    """Stop after step ``tinit`` with one complete checkpoint that holds everything a run would have logged by then.

    The checkpoint is written once, last, from ``on_epoch_end`` (which the Trainer calls after leaving the epoch
    early too): after the step's own log and evaluation, and after the epoch-end evaluation when ``tinit`` happens
    to end an epoch. When it does not, the epoch-end evaluation and log that the early exit would trigger are
    dropped, because a run trained alone does neither there. The loss since the last log line is logged at
    ``tinit`` (as a pre-empted run does), so no step's loss is lost from metrics.jsonl."""

    def __init__(self, tinit: int):
        self.tinit = tinit

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.tinit:
            control.should_training_stop = True
            control.should_log = True
            control.should_save = False  # saved once, in on_epoch_end

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.global_step < self.tinit:
            return
        if not float(state.epoch).is_integer():  # left the epoch early: not an epoch end for a run trained alone
            control.should_evaluate = False
            control.should_log = False
        control.should_save = True
