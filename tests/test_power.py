"""The seed planner against statsmodels' power functions and a simulation; the plan in the report; --seeds n=N."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower
from test_report import ACCURACIES, craft, markdown_row

from adalora_ablation import signals as registry
from adalora_ablation.analysis.power import MAX_PLANNED_SEEDS, planned_seeds, seeds_flag, seeds_needed
from adalora_ablation.analysis.stats import paired_t_power
from adalora_ablation.cli import main
from adalora_ablation.grid.ablate import build_parser, seed_list

STATSMODELS = TTestPower()
# (difference, sd of the per-seed differences, level): one comparison at 0.05, Holm's strictest level for 3, 8, 2,
# and a tiny difference that needs thousands of seeds
CASES = [(0.005, 0.01, 0.05), (0.01, 0.012, 0.05 / 3), (0.03, 0.02, 0.05 / 8), (0.005, 0.02, 0.05 / 2),
         (0.001, 0.02, 0.05)]


@pytest.mark.parametrize("difference, sd, alpha", CASES)
def test_seeds_needed_is_the_smallest_n_with_power_0_8_by_statsmodels(difference, sd, alpha):
    n = seeds_needed(difference, sd, alpha)
    effect = difference / sd
    assert STATSMODELS.power(effect, n, alpha, alternative="two-sided") >= 0.8
    assert STATSMODELS.power(effect, n - 1, alpha, alternative="two-sided") < 0.8
    assert n == math.ceil(STATSMODELS.solve_power(effect, nobs=None, alpha=alpha, power=0.8,
                                                  alternative="two-sided"))
    assert seeds_needed(-difference, sd, alpha) == n  # two-sided: the sign does not matter


@pytest.mark.parametrize("effect, n, alpha", [(0.5, 10, 0.05), (1.2, 4, 0.01), (0.3, 60, 0.05 / 6), (2.0, 3, 0.05)])
def test_paired_t_power_equals_statsmodels(effect, n, alpha):
    assert paired_t_power(effect, n, alpha) == pytest.approx(
        STATSMODELS.power(effect, n, alpha, alternative="two-sided"), abs=1e-9)


def test_seeds_needed_where_statsmodels_returns_nan():
    # effect 4 at 0.05/8: statsmodels' power is nan at n=6 (scipy's noncentral t far in the lower tail) and its
    # solve_power answers 3.35; the powers at 4 and 5 seeds (both finite there) put the answer at 5.
    assert math.isnan(STATSMODELS.power(4.0, 6, 0.05 / 8, alternative="two-sided"))
    assert STATSMODELS.power(4.0, 4, 0.05 / 8, alternative="two-sided") < 0.8
    assert STATSMODELS.power(4.0, 5, 0.05 / 8, alternative="two-sided") >= 0.8
    assert seeds_needed(0.02, 0.005, 0.05 / 8) == 5


def test_seeds_needed_by_simulation():
    """Paired experiments drawn at the planned number of seeds, and at one fewer, reject at the exact powers the
    plan rests on: on either side of 0.8."""
    difference, sd, alpha = 0.02, 0.012, 0.05 / 3
    n = seeds_needed(difference, sd, alpha)
    rng = np.random.default_rng(0)
    reps = 100_000

    def rejection_rate(seeds):
        diffs = rng.normal(difference, sd, size=(reps, seeds))
        t = diffs.mean(axis=1) / (diffs.std(axis=1, ddof=1) / math.sqrt(seeds))
        return float(np.mean(np.abs(t) > stats.t.ppf(1 - alpha / 2, seeds - 1)))

    se = math.sqrt(0.8 * 0.2 / reps)  # ~0.0013
    at_n, one_fewer = rejection_rate(n), rejection_rate(n - 1)
    assert at_n == pytest.approx(paired_t_power(difference / sd, n, alpha), abs=4 * se)
    assert one_fewer == pytest.approx(paired_t_power(difference / sd, n - 1, alpha), abs=4 * se)
    assert at_n > 0.8 + 4 * se and one_fewer < 0.8 - 4 * se


def test_seeds_needed_gives_up_beyond_the_cap():
    assert seeds_needed(1e-6, 1.0, 0.05) is None
    assert seeds_needed(1.0, 0.01, 0.05) == 2  # power alone: two seeds are plenty
    assert MAX_PLANNED_SEEDS >= 10_000


def test_planned_seeds_keep_the_seeds_there_are():
    assert planned_seeds([1, 2, 3], 5) == [1, 2, 3, 4, 5]
    assert planned_seeds([42, 1, 2026], 5) == [1, 2, 3, 42, 2026]
    assert planned_seeds([1, 2, 3, 4], 3) == [1, 2, 3]
    assert seeds_flag([1, 2, 3]) == "--seeds n=3" and seeds_flag([1, 2, 42]) == "--seeds 1 2 42"


# -- the plan in the report (crafted run folders, no training) ----------------------------------------------------
def report(capsys, root, *args, fmt="json"):
    assert main(["report", "--task", "rte", "--output-root", str(root), "--format", fmt, *args]) == 0
    out = capsys.readouterr().out
    return json.loads(out) if fmt == "json" else out


def independent_plan(differences, detect, alpha):
    """The smallest n >= 3 (a test needs three seeds) whose statsmodels power is >= 0.8, searched one by one."""
    sd = float(np.std(differences, ddof=1))
    n = 2
    while STATSMODELS.power(detect / sd, n, alpha, alternative="two-sided") < 0.8:
        n += 1
    return sd, max(n, 3)


def test_the_report_plans_the_seeds_of_every_comparison(tmp_path, capsys):
    root = craft(tmp_path, ACCURACIES)
    base = np.array(ACCURACIES["baseline_adalora"])
    others = [s for s in ACCURACIES if s != "baseline_adalora"]
    level = 0.05 / 3  # three comparisons against the baseline: Holm's strictest step

    result = report(capsys, root, "--detect", "0.01", "0.02")
    plan = result["seed_plan"]
    assert (plan["comparisons"], plan["level"], plan["power"]) == (3, pytest.approx(level), 0.8)
    entry = plan["by_metric"]["eval_accuracy"]
    assert entry["detect"] == [0.01, 0.02] and [c["signal"] for c in entry["comparisons"]] == others
    expected = {}
    for c in entry["comparisons"]:
        diffs = np.array(ACCURACIES[c["signal"]]) - base
        sd = float(np.std(diffs, ddof=1))
        expected[c["signal"]] = [independent_plan(diffs, d, level)[1] for d in (0.01, 0.02)]
        assert c["sd_of_differences"] == pytest.approx(sd) and c["shared_seeds"] == 3 and c["note"] is None
        assert [p["seeds_needed"] for p in c["plans"]] == expected[c["signal"]]
    most = max(n for ns in expected.values() for n in ns)
    assert plan["seeds_needed"] == most and plan["seeds"] == list(range(1, most + 1))
    assert plan["command"] == (f"adalora-ablation ablate --task rte --signals {' '.join(ACCURACIES)} "
                               f"--seeds n={most}")

    markdown = report(capsys, root, "--detect", "0.01", "0.02", fmt="markdown")
    assert "### Seeds needed (paired t-test at power 0.8, Holm level α/m)" in markdown
    for signal in others:
        sd = float(np.std(np.array(ACCURACIES[signal]) - base, ddof=1))
        for d, n in zip(("0.01", "0.02"), expected[signal]):
            assert (f"| {signal} vs baseline_adalora | 3 | {sd:.4f} | {d} | {n}" in markdown), (signal, d)
    assert "0.05/3 = 0.01667" in markdown and "the strictest Holm level α/m over the m = 3" in markdown
    assert f"`{plan['command']}`" in markdown
    rows = {r["signal"]: r for r in csv.DictReader(io.StringIO(report(capsys, root, "--detect", "0.01", "0.02",
                                                                      fmt="csv")))}
    assert rows["combo"]["eval_accuracy_seeds_needed"] == " ".join(map(str, expected["combo"]))
    assert rows["combo"]["eval_accuracy_detect"] == "0.01 0.02"
    assert float(rows["combo"]["eval_accuracy_seeds_plan_level"]) == pytest.approx(level)
    assert rows["baseline_adalora"]["eval_accuracy_seeds_needed"] == ""

    # The planned command is one ablate parses, to the planned seeds.
    args, _ = build_parser(registry).parse_known_args(plan["command"].split()[2:])
    assert seed_list(args.seeds) == plan["seeds"] and args.signals == list(ACCURACIES)


def test_the_default_difference_is_the_smallest_of_0_005_0_01_and_the_largest_observed(tmp_path, capsys):
    base = (0.70, 0.72, 0.71)
    small = {"baseline_adalora": base, "combo": (0.703, 0.721, 0.712)}  # largest |Δ| 0.002: below 0.005
    entry = report(capsys, craft(tmp_path / "small", small))["seed_plan"]["by_metric"]["eval_accuracy"]
    assert entry["detect"] == [pytest.approx(np.mean(np.array(small["combo"]) - base))] and not entry["detect_given"]
    entry = report(capsys, craft(tmp_path / "large", ACCURACIES))["seed_plan"]["by_metric"]["eval_accuracy"]
    assert entry["detect"] == [0.005]
    markdown = report(capsys, tmp_path / "large", fmt="markdown")
    assert "Δ: accuracy: 0.005 (default: the smallest of 0.005, 0.01 and the largest observed |Δ accuracy|)" in markdown


def test_without_a_spread_the_plan_says_why(tmp_path, capsys):
    base = (0.70, 0.72, 0.71)
    accuracies = {"baseline_adalora": base, "importance_only": tuple(b + 0.02 for b in base),  # sd 0
                  "plasticity_only": (0.69, None, None),  # one shared seed
                  "combo": (0.80, 0.79, None)}  # two shared seeds: no test yet, but a spread to plan from
    root = craft(tmp_path, accuracies)
    result = report(capsys, root)
    plan = {c["signal"]: c for c in result["seed_plan"]["by_metric"]["eval_accuracy"]["comparisons"]}
    assert plan["importance_only"]["note"].startswith("no plan possible: the same difference on every shared seed")
    assert plan["plasticity_only"]["note"] == ("no plan possible: 1 shared seed(s) with baseline_adalora; the sd of "
                                               "the per-seed differences needs >= 2")
    assert plan["importance_only"]["plans"] == plan["plasticity_only"]["plans"] == []
    diffs = np.array([0.80, 0.79]) - np.array(base[:2])
    assert plan["combo"]["note"] is None
    assert plan["combo"]["plans"][0]["seeds_needed"] == independent_plan(diffs, 0.005, 0.05 / 3)[1]
    assert result["seed_plan"]["seeds"][:3] == [1, 2, 3]  # the seeds there are come first
    markdown = report(capsys, root, fmt="markdown")
    line = next(row for row in markdown.splitlines() if row.startswith("| plasticity_only vs baseline_adalora |"))
    assert "no plan possible: 1 shared seed(s)" in line and "0.05/3" in line
    assert markdown_row(markdown, "combo")  # the main table is unchanged by the plan

    only_baseline = craft(tmp_path / "alone", {"baseline_adalora": base})
    result = report(capsys, only_baseline)
    assert result["seed_plan"]["command"] is None
    assert "Only baseline_adalora: no comparison to plan." in report(capsys, only_baseline, fmt="markdown")


@pytest.mark.parametrize("value", ["0", "-0.01", "nan", "big"])
def test_a_bad_detect_is_one_line_exit_2(tmp_path, capsys, value):
    root = craft(tmp_path, {"baseline_adalora": (0.7, 0.71, 0.72), "combo": (0.72, 0.74, 0.73)})
    assert main(["report", "--task", "rte", "--output-root", str(root), "--detect", value]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a positive difference in the main metric" in err and "\n" not in err


# -- ablate --seeds n=N --------------------------------------------------------------------------------------------
def parsed_seeds(*argv):
    args, _ = build_parser(registry).parse_known_args(list(argv))
    return seed_list(args.seeds)


def test_ablate_seeds_take_a_count_or_the_seeds():
    assert parsed_seeds("--seeds", "n=4") == [1, 2, 3, 4]
    assert parsed_seeds("--seeds", "5") == [5]  # a number is still a seed
    assert parsed_seeds("--seeds", "42", "1", "2026") == [42, 1, 2026]
    assert parsed_seeds() == [42]


@pytest.mark.parametrize("argv, expected", [
    (["--seeds", "n=3", "4"], "--seeds n=3 stands alone"),
    (["--seeds", "n=0"], "n= takes a number of seeds >= 1"),
    (["--seeds", "three"], "'three' is not a seed number"),
])
def test_ablate_bad_seeds_are_one_line_exit_2(tmp_path, capsys, argv, expected):
    assert main(["ablate", "--task", "synthetic", "--output-root", str(tmp_path), "--dry-run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # nothing written
