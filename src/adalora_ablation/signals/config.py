"""A signal's settings. Apart from the registry so that the signals' own modules, which the registry imports by
name, need nothing from it."""

from __future__ import annotations

from dataclasses import dataclass

NORMALIZE_METHODS = ("zscore", "minmax", "rank")
PLASTICITY_NORMS = ("l2", "rms")


@dataclass
class SignalConfig:
    beta1: float = 0.85  # PEFT's sensitivity EMA (baseline only)
    beta2: float = 0.85  # PEFT's uncertainty EMA (baseline only)
    ema_decay: float = 0.9  # EMA decay of the replacement signals
    combo_lambda: float = 1.0
    normalize_method: str = "zscore"
    plasticity_norm: str = "l2"  # combo's plasticity part: "l2" (plasticity_only) or "rms" (plasticity_rms)
    seed: int = 0  # for signals that draw random numbers
    planted: dict[str, int] | None = None  # task planted: short module name -> planted rank (the oracle's answer)
