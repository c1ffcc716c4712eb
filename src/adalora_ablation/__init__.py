"""AdaLoRA signal-replacement ablation: PEFT's AdaLoRA with only the triplet-scoring signal swapped."""

from . import controls, reference_signals  # noqa: F401  (register the control signals and the literature's scores)
from .signals import SIGNALS, Signal, SignalConfig, register_signal

__version__ = "0.1.0"
__all__ = ["SIGNALS", "Signal", "SignalConfig", "register_signal", "__version__"]
