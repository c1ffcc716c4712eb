"""Tasks scored by another metric than accuracy: runs of CoLA (Matthews) and STS-B (regression, Pearson) write
their metrics, and the report computes every statistic on the task's main metric."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from scipy import stats

from adalora_ablation.cli import main
from adalora_ablation.run.folder import write_summary
from adalora_ablation.train import train

MODULES = {f"layer.{i}.{m}": 2 + i for i in range(2) for m in ("attention.self.query_proj", "output.dense")}
MATTHEWS = {"baseline_adalora": [0.40, 0.42, 0.37], "combo": [0.45, 0.43, 0.44], "random": [0.30, 0.33, 0.31]}
ACCURACY = {"baseline_adalora": [0.80, 0.81, 0.79], "combo": [0.82, 0.83, 0.80], "random": [0.75, 0.76, 0.74]}
EFFECT = {"baseline_adalora": [0.10, 0.12, 0.09], "combo": [0.11, 0.13, 0.12], "random": [0.05, 0.04, 0.06]}


def craft_cola(root):
    for signal, values in MATTHEWS.items():
        for seed, value in enumerate(values, start=1):
            summary = {"eval_matthews": value, "eval_accuracy": ACCURACY[signal][seed - 1],
                       "adapter_effect": EFFECT[signal][seed - 1],
                       "eval_matthews_without_adapters": value - EFFECT[signal][seed - 1],
                       "total_rank": sum(MODULES.values()), "target_budget": sum(MODULES.values()),
                       "budget_check_passed": True, "final_ranks": MODULES}
            run_dir = root / "cola" / signal / str(seed)
            run_dir.mkdir(parents=True)
            write_summary(run_dir, summary)
    return root


def run_report(capsys, root, fmt):
    assert main(["report", "--task", "cola", "--output-root", str(root), "--format", fmt]) == 0
    return capsys.readouterr().out


def test_report_tests_the_main_metric_and_shows_the_others_as_columns(tmp_path, capsys):
    root = craft_cola(tmp_path)
    report = json.loads(run_report(capsys, root, "json"))
    assert report["metrics"] == {"eval_matthews": "Matthews corr."}
    rows = {r["signal"]: r for r in report["signals"]}
    combo = rows["combo"]["eval_matthews"]
    assert combo["mean"] == pytest.approx(np.mean(MATTHEWS["combo"]))
    assert combo["std"] == pytest.approx(np.std(MATTHEWS["combo"], ddof=1))
    expected = stats.ttest_rel(MATTHEWS["combo"], MATTHEWS["baseline_adalora"])
    assert combo["vs_baseline"]["p_value"] == pytest.approx(expected.pvalue)
    assert combo["vs_baseline"]["mean_diff"] == pytest.approx(
        np.mean(np.subtract(MATTHEWS["combo"], MATTHEWS["baseline_adalora"])))
    # The controls' band and the adapter effect are on Matthews correlation too.
    assert report["reference_band"]["random"]["eval_matthews"]["mean"] == pytest.approx(np.mean(MATTHEWS["random"]))
    assert rows["combo"]["adapter_effect"]["eval_matthews"]["mean"] == pytest.approx(np.mean(EFFECT["combo"]))
    assert report["adapter_effect"]["field"] == "adapter_effect"
    # Accuracy is a secondary column: mean ± std per signal, no test.
    secondary = report["secondary_metrics"]["eval_accuracy"]
    assert secondary["label"] == "accuracy"
    assert secondary["signals"]["combo"]["mean"] == pytest.approx(np.mean(ACCURACY["combo"]))
    assert "vs_baseline" not in secondary["signals"]["combo"]

    markdown = run_report(capsys, root, "markdown")
    header = next(line for line in markdown.splitlines() if line.startswith("| signal |"))
    assert "Matthews corr. mean ± std [95% CI]" in header and "Δ Matthews corr. vs baseline_adalora" in header
    assert "| accuracy mean ± std |" in header
    combo_line = next(line for line in markdown.splitlines() if line.startswith("| combo |"))
    assert f"{np.mean(ACCURACY['combo']):.4f} ± {np.std(ACCURACY['combo'], ddof=1):.4f}" in combo_line

    table = {r["signal"]: r for r in csv.DictReader(io.StringIO(run_report(capsys, root, "csv")))}
    assert float(table["combo"]["eval_matthews_mean"]) == pytest.approx(np.mean(MATTHEWS["combo"]))
    assert float(table["combo"]["eval_accuracy_mean"]) == pytest.approx(np.mean(ACCURACY["combo"]))
    assert float(table["combo"]["adapter_effect_mean"]) == pytest.approx(np.mean(EFFECT["combo"]))


def tiny_run(task, glue_dir, root, signal="baseline_adalora"):
    return train(["--task", task, "--signal", signal, "--model", "tiny-deberta", "--data-dir", str(glue_dir),
                  "--output-root", str(root), "--max-train-samples", "64", "--max-eval-samples", "48",
                  "--max-seq-length", "32", "--per-device-train-batch-size", "8", "--max-steps", "16", "--tinit", "2",
                  "--tfinal", "4", "--deltaT", "2", "--eval-strategy", "no", "--save-strategy", "no",
                  "--learning-rate", "5e-3", "--warmup-steps", "0"])


@pytest.mark.slow
def test_stsb_trains_one_regression_output_and_reports_pearson_and_spearman(tmp_path, glue_head, capsys):
    summary = tiny_run("stsb", glue_head, tmp_path)
    assert summary["eval_metrics"]["eval_pearson"] == summary["eval_pearson"]
    assert summary["eval_metrics"]["eval_spearman"] == summary["eval_spearman"]
    assert -1 <= summary["eval_pearson"] <= 1 and "eval_accuracy" not in summary
    assert summary["adapter_effect"] == pytest.approx(summary["eval_pearson"]
                                                      - summary["eval_pearson_without_adapters"])
    assert summary["total_rank"] == summary["target_budget"] == 4 * 12 and summary["budget_check_passed"]
    adapter = json.loads((tmp_path / "stsb" / "baseline_adalora" / "42" / "final_adapter" /
                          "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS"
    config = json.loads((tmp_path / "stsb" / "baseline_adalora" / "42" / "final_summary.json").read_text())
    assert config["eval_pearson"] == summary["eval_pearson"]
    capsys.readouterr()  # the run's own console lines
    assert main(["report", "--task", "stsb", "--output-root", str(tmp_path), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"] == {"eval_pearson": "Pearson"}
    assert report["signals"][0]["eval_pearson"]["mean"] == summary["eval_pearson"]
    assert report["secondary_metrics"]["eval_spearman"]["signals"]["baseline_adalora"]["mean"] == \
        summary["eval_spearman"]


@pytest.mark.slow
def test_cola_single_sentences_train_and_are_scored_by_matthews_correlation(tmp_path, glue_head):
    summary = tiny_run("cola", glue_head, tmp_path)
    assert summary["eval_metrics"]["eval_matthews"] == summary["eval_matthews"]
    assert 0 <= summary["eval_accuracy"] <= 1 and -1 <= summary["eval_matthews"] <= 1
    assert summary["adapter_effect"] == pytest.approx(summary["eval_matthews"]
                                                      - summary["eval_matthews_without_adapters"])
    from adalora_ablation.analysis.plots import load_run, plot_comparison

    titled = {ax.get_title(): ax for ax in plot_comparison({"baseline_adalora": load_run(
        tmp_path / "cola" / "baseline_adalora" / "42")}).axes}
    assert list(titled["Matthews corr. per signal"].lines[0].get_ydata()) == [summary["eval_matthews"]]
    # evaluated only after training (--eval-strategy no): the progress panel is the training loss, not one point
    assert "Training loss" in titled and "Eval Matthews corr. during training" not in titled


def test_a_task_without_labels_gets_one_output_trained_with_mse():
    import torch

    from adalora_ablation.adalora.model import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("tiny-deberta", ())
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    batch = tokenizer(["a man plays", "a dog runs"], ["a man sings", "a cat sleeps"], return_tensors="pt",
                      padding=True)
    scores = torch.tensor([4.2, 0.5])
    out = model(**batch, labels=scores)
    assert out.logits.shape == (2, 1)
    assert out.loss.item() == pytest.approx(torch.mean((out.logits[:, 0] - scores) ** 2).item(), rel=1e-6)
