"""The planted benchmark: drawn specs (--planted-draw), the suite as a sweep (ablate --planted-suite), the
learnability control (oracle_fixed) and the suite report (analysis/suite.py)."""

import json
import math
import subprocess
import sys

import pytest
from safetensors.torch import load_file
from scipy import stats
from transformers import AutoModelForSequenceClassification

from adalora_ablation.adalora.model import detect_target_modules, load_model_and_tokenizer, tiny_deberta_config
from adalora_ablation.data import planted_spec
from adalora_ablation.data.planted_spec import check_planted_spec, draw_planted_spec, spec_text
from adalora_ablation.errors import UsageError
from adalora_ablation.grid.warmup import warmup_key
from adalora_ablation.module_names import layer_index, module_type, short_module_name
from adalora_ablation.run.folder import accuracies, write_summary
from test_decoder_models import config as decoder_config
from test_planted import planted_run

MAIN = accuracies("planted")[0].field  # the planted task's main metric, whatever the task table names it


def short_names(model) -> list[str]:
    return [short_module_name(n) for n in detect_target_modules(model)]


@pytest.fixture(scope="module")
def tiny_names():
    return short_names(AutoModelForSequenceClassification.from_config(tiny_deberta_config()))


# -- drawing -------------------------------------------------------------------------------------------------------
def test_a_draw_depends_only_on_its_arguments(tiny_names):
    suite = [draw_planted_spec(tiny_names, 8, 1, seed=0, index=k) for k in range(12)]
    # the same draw made alone, again, or after other draws: the same spec
    assert draw_planted_spec(tiny_names, 8, 1, seed=0, index=7) == suite[7]
    assert [draw_planted_spec(tiny_names, 8, 1, 0, k) for k in reversed(range(12))][::-1] == suite
    assert len({spec_text(s) for s in suite}) >= 11  # different indices, different specs
    other_seed = [draw_planted_spec(tiny_names, 8, 1, seed=1, index=k) for k in range(12)]
    assert sum(a != b for a, b in zip(suite, other_seed)) >= 11
    assert draw_planted_spec(tiny_names[::-1], 8, 1, 0, 7) == dict(reversed(suite[7].items()))  # the set decides
    # the budget is part of what a draw is drawn for
    assert any(draw_planted_spec(tiny_names, 8, 2, 0, k) != suite[k] for k in range(12))


def test_a_suite_spreads_over_layers_and_matrix_types(tiny_names):
    suite = [draw_planted_spec(tiny_names, 8, 1, 0, k) for k in range(20)]
    assert {layer_index(n) for s in suite for n in s} == {0, 1}
    assert {module_type(n) for s in suite for n in s} == {"Q", "K", "V", "O", "FFN-in", "FFN-out"}
    for spec in suite:
        # each module from the least used layer and type: on 2 layers x 6 types, both layers and distinct types
        if len(spec) >= 2:
            assert {layer_index(n) for n in spec} == {0, 1}, spec
        assert len({module_type(n) for n in spec}) == len(spec), spec
    totals = [sum(s.values()) for s in suite]
    assert 12 in totals and any(t < 12 for t in totals)  # some fill the budget of 12 triplets, some do not
    ranks = [r for s in suite for r in s.values()]
    assert min(ranks) == 1 and max(ranks) >= 6


def every_draw_valid(names, init_r, target_r, draws=30):
    budget = target_r * len(names)
    specs = [draw_planted_spec(names, init_r, target_r, 3, k) for k in range(draws)]
    for spec in specs:
        check_planted_spec(spec, names, init_r, target_r)  # raises on an invalid one
        assert spec and all(1 <= r <= init_r for r in spec.values()) and sum(spec.values()) <= budget
        assert list(spec) == [n for n in names if n in spec]  # the model's module order
    return specs


def test_every_draw_is_valid_for_tiny_deberta_minilm_and_a_decoder(tiny_names, minilm_path):
    for init_r, target_r in ((8, 1), (12, 4), (8, 8), (3, 2)):
        specs = every_draw_valid(tiny_names, init_r, target_r)
        budget = target_r * len(tiny_names)
        assert any(sum(s.values()) == budget for s in specs), (init_r, target_r)
        if budget > len(tiny_names) or init_r > 1:
            assert any(sum(s.values()) < budget for s in specs), (init_r, target_r)

    minilm, _ = load_model_and_tokenizer(minilm_path, ("a", "b"))
    names = short_names(minilm)
    assert len(names) == 36
    specs = every_draw_valid(names, 12, 4)
    assert any(sum(s.values()) == 144 for s in specs)  # filling 144 triplets takes >= 12 modules at rank 12
    assert len({layer_index(n) for s in specs for n in s}) == 6

    llama = short_names(AutoModelForSequenceClassification.from_config(decoder_config("llama", 100)))
    specs = every_draw_valid(llama, 8, 2)
    assert {module_type(n) for s in specs for n in s} >= {"Q", "K", "V", "O", "gate_proj", "FFN-in", "FFN-out"}


def test_edge_budgets_init_r_1_and_a_budget_of_1(tiny_names):
    for spec in every_draw_valid(tiny_names, 1, 1):  # every rank is 1; filling takes all 12 modules
        assert set(spec.values()) == {1}
    assert any(len(s) == 12 for s in every_draw_valid(tiny_names, 1, 1))
    one = ["layer.0.attention.self.query_proj"]
    assert every_draw_valid(one, 4, 1, draws=5) == [{one[0]: 1}] * 5  # a budget of 1: the one triplet


# -- train and ablate flags, identity, warm-up -----------------------------------------------------------------------
def cli(*args):
    return subprocess.run([sys.executable, "-m", "adalora_ablation", *args], capture_output=True, text=True,
                          timeout=300)


def test_misplaced_suite_flags_are_one_line_errors(tmp_path):
    from adalora_ablation.args import parse_train_args

    result = cli("ablate", "--task", "rte", "--planted-suite", "3", "--dry-run", "--output-root", str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("adalora-ablation: error: --planted-suite draws planted specs: it needs --task "
                                     "planted alone (got --task rte)")
    assert not (tmp_path / "o").exists()
    from adalora_ablation.grid.ablate import planted_suite_sweep

    assert planted_suite_sweep(3, ["planted"], [], []) == ("planted_draw", ["0", "1", "2"])
    with pytest.raises(UsageError, match="^--planted-suite draws every run's spec; drop --planted-modules$"):
        planted_suite_sweep(3, ["planted"], [], ["--planted-modules", "layer.0.output.dense=2"])
    with pytest.raises(UsageError, match="drop --sweep planted_draw"):
        planted_suite_sweep(3, ["planted"], [("planted_draw", ["0", "1"])], [])
    # train's check runs while parsing, before anything is loaded or written (UsageError: one line, exit 2)
    with pytest.raises(UsageError) as error:
        parse_train_args(["--task", "planted", "--planted-draw", "1", "--planted-modules", "layer.0.output.dense=2"])
    assert str(error.value) == "--planted-draw and --planted-modules both choose the planted spec; give one of them"
    with pytest.raises(UsageError, match="^--planted-draw is for --task planted"):
        parse_train_args(["--task", "rte", "--planted-draw", "1"])


def test_a_draw_is_part_of_the_runs_identity(monkeypatch):
    from adalora_ablation.args import parse_train_args, run_config
    from adalora_ablation.run.identity import differing, identity

    def settings(*flags):
        return identity(run_config(*parse_train_args(["--task", "planted", *flags])))

    draws = [settings("--planted-draw", str(k)) for k in range(4)]
    assert len({d["fingerprint"] for d in draws}) == 4
    assert differing(draws[0]["settings"], draws[1]["settings"]) == ["planted_draw"]
    assert draws[0]["settings"]["planted_draw_rule"] == planted_spec.draw_rule()
    assert "planted_default" not in draws[0]["settings"]  # the default spec is not what a draw uses
    assert settings()["fingerprint"] not in {d["fingerprint"] for d in draws}
    monkeypatch.setattr(planted_spec, "DRAW_VERSION", planted_spec.DRAW_VERSION + 1)
    changed = settings("--planted-draw", "0")
    assert differing(draws[0]["settings"], changed["settings"]) == ["planted_draw_rule"]


def test_warmups_keep_draws_and_planted_budgets_apart():
    def key(*flags):
        return warmup_key(["--task", "planted", "--signal", "combo", "--seed", "1", *flags])

    assert key("--planted-draw", "0") != key("--planted-draw", "1")
    # the drawn and the default spec are chosen for the budget: another --target-r is another teacher
    assert key("--planted-draw", "0", "--target-r", "1") != key("--planted-draw", "0", "--target-r", "2")
    assert key("--target-r", "1") != key("--target-r", "2")
    given = ("--planted-modules", "layer.0.output.dense=1")
    assert key(*given, "--target-r", "1") == key(*given, "--target-r", "2")  # a given spec: the budget waits


def test_suite_dry_run_lists_one_variant_folder_per_draw_and_never_shares_oracle_fixed(tmp_path, capsys):
    from adalora_ablation.grid.ablate import ablate_main

    assert ablate_main(["--task", "planted", "--planted-suite", "3", "--signals", "baseline_adalora", "combo",
                        "oracle_fixed", "--seeds", "1", "--output-root", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for signal in ("baseline_adalora", "combo", "oracle_fixed"):
        for k in range(3):
            assert f"| planted | {signal} | planted_draw={k} | 1 | would run |" in out
    assert out.count("would run") == 9 and "planted_draw=3" not in out
    warmups = [line for line in out.splitlines() if line.startswith("[grid warm-up] shared warm-up planted-")]
    assert len(warmups) == 3  # one per draw: a draw is another teacher
    assert all("for 2 runs (baseline_adalora, combo)" in line for line in warmups)  # oracle_fixed trains alone
    assert not (tmp_path / "planted").exists() and not (tmp_path / "grid").exists()


# -- oracle_fixed --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_oracle_fixed_holds_the_planted_pattern_from_step_0(tmp_path):
    summary = planted_run(tmp_path, "--signal", "oracle_fixed", "--seed", "1", "--planted-draw", "2", "--tinit", "6",
                          "--save-strategy", "steps", "--save-steps", "3", "--save-total-limit", "100")
    spec = summary["planted"]["spec"]
    assert spec == draw_planted_spec(list(summary["final_ranks"]), 8, 1, 0, 2)
    pattern = {name: spec.get(name, 0) for name in summary["final_ranks"]}
    assert summary["final_ranks"] == pattern and summary["total_rank"] == sum(spec.values())
    assert summary["budget_check_passed"] is True and summary["budget_check"].startswith("fixed pattern")
    assert summary["planted_recall"] == 1.0
    run_dir = tmp_path / "planted" / "oracle_fixed" / "1"
    records = [json.loads(line) for line in (run_dir / "rank_pattern.jsonl").open()]
    assert len(records) == summary["allocations"] > 3
    for record in records:  # the schedule's budget falls; the pattern does not move
        assert record["ranks"] == pattern and record["budget_ok"] and record["check"] == "fixed pattern"
        assert all(record["kept"][n] == [1] * r + [0] * (8 - r) for n, r in pattern.items())
    assert records[0]["budget"] > records[-1]["budget"] == summary["target_budget"]
    # Every checkpoint, from inside the warm-up (step 3 < tinit 6) to the end: E is zero outside the pattern.
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [int(p.name.split("-")[1]) for p in checkpoints] == list(range(3, 25, 3))
    for checkpoint in checkpoints:
        weights = load_file(checkpoint / "adapter_model.safetensors")
        es = {short_module_name(k): v.flatten() for k, v in weights.items() if "lora_E" in k}
        assert set(es) == set(pattern)
        for name, e in es.items():
            assert not e[pattern[name]:].any(), (checkpoint.name, name)
            assert e[:pattern[name]].all(), (checkpoint.name, name)  # the planted triplets do train


# -- the suite report ------------------------------------------------------------------------------------------------
# Crafted values: main metric per (signal, draw, seed). uniform has no run of draw 2; planted_subspace is recorded
# by oracle and uniform only.
CRAFTED = {
    "oracle": {0: {1: 0.60, 2: 0.64}, 1: {1: 0.50, 2: 0.52}, 2: {1: 0.70, 2: 0.74}},
    "oracle_fixed": {0: {1: 0.66, 2: 0.66}, 1: {1: 0.55, 2: 0.51}, 2: {1: 0.75, 2: 0.77}},
    "baseline_adalora": {0: {1: 0.50, 2: 0.58}, 1: {1: 0.49, 2: 0.47}, 2: {1: 0.60, 2: 0.62}},
    "uniform": {0: {1: 0.40, 2: 0.44}, 1: {1: 0.45, 2: 0.45}},
}
RECALL = {"oracle": 1.0, "oracle_fixed": 1.0, "baseline_adalora": 0.5, "uniform": 0.25}
SUBSPACE = {"oracle": 0.9, "uniform": 0.3}
SPECS = {0: {"layer.0.a": 2}, 1: {"layer.1.b": 1, "layer.0.c": 3}, 2: {"layer.1.a": 4}}


@pytest.fixture
def crafted_suite(tmp_path):
    for signal, by_draw in CRAFTED.items():
        for draw, by_seed in by_draw.items():
            for seed, value in by_seed.items():
                run_dir = tmp_path / "planted" / signal / f"planted_draw={draw}" / str(seed)
                run_dir.mkdir(parents=True)
                summary = {MAIN: value, "total_rank": 4, "target_budget": 4, "budget_check_passed": True,
                           "final_ranks": {"layer.0.a": 4}, "planted_recall": RECALL[signal],
                           "planted": {"spec": SPECS[draw]}}
                if signal in SUBSPACE:
                    summary["planted_subspace"] = SUBSPACE[signal] + 0.01 * draw
                write_summary(run_dir, summary)
    return tmp_path


def t_interval(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def test_suite_regret_against_a_hand_computation(crafted_suite):
    from adalora_ablation.analysis.suite import build_suites

    (suite,) = build_suites(crafted_suite)
    assert suite["specs"] == [0, 1, 2] and suite["main_field"] == MAIN
    rows = {row["signal"]: row for row in suite["signals"]}
    # baseline: per draw, oracle - baseline averaged over seeds 1 and 2
    per_draw = [((0.60 - 0.50) + (0.64 - 0.58)) / 2, ((0.50 - 0.49) + (0.52 - 0.47)) / 2,
                ((0.70 - 0.60) + (0.74 - 0.62)) / 2]  # 0.08, 0.03, 0.11
    regret = rows["baseline_adalora"]["regret"][MAIN]
    mean, low, high = t_interval(per_draw)
    assert regret["specs"] == [0, 1, 2] and regret["n"] == 3
    assert regret["mean"] == pytest.approx(mean) == pytest.approx(0.22 / 3)
    assert (regret["ci95_low"], regret["ci95_high"]) == (pytest.approx(low), pytest.approx(high))
    assert rows["baseline_adalora"]["regret"]["planted_recall"]["mean"] == pytest.approx(0.5)
    assert rows["baseline_adalora"]["regret"]["planted_subspace"] is None  # it records no subspace
    assert rows["baseline_adalora"][MAIN]["mean"] == pytest.approx((0.54 + 0.48 + 0.61) / 3)
    # uniform has no run of draw 2: its regret is over draws 0 and 1 only, and draw 2 is listed as missing
    uniform = rows["uniform"]
    assert uniform["missing_specs"] == [2] and uniform["regret"][MAIN]["specs"] == [0, 1]
    mean, low, high = t_interval([(0.20 + 0.20) / 2, (0.05 + 0.07) / 2])
    assert uniform["regret"][MAIN]["mean"] == pytest.approx(mean)
    assert uniform["regret"][MAIN]["ci95_low"] == pytest.approx(low)
    assert uniform["regret"]["planted_subspace"]["mean"] == pytest.approx(((0.9 - 0.3) + (0.91 - 0.31)) / 2)
    assert {(p["signal"], p["draw"]) for p in suite["missing_or_partial"]} == {("uniform", 2)}
    assert rows["oracle"]["regret"] is None
    # the schedule's cost: oracle_fixed - oracle per draw (0.04, 0.02, 0.04), and a signal's regret against it
    cost = suite["schedule_cost"][MAIN]
    assert cost["mean"] == pytest.approx(0.10 / 3)
    assert cost["ci95_high"] == pytest.approx(t_interval([0.04, 0.02, 0.04])[2])
    assert rows["baseline_adalora"]["regret_vs_oracle_fixed"][MAIN]["mean"] == pytest.approx(0.22 / 3 + 0.10 / 3)
    assert [s["schedule_cost"][MAIN] for s in suite["per_spec"]] == pytest.approx([0.04, 0.02, 0.04])
    assert suite["per_spec"][1]["spec_text"] == "layer.1.b=1,layer.0.c=3"
    assert suite["per_spec"][2]["signals"]["uniform"][MAIN] is None


def test_suite_outputs_markdown_csv_and_strict_json(crafted_suite, capsys):
    import csv
    import io

    from adalora_ablation.analysis.variants import report_main
    from adalora_ablation.analysis.suite import build_suites, suite_csv, suite_markdown

    suites = build_suites(crafted_suite)
    markdown = suite_markdown(suites[0])
    assert "benchmark over 3 planted specs (planted_draw 0..2" in markdown
    assert "| baseline_adalora | 3 |" in markdown and "(3 specs)" in markdown
    assert "| oracle | 3 |" in markdown and "(reference)" in markdown
    assert "| uniform | 2 |" in markdown and "uniform / planted_draw=2 / seed 1: no run folder" in markdown
    assert "t interval over specs" in markdown and "The schedule's cost" in markdown
    # per spec: the means over seeds (baseline, uniform, oracle, oracle_fixed) and the schedule's cost there
    assert "| 1 | layer.1.b=1,layer.0.c=3 | 0.4800 (2) | 0.4500 (2) | 0.5100 (2) | 0.5300 (2) | +0.0200 |" in markdown
    assert "| 2 | layer.1.a=4 | 0.6100 (2) | — | 0.7200 (2) |" in markdown
    # absent subspace: shown as —, not as 0
    baseline_line = next(line for line in markdown.splitlines() if line.startswith("| baseline_adalora |"))
    assert baseline_line.split(" | ")[4] == "—"
    rows = list(csv.DictReader(io.StringIO(suite_csv(suites))))
    signal_rows = {r["signal"]: r for r in rows if r["kind"] == "signal"}
    assert float(signal_rows["baseline_adalora"][f"regret_{MAIN}_mean"]) == pytest.approx(0.22 / 3)
    assert signal_rows["baseline_adalora"]["regret_planted_subspace_mean"] == ""
    spec_rows = [r for r in rows if r["kind"] == "spec" and r["signal"] == "uniform"]
    assert [r[f"{MAIN}_mean"] for r in spec_rows][2] == "" and spec_rows[0]["n_seeds"] == "2"
    assert [r for r in rows if r["kind"] == "schedule_cost"][0]["n_specs"] == "3"

    def no_nan(name):
        raise ValueError(f"non-strict JSON: {name}")

    for fmt in ("markdown", "json", "csv"):
        assert report_main(["--task", "planted", "--output-root", str(crafted_suite), "--format", fmt]) == 0
        out = capsys.readouterr().out
        if fmt == "markdown":  # the suite first, then every spec's own report
            assert out.index("benchmark over 3 planted specs") < out.index("# Variant: planted_draw=0")
        elif fmt == "json":
            data = json.loads(out, parse_constant=no_nan)
            assert data["suites"][0]["specs"] == [0, 1, 2] and len(data["per_variant"]["variants"]) == 3
        else:
            assert out.startswith("kind,rest,signal,draw,spec")
    page = crafted_suite / "report.html"
    assert report_main(["--task", "planted", "--output-root", str(crafted_suite), "--format", "html", "--output",
                        str(page)]) == 0
    html = page.read_text()
    assert html.index("benchmark over 3 planted specs") < html.index("Variant: planted_draw=0")
