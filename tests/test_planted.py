"""The planted task: its spec and recovery metrics, the teacher, the rows it labels, the oracle, the CLI's errors."""

import copy
import csv
import io
import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from transformers import set_seed

from adalora_ablation.adalora.allocator import keep_top_k
from adalora_ablation.adalora.model import detect_target_modules, load_model_and_tokenizer
from adalora_ablation.data import planted
from adalora_ablation.data.planted_spec import (
    check_planted_spec, default_planted_spec, parse_planted_spec, planted_recall, planted_share,
)
from adalora_ablation.data.tasks import TASKS
from adalora_ablation.errors import UsageError
from adalora_ablation.module_names import short_module_name
from adalora_ablation.signals import SignalConfig, build_signal
from adalora_ablation.signals.layout import LoraLayout
from adalora_ablation.train import train
from conftest import tiny_adalora

TASK = TASKS["planted"]


def test_recall_and_share_on_crafted_rank_patterns():
    spec = {"a": 4, "b": 2}
    assert planted_recall({"a": 4, "b": 2, "c": 6}, spec) == 1.0
    assert planted_share({"a": 4, "b": 2, "c": 6}, spec) == 0.5
    assert planted_recall({"a": 9, "b": 0, "c": 1}, spec) == 4 / 6  # rank above the planted one does not count
    assert planted_share({"a": 9, "b": 0, "c": 1}, spec) == 0.9
    assert planted_recall({"a": 1, "b": 1}, spec) == 2 / 6 and planted_share({"a": 0, "b": 0}, spec) == 0.0


def test_default_spec_spreads_a_rank_a_uniform_budget_cannot_hold_over_layers_and_types():
    types = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense")
    for layers, init_r, target_r, rank in ((6, 8, 1, 8), (6, 8, 2, 8), (6, 12, 4, 12), (2, 8, 1, 6), (2, 8, 2, 8)):
        names = [f"layer.{i}.{m}" for i in range(layers) for m in types]
        spec = default_planted_spec(names, init_r=init_r, target_r=target_r)
        check_planted_spec(spec, names, init_r=init_r, target_r=target_r)  # fits
        # the last layer's attention output and the first layer's FFN input, each at half the budget (at most
        # --init-r): far above a uniform spread's --target-r
        assert spec == {f"layer.{layers - 1}.attention.output.dense": rank, "layer.0.intermediate.dense": rank}
        assert rank > target_r
    # a decoder's names: o_proj and up_proj are its O and FFN-in
    names = [f"layers.{i}.{m}" for i in range(4) for m in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj")]
    assert default_planted_spec(names, init_r=8, target_r=1) == {"layers.3.self_attn.o_proj": 6,
                                                                 "layers.0.mlp.up_proj": 6}


def test_a_planted_run_made_with_another_default_rule_is_another_run(monkeypatch):
    """The default spec's modules are chosen from the model, so --planted-modules stays empty in the settings; the
    rule itself is recorded, so that a finished run made with another default is never taken for this one."""
    from adalora_ablation.args import parse_train_args, run_config
    from adalora_ablation.data import planted_spec
    from adalora_ablation.run.identity import differing, identity

    default = identity(run_config(*parse_train_args(["--task", "planted"])))
    assert default["settings"]["planted_default"] == planted_spec.default_rule()
    assert "FFN-in" in planted_spec.default_rule() and "last layer O" in planted_spec.default_rule()
    given = identity(run_config(*parse_train_args(["--task", "planted", "--planted-modules",
                                                   "layer.0.output.dense=2"])))
    assert "planted_default" not in given["settings"]  # an explicit spec is its own setting
    assert "planted_default" not in identity(run_config(*parse_train_args(["--task", "rte"])))["settings"]

    monkeypatch.setattr(planted_spec, "DEFAULT_PLANTED_PLACES", (("last", "O"),))
    other = identity(run_config(*parse_train_args(["--task", "planted"])))
    assert other["fingerprint"] != default["fingerprint"]
    assert differing(default["settings"], other["settings"]) == ["planted_default"]


@pytest.mark.parametrize("spec, fragment", [
    ({"layer.9.nope": 2}, "not adapted; choose from: layer.0.a"),
    ({"layer.0.a": 9}, "above --init-r 8"),
    ({"layer.0.a": 8, "layer.0.b": 8}, "above the final budget of 4"),
])
def test_spec_errors_name_the_fix(spec, fragment):
    with pytest.raises(UsageError, match=fragment.replace(".", r"\.")):
        check_planted_spec(spec, ["layer.0.a", "layer.0.b"], init_r=8, target_r=2)
    with pytest.raises(UsageError, match="NAME=RANK"):
        parse_planted_spec("layer.0.a=2,layer.0.b")


def tiny_setup(spec, targets="logits", strength="auto", seed=3, train_rows=320, eval_rows=80):
    return planted.PlantedSetup(spec=spec, seed=seed, strength=strength, train_rows=train_rows, eval_rows=eval_rows,
                                classes=len(TASK.labels), targets=targets)


@pytest.fixture(scope="module")
def tiny_model():
    set_seed(0)
    model, tokenizer = load_model_and_tokenizer("tiny-deberta", TASK.labels)
    return model, tokenizer, [short_module_name(n) for n in detect_target_modules(model)]


@pytest.fixture(scope="module")
def tiny_teacher(tiny_model):
    model, tokenizer, names = tiny_model
    model = copy.deepcopy(model)  # prepare_teacher centres and scales this model's head
    setup = tiny_setup(default_planted_spec(names, 8, 2))
    teacher, pairs, record, updates = planted.prepare_teacher(model, tokenizer, TASK, setup, None, 24,
                                                              log=lambda _: None)
    return model, tokenizer, setup, teacher, pairs, record


def predictions(model, tokenizer, rows):
    return logits_of(model, tokenizer, rows).argmax(-1).tolist()


def logits_of(model, tokenizer, rows):
    batch = planted._encode(tokenizer, TASK, list(zip(rows["sentence1"], rows["sentence2"])), 24)
    return planted._logits(model, batch)


def test_rows_carry_the_teachers_logits_and_the_base_model_is_far_from_them(tiny_teacher):
    model, tokenizer, setup, teacher, pairs, record = tiny_teacher
    rows = planted.label_rows(teacher, tokenizer, TASK, setup, pairs, 24)
    assert len(rows["validation"]) == setup.eval_rows and len(rows["train"]) == setup.train_rows
    for split in ("train", "validation"):
        taught = logits_of(teacher, tokenizer, rows[split])
        assert torch.allclose(torch.tensor(rows[split]["label"]), taught, atol=1e-5)  # the teacher's own logits
        counts = Counter(taught.argmax(-1).tolist())  # the centred head: every class predicted, none dominates
        assert set(counts) == set(range(setup.classes)) and max(counts.values()) < 3 * len(taught) / setup.classes
        # Without the planted updates (the base model) the arg-max agrees on at most about half of the rows
        agree = sum(p == y for p, y in zip(predictions(model, tokenizer, rows[split]), taught.argmax(-1).tolist()))
        assert agree / len(taught) < planted.BASE_AGREEMENT + 0.1, (split, agree)
    assert record["strength"] == "auto" and record["strength_used"] in planted.STRENGTH_LADDER
    assert record["base_agreement"] <= planted.BASE_AGREEMENT
    assert 0.8 < float(taught.std(0).mean()) < 1.25  # the head is scaled to a logit spread of about 1
    # The updates are what differs: the teacher with them removed is the base model, bit for bit.
    no_updates = planted.make_teacher(model, {n: torch.zeros_like(planted._adapted(model)[n].weight)
                                              for n in setup.spec})
    assert predictions(no_updates, tokenizer, rows["validation"]) == predictions(model, tokenizer, rows["validation"])


# rank-1 and rank-2 modules in Q, K, V and FFN of either layer (one refused to build before rows were not selected)
BUILD_SPECS = [{"layer.0.attention.self.query_proj": 2, "layer.1.intermediate.dense": 2},
               {"layer.0.attention.self.query_proj": 1}, {"layer.1.attention.self.key_proj": 1},
               {"layer.0.attention.self.value_proj": 2}, {"layer.1.output.dense": 1},
               {"layer.0.attention.self.key_proj": 2, "layer.1.attention.self.value_proj": 1,
                "layer.0.output.dense": 2}]


# The build tests below calibrate on the first 128 candidate rows, not 512: the same code, a fourth of the forward
# passes ("auto" makes about 7 per spec); the teacher of test_rows_carry_the_teachers_logits... and those of
# test_planted_data.py calibrate on all 512.
FEW_CALIBRATION_ROWS = 128


@pytest.mark.parametrize("spec", BUILD_SPECS, ids=lambda spec: "+".join(f"{n}={r}" for n, r in spec.items()))
def test_every_valid_spec_builds_and_its_strength_is_recorded(tiny_model, spec, monkeypatch):
    monkeypatch.setattr(planted, "CALIBRATION_ROWS", FEW_CALIBRATION_ROWS)
    model, tokenizer, names = tiny_model
    model = copy.deepcopy(model)
    check_planted_spec(spec, names, init_r=8, target_r=1)
    setup = tiny_setup(spec, train_rows=64, eval_rows=32)
    teacher, pairs, record, updates = planted.prepare_teacher(model, tokenizer, TASK, setup, None, 24,
                                                              log=lambda _: None)
    rows = planted.label_rows(teacher, tokenizer, TASK, setup, pairs, 24)
    assert len(rows["train"]) == 64 and len(rows["validation"]) == 32
    # auto: the smallest rung that gets the base model's agreement down to the target, or the ladder's top
    used = record["strength_used"]
    assert record["base_agreement"] <= planted.BASE_AGREEMENT or used == planted.STRENGTH_LADDER[-1]
    assert used == planted.STRENGTH_LADDER[0] or record["base_agreement"] <= planted.BASE_AGREEMENT
    assert {n: torch.linalg.matrix_rank(u).item() for n, u in updates.items()} == spec
    # every singular value is the strength used x the module's largest
    weights = planted._adapted(model)
    for name, update in updates.items():
        sigma = torch.linalg.svdvals(update.double())[:spec[name]]
        top = torch.linalg.matrix_norm(weights[name].weight.detach().double(), ord=2)
        torch.testing.assert_close(sigma, torch.full_like(sigma, used * float(top)), rtol=1e-4, atol=0)


def test_auto_strength_stays_at_or_below_the_largest_allowed(tiny_model, monkeypatch):
    monkeypatch.setattr(planted, "CALIBRATION_ROWS", FEW_CALIBRATION_ROWS)
    model, tokenizer, names = tiny_model
    spec = {"layer.0.attention.self.value_proj": 2}

    def strength(max_strength):
        setup = planted.PlantedSetup(**{**tiny_setup(spec, train_rows=64, eval_rows=32).record(),
                                        "max_strength": max_strength})
        return planted.prepare_teacher(copy.deepcopy(model), tokenizer, TASK, setup, None, 24,
                                       log=lambda _: None)[2]

    free = strength(planted.STRENGTH_LADDER[-1])
    assert free["base_agreement"] <= planted.BASE_AGREEMENT and free["strength_used"] > planted.STRENGTH_LADDER[0]
    below = planted.STRENGTH_LADDER[planted.STRENGTH_LADDER.index(free["strength_used"]) - 1]
    capped = strength(below)  # the answer is above the cap: the cap, and the base model agrees more
    assert capped["strength_used"] == below and capped["base_agreement"] > planted.BASE_AGREEMENT
    assert capped["max_strength"] == below
    assert strength(free["strength_used"])["strength_used"] == free["strength_used"]  # at the cap: unchanged


def test_a_largest_strength_off_the_ladder_is_refused(tmp_path):
    with pytest.raises(UsageError, match="--planted-max-strength 0.01 is outside the strength ladder"):
        planted_run(tmp_path, "--planted-max-strength", "0.01")
    assert not (tmp_path / "planted").exists()


def test_labels_mode_gives_the_teachers_classes_and_a_fixed_strength_is_kept(tiny_model):
    model, tokenizer, names = tiny_model
    model = copy.deepcopy(model)
    setup = tiny_setup({"layer.1.output.dense": 2}, targets="labels", strength=3.0, train_rows=64, eval_rows=32)
    teacher, pairs, record, _ = planted.prepare_teacher(model, tokenizer, TASK, setup, None, 24, log=lambda _: None)
    rows = planted.label_rows(teacher, tokenizer, TASK, setup, pairs, 24)
    assert record["strength_used"] == 3.0
    for split in ("train", "validation"):
        assert rows[split]["label"] == predictions(teacher, tokenizer, rows[split])  # classes, not logits


def calibration_inputs(model, tokenizer, pairs):
    encoded = [planted._encode(tokenizer, TASK, pairs[:planted.CALIBRATION_ROWS], 24)]
    return planted.input_moments(model, sorted({n for n in planted._adapted(model)}), encoded)


def test_planted_updates_have_the_planted_rank_and_depend_on_the_planted_seed_only(tiny_teacher):
    model, tokenizer, setup, _, pairs, _ = tiny_teacher
    inputs = calibration_inputs(model, tokenizer, pairs)
    torch.manual_seed(1)
    first, _ = planted.planted_updates(model, setup, inputs)
    torch.manual_seed(2)  # the global (training) seed does not enter
    again, _ = planted.planted_updates(model, setup, inputs)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert all(torch.linalg.matrix_rank(u).item() == setup.spec[n] for n, u in first.items())
    other, _ = planted.planted_updates(model, tiny_setup(setup.spec, seed=setup.seed + 1), inputs)
    assert not any(torch.equal(first[n], other[n]) for n in first)


def test_oracle_keeps_the_planted_ranks_at_any_budget_that_holds_them():
    pm = tiny_adalora(init_r=6, target_r=2)
    layout = LoraLayout(pm)
    spec = {layout.names[1]: 4, layout.names[7]: 6}
    oracle = build_signal("oracle", layout, SignalConfig(planted=spec))
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):  # some PEFT-score history, so the scores are not all ties
        g = torch.randn(layout.numel, generator=generator)
        oracle.update(torch.randn(layout.numel, generator=generator), g, True)
    for budget in (10, 17, layout.num_triplets):
        ranks = dict(zip(layout.names, keep_top_k(oracle.scores(), budget).sum(1).tolist()))
        assert planted_recall(ranks, spec) == 1.0, budget


def planted_run(root, *flags):
    # short schedule and few rows: the pipeline, not the accuracy
    return train(["--task", "planted", "--output_root", str(root), "--max_steps", "24", "--tinit", "4",
                  "--tfinal", "6", "--deltaT", "2", "--planted-train-rows", "160", "--planted-eval-rows", "48",
                  "--adapter-effect", "False", *flags])


@pytest.mark.slow
def test_oracle_recall_is_one_and_the_task_ignores_the_training_seed(tmp_path):
    a = planted_run(tmp_path, "--signal", "oracle", "--seed", "1", "--logging-steps", "1")
    b = planted_run(tmp_path, "--signal", "oracle", "--seed", "2")
    c = planted_run(tmp_path, "--signal", "uniform", "--seed", "1", "--planted-seed", "7")
    d = planted_run(tmp_path / "hidden", "--signal", "oracle", "--seed", "1", "--logging-steps", "1",
                    "--planted-targets", "hidden")
    for summary in (a, b):
        assert summary["planted_recall"] == 1.0 and summary["budget_check_passed"]
        allocations = [json.loads(line) for line in
                       (tmp_path / "planted" / "oracle" / str(summary["seed"]) / "rank_pattern.jsonl").open()]
        assert allocations and all(rec["planted_recall"] == 1.0 for rec in allocations)
        # the planted directions: a number in [0, 1] for every planted module, in the summary and at every
        # allocation, and the run's number is their planted-rank-weighted mean
        spec = summary["planted"]["spec"]
        for record in (summary, *allocations):
            for field in ("planted_subspace", "planted_data_recovery"):
                by_module = record[f"{field}_by_module"]
                assert set(by_module) == set(spec) and all(0.0 <= by_module[m] <= 1.0 for m in spec)
                assert record[field] == pytest.approx(sum(spec[m] * by_module[m] for m in spec) / sum(spec.values()))
        for field in ("planted_subspace", "planted_data_recovery"):  # measured at each allocation, as it trains
            assert len({rec[field] for rec in allocations}) > 1, field
        assert summary["planted"]["construction"] == planted.construction_rule()
        assert set(summary["planted"]["principal_dims"]) == set(spec)
    assert 0.0 <= c["planted_subspace"] <= 1.0 and set(c["planted_subspace_by_module"]) == set(c["planted"]["spec"])
    assert a["planted"]["rows_digest"] == b["planted"]["rows_digest"]  # --seed does not change the task
    assert a["planted"]["head_bias_shift"] == b["planted"]["head_bias_shift"]
    assert a["planted"]["strength_used"] == b["planted"]["strength_used"] in planted.STRENGTH_LADDER
    assert a["planted"]["targets"] == "logits" and 0 <= a["eval_agreement"] <= 1 and a["eval_logit_mse"] >= 0
    assert c["planted"]["rows_digest"] != a["planted"]["rows_digest"]  # --planted-seed does
    # --planted-targets hidden: the same rows (the teacher's logits); the training loss adds the distance to the
    # teacher's final hidden states. At step 1 both students are still the base model (same seed, same first batch),
    # so the loss differs by that term alone, which the base model's own distance on the calibration rows scales to
    # about 1.
    assert d["planted"]["targets"] == "hidden" and d["planted"]["rows_digest"] == a["planted"]["rows_digest"]
    assert d["planted"]["hidden_scale"] > 0 and "hidden_scale" not in a["planted"]
    first = [json.loads((root / "planted" / "oracle" / "1" / "metrics.jsonl").open().readline())
             for root in (tmp_path, tmp_path / "hidden")]
    assert first[0]["step"] == first[1]["step"] == 1
    assert 0.2 < first[1]["loss"] - first[0]["loss"] < 5
    assert c["planted_recall"] < 1.0  # uniform cannot hold ranks above --target-r
    # the head stays the teacher's: only the adapters train (init_r 8 triplets of in + out + 1 per module)
    assert a["planted"]["train_head"] is False
    assert a["trainable_parameters"] == sum(8 * (i + o + 1) for i, o in a["module_shapes"].values())


@pytest.mark.parametrize("flags, fragment", [
    (["--planted-modules", "layer.7.output.dense=2"], "not adapted; choose from"),
    (["--planted-modules", "layer.0.output.dense=9"], "above --init-r 8"),
    (["--planted-modules", "layer.0.output.dense=8,layer.1.output.dense=8,layer.0.intermediate.dense=8,"
                           "layer.1.intermediate.dense=8"], "above the final budget of 12"),
])
def test_bad_planted_specs_stop_before_anything_is_written(tmp_path, flags, fragment):
    with pytest.raises(UsageError, match=fragment):
        planted_run(tmp_path, *flags)
    assert not (tmp_path / "planted").exists()


def test_oracle_on_another_task_is_one_line_exit_2_and_writes_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "adalora_ablation", "train", "--task", "synthetic", "--signal",
                             "oracle", "--output-root", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("adalora-ablation: error: --signal oracle needs --task planted (it reads that "
                                     "task's answer); choose another signal for --task synthetic")
    assert not (tmp_path / "out").exists()


def test_report_has_recovery_columns_with_mean_and_std_over_seeds(tmp_path):
    from adalora_ablation.analysis.report import build_report, to_csv, to_markdown
    from adalora_ablation.run.folder import strict_json as to_json
    from adalora_ablation.run.folder import append_jsonl, write_summary

    spec = {"layer.0.a": 2}
    recalls = {"oracle": (1.0, 1.0), "uniform": (0.5, 0.0)}
    subspaces = {"oracle": (0.9, 0.7), "uniform": (0.25, 0.0)}  # the learned directions: not the rank counts
    data = {"oracle": (0.95, 0.85), "uniform": (0.5, 0.3)}  # the learned updates' effect on the inputs
    for signal, values in recalls.items():
        for seed, recall in enumerate(values, start=1):
            run_dir = tmp_path / "planted" / signal / str(seed)
            run_dir.mkdir(parents=True)
            ranks = {"layer.0.a": int(2 * recall), "layer.0.b": 4 - int(2 * recall)}
            subspace = subspaces[signal][seed - 1]
            write_summary(run_dir, {"eval_agreement": 0.5, "total_rank": 4, "target_budget": 4,
                                    "budget_check_passed": True, "final_ranks": ranks,
                                    "planted_recall": planted_recall(ranks, spec), "planted_subspace": subspace,
                                    "planted_subspace_by_module": {"layer.0.a": subspace},
                                    "planted_data_recovery": data[signal][seed - 1],
                                    "planted_data_recovery_by_module": {"layer.0.a": data[signal][seed - 1]},
                                    "planted_share": planted_share(ranks, spec), "planted": {"spec": spec},
                                    "total_step": 1, "config": {"adalora": {"tinit": 0, "tfinal": 0}}})
            append_jsonl(run_dir / "rank_pattern.jsonl", {"step": 1, "budget": 4, "total_rank": 4, "ranks": ranks,
                                                          "kept": {m: [1] * r for m, r in ranks.items()}})
    report = build_report(tmp_path, "planted")
    markdown = to_markdown(report)
    assert ("| planted recall mean ± std | data recovery mean ± std | subspace recovery mean ± std | planted share "
            "mean ± std |") in markdown
    # oracle: recall (1, 1), data (0.95, 0.85), subspace (0.9, 0.7), share (0.5, 0.5); uniform: (0.5, 0),
    # (0.5, 0.3), (0.25, 0), (0.25, 0)
    assert "| oracle | 2 |" in markdown
    assert "1.0000 ± 0.0000 | 0.9000 ± 0.0707 | 0.8000 ± 0.1414 | 0.5000 ± 0.0000 |" in markdown
    assert "0.2500 ± 0.3536 | 0.4000 ± 0.1414 | 0.1250 ± 0.1768 | 0.1250 ± 0.1768 |" in markdown
    assert "subspace recovery = the share of each planted update" in markdown
    assert "data recovery = 1 - ||(ΔW_l - ΔW_p)·Xᵀ||² / ||ΔW_p·Xᵀ||²" in markdown
    rows = {r["signal"]: r for r in csv.DictReader(io.StringIO(to_csv(report)))}
    assert float(rows["uniform"]["planted_recall_mean"]) == 0.25 and float(rows["oracle"]["planted_share_std"]) == 0
    assert float(rows["oracle"]["planted_subspace_mean"]) == pytest.approx(0.8)
    assert float(rows["uniform"]["planted_subspace_std"]) == pytest.approx(0.1768, abs=1e-4)
    assert float(rows["uniform"]["planted_data_recovery_mean"]) == pytest.approx(0.4)
    signals = {r["signal"]: r for r in json.loads(to_json(report))["signals"]}
    assert signals["oracle"]["planted_subspace"]["mean"] == pytest.approx(0.8)
    assert signals["oracle"]["planted_subspace"]["n"] == 2

    # the final-rank heatmap writes each planted cell's data recovery and says what it is
    from adalora_ablation.analysis.plots import RECOVERY_NOTES, plot_comparison, plot_final_rank_heatmap
    from adalora_ablation.run.folder import Run

    append_jsonl(tmp_path / "planted" / "oracle" / "1" / "signal_scores.jsonl", {"step": 1, "modules": {}})
    oracle = Run.from_dir(tmp_path / "planted" / "oracle" / "1")
    ax = plot_final_rank_heatmap(oracle).axes[0]
    assert "r=2 · 0.95" in [t.get_text() for t in ax.texts]
    assert "data recovery 0.95" in ax.get_title() and RECOVERY_NOTES["planted_data_recovery"] in ax.get_title()
    comparison = plot_comparison({"oracle": oracle, "uniform": Run.from_dir(tmp_path / "planted" / "uniform" / "1")})
    cells = {t.get_text() for axis in comparison.axes for t in axis.texts}
    assert {"r=2 · 0.95", "r=2 · 0.50"} <= cells
    assert RECOVERY_NOTES["planted_data_recovery"] in comparison.get_suptitle()
    # a run made before data recovery was recorded: its subspace recovery, named as such
    summary_path = tmp_path / "planted" / "uniform" / "2" / "final_summary.json"
    old = json.loads(summary_path.read_text())
    del old["planted_data_recovery"], old["planted_data_recovery_by_module"]
    write_summary(summary_path.parent, old)
    append_jsonl(summary_path.parent / "signal_scores.jsonl", {"step": 1, "modules": {}})
    ax = plot_final_rank_heatmap(Run.from_dir(summary_path.parent)).axes[0]
    assert "r=2 · 0.00" in [t.get_text() for t in ax.texts] and "subspace 0.00" in ax.get_title()


def test_every_spec_of_a_drawn_suite_of_8_builds(tiny_model, monkeypatch):
    """Each drawn spec is valid, its updates are built in the principal subspace of its modules' inputs and its rows
    are labelled. At a fixed strength: the choice of a strength ("auto", a bisection of the ladder that cannot fail)
    is tested on the specs of test_every_valid_spec_builds_and_its_strength_is_recorded, and costs about 5 more passes
    over the calibration rows per spec."""
    from adalora_ablation.data.planted_spec import draw_planted_spec

    monkeypatch.setattr(planted, "CALIBRATION_ROWS", FEW_CALIBRATION_ROWS)
    model, tokenizer, names = tiny_model
    for index in range(8):
        spec = draw_planted_spec(names, 8, 1, 0, index)
        check_planted_spec(spec, names, init_r=8, target_r=1)
        setup = tiny_setup(spec, strength=1.0, train_rows=32, eval_rows=16)
        teacher, pairs, record, updates = planted.prepare_teacher(copy.deepcopy(model), tokenizer, TASK, setup, None,
                                                                  24, log=lambda _: None)
        rows = planted.label_rows(teacher, tokenizer, TASK, setup, pairs, 24)
        assert len(rows["train"]) == 32 and set(updates) == set(spec), index
        assert record["strength_used"] == 1.0 and all(spec[n] <= record["principal_dims"][n] for n in spec), index
        assert {n: torch.linalg.matrix_rank(u).item() for n, u in updates.items()} == spec, index
