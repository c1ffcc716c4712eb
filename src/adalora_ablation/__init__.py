"""AdaLoRA signal-replacement ablation: PEFT's AdaLoRA with only the triplet-scoring signal swapped."""

from . import controls  # noqa: F401  (registers the `random` and `uniform` control signals)
from .signals import SIGNALS, Signal, SignalConfig, register_signal

__version__ = "0.1.0"
__all__ = ["SIGNALS", "Signal", "SignalConfig", "register_signal", "__version__"]
