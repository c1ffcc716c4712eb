"""What the adapters contribute: the finished model evaluated once more with every LoRA update switched off.

A signal comparison only means something if the adapters carry part of what the model learned. The switch sets
every AdaLoRA layer's ``scaling`` to 0, so each adapted Linear computes its base output alone, while the trained
head (``modules_to_save``: pooler and classifier) stays active. PEFT's ``disable_adapter()`` is not the right
switch: it also swaps the head back to the untrained original.
"""

from __future__ import annotations

import contextlib

from peft.tuners.adalora.layer import AdaLoraLayer


@contextlib.contextmanager
def adapters_switched_off(model):
    """Inside the block the LoRA updates contribute nothing (scaling 0); afterwards every scaling is restored to
    the exact value it had, so the model computes bit for bit what it did before."""
    layers = [m for m in model.modules() if isinstance(m, AdaLoraLayer)]
    saved = [dict(layer.scaling) for layer in layers]
    try:
        for layer in layers:
            for name in layer.scaling:
                layer.scaling[name] = 0.0
        yield
    finally:
        for layer, scaling in zip(layers, saved):
            layer.scaling.update(scaling)


def accuracy_without_adapters(trainer, eval_sets: dict, keys: dict[str, str], metric: str = "accuracy"
                              ) -> dict[str, float]:
    """The task's main ``metric`` (accuracy, Matthews correlation, Pearson, ...) of every eval set (name -> the key
    to report it under) with the adapters switched off. Uses ``predict``, which logs nothing, so the run's logged
    metrics stay those of the model itself."""
    with adapters_switched_off(trainer.model):
        return {key: trainer.predict(eval_sets[name]).metrics[f"test_{metric}"] for name, key in keys.items()}
