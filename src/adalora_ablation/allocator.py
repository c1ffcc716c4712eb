"""PEFT's RankAllocator with a pluggable scoring signal and an exact budget.

Everything about *when* and *how much* is PEFT's: ``budget_schedule``, ``update_and_allocate`` (and
``AdaLoraModel.update_and_allocate`` around it, which handles the final phase) are inherited unchanged. We replace
only *what decides*: ``update_ipt`` feeds the active signal, and ``mask_to_budget`` keeps the ``budget`` best
triplets by that signal's scores.

One deliberate difference to PEFT: PEFT masks every score <= the k-th smallest, so ties over-prune (zero gradients
make ties common for some signals). We keep exactly ``budget`` triplets and break ties by position in the fixed
module order (earlier triplets are pruned first). Without ties this is exactly PEFT's mask.
"""

from __future__ import annotations

import torch
from peft.tuners.adalora.layer import RankAllocator

from .lora_layout import LoraLayout, all_finite, serial_on_cpu
from .signals import Signal, SignalConfig, build_signal


class SignalRankAllocator(RankAllocator):
    def __init__(self, model, peft_config, adapter_name: str, signal_name: str, signal_config: SignalConfig):
        self.signal_name = signal_name
        self.signal_config = signal_config
        self.layout = LoraLayout(model, adapter_name)
        self.signal: Signal = build_signal(signal_name, self.layout, signal_config)
        self.steps_seen = torch.zeros((), dtype=torch.long, device=self.layout.device)
        self.nonfinite_steps = torch.zeros((), dtype=torch.long, device=self.layout.device)
        self.last_allocation: dict | None = None  # filled by mask_to_budget, consumed by the training callback
        self._final_masks = None  # (rank_pattern object it was built from, list of E masks) for the final phase
        super().__init__(model, peft_config, adapter_name)

    # PEFT calls reset_ipt() in __init__ and once the final budget is fixed; the signal's EMAs go with it.
    def reset_ipt(self):
        super().reset_ipt()
        if hasattr(self, "signal"):
            self.signal.reset()

    def update_ipt(self, model):
        # Gathers into buffers reused every step; no host synchronisation on an accelerator (benchmarks/).
        layout = self.layout
        with torch.no_grad(), serial_on_cpu(layout.device):
            g = layout.flat_grads(out=layout.work_buffer("grads"))
            finite = all_finite(g)
            if finite.device.type == "cpu":
                finite = bool(finite)  # free on CPU, and lets the signals skip the sync-free gating
            w = layout.flat_weights(out=layout.work_buffer("weights")) if self.signal.wants_flat_weights else None
            self.signal.update(w, g, finite)
            self.steps_seen += 1
            self.nonfinite_steps += (not finite) if isinstance(finite, bool) else (~finite).long()

    def mask_to_budget(self, model, budget):
        scores = self.signal.scores()
        keep = keep_top_k(scores, budget)
        with torch.no_grad():
            for m, e in enumerate(self.layout.E):
                e.masked_fill_(~keep[m].view(-1, 1), 0.0)
        keep_rows = keep.tolist()
        rank_pattern = {self.layout.e_key(m): row for m, row in enumerate(keep_rows)}
        self.last_allocation = {
            "budget": int(budget),
            "keep": keep,
            "scores": scores,
            "parts": self.signal.parts(),
            "steps_seen": int(self.steps_seen),
            "nonfinite_steps": int(self.nonfinite_steps),
        }
        return rank_pattern

    def mask_using_rank_pattern(self, model, rank_pattern):
        """Final phase: re-apply the fixed mask every step, from masks cached on the parameters' device."""
        if self._final_masks is None or self._final_masks[0] is not rank_pattern:
            masks = []
            for m in range(self.layout.num_modules):
                key = self.layout.e_key(m)
                unprefixed = key.replace(f".{self.adapter_name}", "")
                row = rank_pattern[key] if key in rank_pattern else rank_pattern[unprefixed]
                e = self.layout.E[m]
                masks.append(torch.tensor(row, dtype=e.dtype, device=e.device).view(-1, 1))
            self._final_masks = (rank_pattern, masks)
        with torch.no_grad():
            torch._foreach_mul_(self.layout.E, self._final_masks[1])

    # -- checkpointing -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "signal": self.signal_name,
            "buffers": self.signal.state_dict(),
            "steps_seen": self.steps_seen.clone(),
            "nonfinite_steps": self.nonfinite_steps.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["signal"] != self.signal_name:
            raise ValueError(f"allocator state is for signal {state['signal']!r}, not {self.signal_name!r}")
        self.signal.load_state_dict(state["buffers"])
        self.steps_seen.copy_(state["steps_seen"])
        self.nonfinite_steps.copy_(state["nonfinite_steps"])


def keep_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (same shape) keeping exactly the k highest scores; ties resolved by position (earlier pruned first).

    NaN scores count as lowest.
    """
    flat = torch.nan_to_num(scores.reshape(-1).float(), nan=float("-inf"))
    n_prune = flat.numel() - int(k)
    if not 0 <= n_prune <= flat.numel():
        raise ValueError(f"budget {k} is outside [0, {flat.numel()}]")
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.sort(flat, stable=True).indices[:n_prune]] = False
    return keep.view(scores.shape)


def install_allocator(peft_model, signal_name: str, signal_config: SignalConfig) -> SignalRankAllocator:
    """Replace the AdaLoraModel's RankAllocator by ours; PEFT's update_and_allocate then drives it as usual."""
    adalora = peft_model.base_model
    allocator = SignalRankAllocator(
        adalora.model, adalora.peft_config[adalora.trainable_adapter_name], adalora.trainable_adapter_name,
        signal_name, signal_config,
    )
    adalora.rankallocator = allocator
    return allocator
