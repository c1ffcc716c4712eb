"""Scoring signals: which triplets survive AdaLoRA's budget. Adding one is a small class and one registry entry.

Every signal sees, once per optimizer step, the flat adapter weights ``w``, gradients ``g`` and a 0-dim bool
tensor ``finite`` (False when any adapter gradient is NaN/Inf). Its EMAs must not move on such a step; the update
uses ``torch.where`` so that no host synchronisation happens per step. At allocation time ``scores()`` returns one
score per triplet (modules x r, higher = keep).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .lora_layout import LoraLayout

NORMALIZE_METHODS = ("zscore", "minmax", "rank")


@dataclass
class SignalConfig:
    beta1: float = 0.85  # PEFT's sensitivity EMA (baseline only)
    beta2: float = 0.85  # PEFT's uncertainty EMA (baseline only)
    ema_decay: float = 0.9  # EMA decay of the replacement signals
    combo_lambda: float = 1.0
    normalize_method: str = "zscore"
    seed: int = 0  # for signals that draw random numbers


def ema_(avg: torch.Tensor, new: torch.Tensor, decay: float, finite: torch.Tensor) -> torch.Tensor:
    """avg <- decay * avg + (1 - decay) * new, in PEFT's op order (bitwise equal to it), skipped when not finite."""
    avg.copy_(torch.where(finite, decay * avg + (1 - decay) * new, avg))
    return avg


class Signal:
    """Base class. Subclasses set ``name``, create their buffers in ``__init__`` and implement update/scores."""

    name: str = ""
    description: str = ""

    def __init__(self, layout: LoraLayout, config: SignalConfig):
        self.layout = layout
        self.config = config
        self.buffers: dict[str, torch.Tensor] = {}

    def _buffer(self, name: str, numel: int) -> torch.Tensor:
        self.buffers[name] = torch.zeros(numel, device=self.layout.device, dtype=torch.float32)
        return self.buffers[name]

    def update(self, w: torch.Tensor, g: torch.Tensor, finite: torch.Tensor) -> None:
        raise NotImplementedError

    def scores(self) -> torch.Tensor:
        raise NotImplementedError

    def parts(self) -> dict[str, torch.Tensor]:
        """Named components of the score (modules x r) worth logging besides the score itself."""
        return {}

    def reset(self) -> None:
        for buf in self.buffers.values():
            buf.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.buffers.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.buffers[k].copy_(v)


class BaselineAdaLoRA(Signal):
    """PEFT's own AdaLoRA score: EMA(|w*g|) * EMA(|ipt - EMA(ipt)|), combined per triplet as PEFT does."""

    name = "baseline_adalora"
    description = "PEFT's sensitivity x uncertainty (unchanged)"

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.exp_avg_ipt = self._buffer("exp_avg_ipt", layout.numel)
        self.exp_avg_unc = self._buffer("exp_avg_unc", layout.numel)

    def update(self, w, g, finite):
        ipt = (w * g).abs()
        ema_(self.exp_avg_ipt, ipt, self.config.beta1, finite)
        ema_(self.exp_avg_unc, (ipt - self.exp_avg_ipt).abs(), self.config.beta2, finite)

    def scores(self):
        return self.layout.combine_elements(self.exp_avg_ipt * self.exp_avg_unc)


class ImportanceOnly(Signal):
    """EMA(|w*g|) per element, no uncertainty term; combined per triplet as PEFT does."""

    name = "importance_only"
    description = "EMA of |w*grad| (sensitivity without uncertainty)"

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.exp_avg_ipt = self._buffer("exp_avg_ipt", layout.numel)

    def update(self, w, g, finite):
        ema_(self.exp_avg_ipt, (w * g).abs(), self.config.ema_decay, finite)

    def scores(self):
        return self.layout.combine_elements(self.exp_avg_ipt)


class PlasticityOnly(Signal):
    """EMA of the triplet's gradient norm sqrt(g(E_i)^2 + ||g(A_i)||^2 + ||g(B_i)||^2)."""

    name = "plasticity_only"
    description = "EMA of the triplet's gradient L2 norm"

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.exp_avg_norm = self._buffer("exp_avg_norm", layout.num_triplets)

    def update(self, w, g, finite):
        norms = self.layout.triplet_sums(g * g).sqrt().view(-1)
        ema_(self.exp_avg_norm, norms, self.config.ema_decay, finite)

    def scores(self):
        return self.exp_avg_norm.view(self.layout.num_modules, self.layout.r).clone()


def normalize(x: torch.Tensor, method: str) -> torch.Tensor:
    """Normalize scores across all triplets of all modules (zscore, minmax or rank in [0, 1], ties averaged)."""
    flat = x.reshape(-1).double()
    if method == "zscore":
        std = flat.std(correction=0)
        out = (flat - flat.mean()) / std if std > 0 else torch.zeros_like(flat)
    elif method == "minmax":
        span = flat.max() - flat.min()
        out = (flat - flat.min()) / span if span > 0 else torch.zeros_like(flat)
    elif method == "rank":
        values, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
        first = torch.cumsum(counts, 0) - counts  # 0-based rank of the first occurrence of each value
        average_rank = first.double() + (counts.double() - 1) / 2
        out = average_rank[inverse] / max(flat.numel() - 1, 1)
    else:
        raise ValueError(f"unknown normalize method {method!r}; choose one of {', '.join(NORMALIZE_METHODS)}")
    return out.view_as(x).to(x.dtype)


class Combo(Signal):
    """normalize(importance) + combo_lambda * normalize(plasticity), normalized across all triplets."""

    name = "combo"
    description = "normalized importance + lambda * normalized plasticity"

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.importance = ImportanceOnly(layout, config)
        self.plasticity = PlasticityOnly(layout, config)
        self.buffers = {
            **{f"importance.{k}": v for k, v in self.importance.buffers.items()},
            **{f"plasticity.{k}": v for k, v in self.plasticity.buffers.items()},
        }

    def update(self, w, g, finite):
        self.importance.update(w, g, finite)
        self.plasticity.update(w, g, finite)

    def parts(self):
        return {"importance": self.importance.scores(), "plasticity": self.plasticity.scores()}

    def scores(self):
        parts = self.parts()
        method = self.config.normalize_method
        return normalize(parts["importance"], method) + self.config.combo_lambda * normalize(parts["plasticity"], method)


SIGNALS: dict[str, type[Signal]] = {cls.name: cls for cls in (BaselineAdaLoRA, ImportanceOnly, PlasticityOnly, Combo)}


def register_signal(cls: type[Signal]) -> type[Signal]:
    """Class decorator: make a Signal subclass available under ``cls.name`` (CLI ``--signal``)."""
    SIGNALS[cls.name] = cls
    return cls


def build_signal(name: str, layout: LoraLayout, config: SignalConfig) -> Signal:
    if name not in SIGNALS:
        raise ValueError(f"unknown signal {name!r}; choose one of {', '.join(SIGNALS)}")
    return SIGNALS[name](layout, config)
