"""AdaLoRA signal-replacement ablation: PEFT's AdaLoRA with only the triplet-scoring signal swapped.

Importing the package loads nothing heavy: the signal registry and the run-folder readers (``signals``,
``run.folder``, ``analysis``) need neither torch nor peft nor transformers. ``Signal`` (the base class, which needs
torch) is imported on first use of its name.
"""

__version__ = "0.1.0"
__all__ = ["SIGNALS", "Signal", "SignalConfig", "__version__", "register_signal"]


def __getattr__(name: str):
    if name == "Signal":
        from .signals.base import Signal

        return Signal
    if name in __all__:
        from . import signals

        return getattr(signals, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
