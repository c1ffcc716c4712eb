"""AdaLoRA signal-replacement ablation: PEFT's AdaLoRA with only the triplet-scoring signal swapped.

Importing the package loads nothing heavy: the run-folder readers (``runs``, ``report``, ``plots``) need neither
torch nor peft nor transformers. The signal registry (which needs torch) is imported on first use of its names.
"""

__version__ = "0.1.0"
__all__ = ["SIGNALS", "Signal", "SignalConfig", "__version__", "register_signal"]


def __getattr__(name: str):
    if name in __all__:
        from . import signals

        return getattr(signals, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
