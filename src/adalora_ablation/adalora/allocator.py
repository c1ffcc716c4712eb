"""PEFT's RankAllocator with a pluggable scoring signal and an exact budget.

Everything about *when* and *how much* is PEFT's: ``budget_schedule``, ``update_and_allocate`` (and
``AdaLoraModel.update_and_allocate`` around it, which handles the final phase) are inherited unchanged. We replace
only *what decides*: ``update_ipt`` feeds the active signal, and ``mask_to_budget`` keeps the ``budget`` best
triplets by that signal's scores.

One deliberate difference to PEFT: PEFT masks every score <= the k-th smallest, so ties over-prune (zero gradients
make ties common for some signals). We keep exactly ``budget`` triplets and break ties by position in the fixed
module order (earlier triplets are pruned first). Without ties this is exactly PEFT's mask.

A signal with a fixed pattern (``Signal.fixed_pattern``, the planted task's ``oracle_fixed``) replaces the budget:
every allocation keeps exactly that pattern, and it is re-applied after every optimizer step from step 0 on
(``hold_fixed_pattern``), so that no other triplet ever takes part in a forward pass.
"""

from __future__ import annotations

import torch
from peft.tuners.adalora.layer import RankAllocator

from ..signals.layout import LoraLayout, serial_on_cpu
from ..signals import SignalConfig, build_signal
from ..signals.base import Signal


class SignalRankAllocator(RankAllocator):
    def __init__(self, model, peft_config, adapter_name: str, signal_name: str, signal_config: SignalConfig):
        self.signal_name = signal_name
        self.signal_config = signal_config
        self.layout = LoraLayout(model, adapter_name)
        self.signal: Signal = build_signal(signal_name, self.layout, signal_config)
        self.fixed = self.signal.fixed_pattern()  # None, or the one pattern kept from step 0 (modules x r, bool)
        self.fixed_kept = None if self.fixed is None else self.fixed.cpu().tolist()  # the same, on the host
        self.steps_seen = 0  # score updates (optimizer steps before the final phase)
        self.finite_steps = torch.zeros((), dtype=torch.long, device=self.layout.device)  # counted on the device
        self.last_allocation: dict | None = None  # filled by mask_to_budget, consumed by the training callback
        self._final_masks = None  # (rank_pattern object it was built from, list of E masks) for the final phase
        super().__init__(model, peft_config, adapter_name)

    @property
    def nonfinite_steps(self) -> torch.Tensor:
        """Score updates skipped because an adapter gradient was NaN/Inf (a tensor: reading it may sync)."""
        return self.steps_seen - self.finite_steps

    # PEFT calls reset_ipt() in __init__ and once the final budget is fixed; the signal's EMAs go with it.
    def reset_ipt(self):
        super().reset_ipt()
        if hasattr(self, "signal"):
            self.signal.reset()

    def updated_signals(self) -> list[Signal]:
        """The signals whose state moves every step: this run's one (a shared warm-up tracks several)."""
        return [self.signal]

    def update_ipt(self, model):
        # Gathers into buffers reused every step; no host synchronisation on the accelerator path (benchmarks/).
        layout = self.layout
        with torch.no_grad(), serial_on_cpu(layout.device):
            g = layout.flat_grads(out=layout.work_buffer("grads"))
            finite = layout.check_finite_(g)  # zeroes g on a non-finite step
            signals = self.updated_signals()
            wanted = any(s.wants_flat_weights for s in signals)
            w = layout.flat_weights(out=layout.work_buffer("weights")) if wanted else None
            for signal in signals:  # each sees the same w, g and finite; none writes to them (they are shared)
                signal.update(w if signal.wants_flat_weights else None, g, finite)
            self.steps_seen += 1
            self.finite_steps.add_(finite)

    def mask_to_budget(self, model, budget):
        """Keep the ``budget`` best triplets by the signal's scores: a few whole-tensor ops for all modules, then one
        device-to-host transfer that brings back the mask, the counters and the per-module score statistics that
        the logs need (``last_allocation``)."""
        scores, parts = self.signal.scores_and_parts()
        keep = keep_top_k(scores, budget) if self.fixed is None else self.fixed
        self.layout.mask_E_(keep)
        kept, stats, finite_steps = self._to_host(keep, {"": scores, **parts})
        self.last_allocation = {
            "budget": int(budget),
            "keep": keep,  # on the device
            "scores": scores,
            "parts": parts,
            "kept": kept,  # on the host: per module, one bool per triplet
            "stats": stats,  # on the host: {"" (the score) or part: per module (sum, mean, min, max)}
            "steps_seen": self.steps_seen,
            "nonfinite_steps": self.steps_seen - finite_steps,
        }
        return {self.layout.e_key(m): row for m, row in enumerate(kept)}

    def _to_host(self, keep: torch.Tensor, scores: dict[str, torch.Tensor]):
        """Pack the mask, the finite-step counter and per-module sum/mean/min/max of every score tensor (float64,
        as the logs have always had them) into one device buffer and read it with a single transfer."""
        modules, r = keep.shape
        n_keep, n_stats = modules * r, 4 * len(scores) * modules
        pack = self.layout.work_buffer("allocation", n_keep + 1 + n_stats, torch.float64, keep.device)
        pack[:n_keep].view(modules, r).copy_(keep)
        pack[n_keep].copy_(self.finite_steps)
        stats = pack[n_keep + 1:].view(4, len(scores), modules)
        values = self.layout.work_buffer("allocation_scores", len(scores) * n_keep, torch.float64, keep.device)
        values = torch.stack(list(scores.values()), out=values.view(len(scores), modules, r))  # float64, as logged
        torch.sum(values, dim=-1, out=stats[0])
        torch.div(stats[0], r, out=stats[1])  # the mean, as torch.mean computes it on CPU
        torch.aminmax(values, dim=-1, out=(stats[2], stats[3]))
        host = pack.tolist()  # the one device-to-host transfer of an allocation
        kept = [[v > 0.5 for v in host[m * r:(m + 1) * r]] for m in range(modules)]
        flat_stats = host[n_keep + 1:]
        per_module = {}
        for i, name in enumerate(scores):
            columns = [flat_stats[(k * len(scores) + i) * modules:(k * len(scores) + i + 1) * modules]
                       for k in range(4)]
            per_module[name] = list(zip(*columns))
        return kept, per_module, int(host[n_keep])

    def update_and_allocate(self, model, global_step, force_mask=False):
        """PEFT's (score update, schedule, allocation), then the fixed pattern re-applied, if the signal has one."""
        result = super().update_and_allocate(model, global_step, force_mask)
        self.hold_fixed_pattern()
        return result

    def hold_fixed_pattern(self) -> None:
        """Zero every E entry outside the fixed pattern (nothing without one): after each optimizer step, and once
        before the first, so that from step 0 on only the pattern's triplets take part in a forward pass."""
        if self.fixed is not None:
            self.layout.mask_E_(self.fixed)

    def outside_fixed_pattern(self) -> int:
        """How many E entries outside the fixed pattern are nonzero now (one host read; 0 without a pattern)."""
        if self.fixed is None:
            return 0
        with torch.no_grad():
            return int((torch.stack(self.layout.E).view(self.fixed.shape)[~self.fixed] != 0).sum())

    def mask_using_rank_pattern(self, model, rank_pattern):
        """Final phase: re-apply the fixed mask every step, as PEFT's ``masked_fill_`` does (a dropped entry becomes
        +0.0 whatever it held, NaN or negative; a kept one keeps its bits), from a mask cached on the device."""
        if self._final_masks is None or self._final_masks[0] is not rank_pattern:
            rows = []
            for m in range(self.layout.num_modules):
                key = self.layout.e_key(m)
                rows.append(rank_pattern[key] if key in rank_pattern
                            else rank_pattern[key.replace(f".{self.adapter_name}", "")])
            e = self.layout.E[0]  # one host-to-device copy for all modules, once per rank pattern
            keep = torch.tensor(rows, device=e.device).ne(0).view(self.layout.num_modules, -1)  # PEFT: .bool()
            self._final_masks = (rank_pattern, keep)
        self.layout.mask_E_(self._final_masks[1])

    # -- checkpointing -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "signal": self.signal_name,
            "buffers": self.signal.state_dict(),
            "steps_seen": torch.tensor(self.steps_seen),
            "nonfinite_steps": self.nonfinite_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["signal"] != self.signal_name:
            raise ValueError(f"allocator state is for signal {state['signal']!r}, not {self.signal_name!r}")
        self.signal.load_state_dict(state["buffers"])
        self.steps_seen = int(state["steps_seen"])
        self.finite_steps.fill_(self.steps_seen - int(state["nonfinite_steps"]))


def keep_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (same shape) keeping exactly the k highest scores; ties resolved by position (earlier pruned first).

    NaN scores count as lowest. Four ops, no host synchronisation.
    """
    flat = torch.nan_to_num(scores.reshape(-1).float(), nan=float("-inf"))
    n_prune = flat.numel() - int(k)
    if not 0 <= n_prune <= flat.numel():
        raise ValueError(f"budget {k} is outside [0, {flat.numel()}]")
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    keep.index_fill_(0, torch.sort(flat, stable=True).indices[:n_prune], False)
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
