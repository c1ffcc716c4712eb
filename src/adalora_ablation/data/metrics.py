"""Evaluation metrics by name, as GLUE scores its tasks, and the Trainer's compute_metrics for a task.

Classification predictions are the arg-max of the logits; regression predictions (STS-B, a float-label custom
task) are the single output. F1 is binary with label id 1 as the positive class (MRPC's "equivalent", QQP's
"duplicate"), as GLUE's scorer has it. The planted task's labels can be the teacher's logits (inputs x classes):
its class is then their arg-max (``agreement`` is the accuracy against it), and ``logit_mse`` the mean squared
difference of the logits (undefined, NaN, when the labels are classes).
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

CLASSIFICATION = {
    "accuracy": lambda y, p: accuracy_score(y, p),
    "f1": lambda y, p: f1_score(y, p, average="binary", pos_label=1, zero_division=0.0),
    "matthews": lambda y, p: matthews_corrcoef(y, p),
}
REGRESSION = {
    "pearson": lambda y, p: stats.pearsonr(p, y).statistic,
    "spearman": lambda y, p: stats.spearmanr(p, y).statistic,
}
# The planted task's: agreement with the teacher's class, and the logits' MSE against the teacher's (targets logits)
TEACHER = {"agreement": lambda y, p: accuracy_score(y, p)}
DISTILLATION = ("logit_mse",)
METRICS = (*CLASSIFICATION, *REGRESSION, *TEACHER, *DISTILLATION)


def _array(logits) -> np.ndarray:
    return np.asarray(logits[0] if isinstance(logits, tuple) else logits)


def predictions(logits, regression: bool) -> np.ndarray:
    logits = _array(logits)
    return logits.reshape(-1) if regression else np.argmax(logits, axis=-1)


def compute(names: tuple[str, ...], logits, labels, regression: bool) -> dict[str, float]:
    """Each named metric of the predictions against the labels. A correlation of constant predictions is
    undefined and comes out as NaN (written as null), never as a made-up number."""
    table = REGRESSION if regression else {**CLASSIFICATION, **TEACHER}
    labels = np.asarray(labels)
    soft = not regression and labels.ndim == 2  # the teacher's logits, one row per input
    preds, targets = predictions(logits, regression), labels.argmax(-1) if soft else labels.reshape(-1)
    out = {}
    for name in names:
        if name in DISTILLATION:
            out[name] = float(np.mean((_array(logits) - labels) ** 2)) if soft else float("nan")
            continue
        if name not in table:
            kind = "regression" if regression else "classification"
            raise ValueError(f"metric {name!r} does not apply to a {kind} task; use one of {', '.join(table)}")
        if regression and (np.ptp(preds) == 0 or np.ptp(targets) == 0):
            out[name] = float("nan")
            continue
        out[name] = float(table[name](targets, preds))
    return out


def compute_metrics_for(task):
    """The Trainer's compute_metrics: every metric of the task table's entry, main metric first."""

    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        return compute(task.metrics, logits, labels, task.regression)

    return compute_metrics
