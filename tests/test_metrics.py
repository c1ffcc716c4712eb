"""Each task's metrics on crafted predictions, against the formulas and scikit-learn/scipy."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from adalora_ablation.data.metrics import compute, compute_metrics_for
from adalora_ablation.data.tasks import TASKS

LABELS = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1, 1])
PREDS = np.array([1, 0, 1, 0, 1, 0, 1, 0, 0, 1])  # tp 4, fn 2, fp 1, tn 3


def logits_for(preds, num_labels=2, seed=0):
    """Random logits whose arg-max is preds."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(preds), num_labels))
    logits[np.arange(len(preds)), preds] = logits.max(axis=1) + 1.0
    return logits


def test_classification_metrics_match_their_formulas_and_sklearn():
    tp, fn, fp, tn = 4, 2, 1, 3
    got = compute(("accuracy", "f1", "matthews"), logits_for(PREDS), LABELS, regression=False)
    assert got["accuracy"] == pytest.approx((tp + tn) / 10) == accuracy_score(LABELS, PREDS)
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) == f1_score(LABELS, PREDS)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert got["matthews"] == pytest.approx(mcc) == matthews_corrcoef(LABELS, PREDS)


def test_regression_metrics_use_the_single_output_and_match_scipy():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 5, size=40).astype(np.float32)
    outputs = (scores + rng.normal(scale=1.0, size=40)).reshape(-1, 1)  # the model's (rows, 1) output
    got = compute(("pearson", "spearman"), outputs, scores, regression=True)
    x, y = outputs[:, 0].astype(float), scores.astype(float)
    dx, dy = x - x.mean(), y - y.mean()
    pearson = np.sum(dx * dy) / np.sqrt(np.sum(dx ** 2) * np.sum(dy ** 2))
    assert got["pearson"] == pytest.approx(pearson, rel=1e-5)
    assert got["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, rel=1e-6)
    assert got["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-6)
    assert 0.5 < got["pearson"] < 1  # noisy but correlated: the crafted data is what the numbers say


def test_constant_predictions_have_no_correlation_rather_than_a_made_up_one():
    got = compute(("pearson", "spearman"), np.full((5, 1), 2.0), np.arange(5.0), regression=True)
    assert math.isnan(got["pearson"]) and math.isnan(got["spearman"])


def test_a_metric_of_the_other_kind_is_refused():
    with pytest.raises(ValueError, match="metric 'pearson' does not apply to a classification task"):
        compute(("pearson",), logits_for(PREDS), LABELS, regression=False)


@pytest.mark.parametrize("task_name, expected", [
    ("cola", {"matthews": matthews_corrcoef, "accuracy": accuracy_score}),
    ("sst2", {"accuracy": accuracy_score}),
    ("mrpc", {"accuracy": accuracy_score, "f1": f1_score}),
    ("qqp", {"accuracy": accuracy_score, "f1": f1_score}),
    ("qnli", {"accuracy": accuracy_score}),
    ("rte", {"accuracy": accuracy_score}),
])
def test_every_classification_task_computes_its_metrics_main_first(task_name, expected):
    task = TASKS[task_name]
    got = compute_metrics_for(task)((logits_for(PREDS, task.num_labels), LABELS))
    assert list(got) == list(expected) and list(got)[0] == task.metrics[0]
    for name, reference in expected.items():
        assert got[name] == pytest.approx(reference(LABELS, PREDS))


def test_mnli_three_classes_accuracy():
    labels, preds = np.array([0, 1, 2, 2, 1, 0]), np.array([0, 2, 2, 1, 1, 0])
    got = compute_metrics_for(TASKS["mnli"])((logits_for(preds, 3), labels))
    assert got == {"accuracy": pytest.approx(4 / 6)}


def test_stsb_is_regression_scored_by_pearson_then_spearman():
    task = TASKS["stsb"]
    assert task.regression and task.num_labels == 1
    scores = np.array([0.0, 1.2, 2.5, 3.1, 4.8, 5.0])
    outputs = np.array([[0.3], [1.0], [2.9], [2.8], [4.1], [4.9]])
    got = compute_metrics_for(task)((outputs, scores))
    assert list(got) == ["pearson", "spearman"]
    assert got["pearson"] == pytest.approx(stats.pearsonr(outputs[:, 0], scores).statistic)
    assert got["spearman"] == pytest.approx(stats.spearmanr(outputs[:, 0], scores).statistic)


def test_planted_metrics_take_the_teachers_logits_or_its_classes():
    rng = np.random.default_rng(2)
    teacher = rng.normal(size=(50, 8))
    student = teacher + rng.normal(scale=0.5, size=teacher.shape)
    got = compute(TASKS["planted"].metrics, student, teacher, regression=False)
    assert list(got) == ["agreement", "logit_mse"]
    assert got["agreement"] == pytest.approx(np.mean(student.argmax(1) == teacher.argmax(1)))
    assert got["logit_mse"] == pytest.approx(np.mean((student - teacher) ** 2))
    assert compute(("agreement",), teacher, teacher, regression=False)["agreement"] == 1.0
    # --planted-targets labels: the rows hold the teacher's classes; the logits' MSE is undefined there
    hard = compute(TASKS["planted"].metrics, student, teacher.argmax(1), regression=False)
    assert hard["agreement"] == got["agreement"] and math.isnan(hard["logit_mse"])
