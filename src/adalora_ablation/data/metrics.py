"""Evaluation metrics by name, as GLUE scores its tasks, and the Trainer's compute_metrics for a task.

Classification predictions are the arg-max of the logits; regression predictions (STS-B, a float-label custom
task) are the single output. F1 is binary with label id 1 as the positive class (MRPC's "equivalent", QQP's
"duplicate"), as GLUE's scorer has it. The planted task's labels can be the teacher's logits (inputs x classes):
its class is then their arg-max (``agreement`` is the accuracy against it), and ``logit_mse`` the mean squared
difference of the logits (undefined, NaN, when the labels are classes).
"""

from __future__ import annotations

import numpy as np


# scikit-learn and scipy.stats are imported where a task first needs them (F1, Matthews, the correlations): they
# add about a second to every process's start, and most tasks (accuracy, agreement) never use them.
def _accuracy(y, p) -> float:
    return float(np.mean(np.asarray(y) == np.asarray(p)))  # the share of equal classes, as accuracy_score


def _f1(y, p) -> float:
    from sklearn.metrics import f1_score

    return f1_score(y, p, average="binary", pos_label=1, zero_division=0.0)


def _matthews(y, p) -> float:
    from sklearn.metrics import matthews_corrcoef

    return matthews_corrcoef(y, p)


def _pearson(y, p) -> float:
    from scipy import stats

    return stats.pearsonr(p, y).statistic


def _spearman(y, p) -> float:
    from scipy import stats

    return stats.spearmanr(p, y).statistic


CLASSIFICATION = {"accuracy": _accuracy, "f1": _f1, "matthews": _matthews}
REGRESSION = {"pearson": _pearson, "spearman": _spearman}
# The planted task's: agreement with the teacher's class, and the logits' MSE against the teacher's (targets logits)
TEACHER = {"agreement": _accuracy}
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
