"""The planted benchmark: many planted specs (``ablate --planted-suite N``), every signal on each, read as regret
against the oracle.

The runs sit in ``planted/<signal>/planted_draw=K/<seed>/`` (one variant folder per drawn spec; other swept settings
beside planted_draw make separate suites). A suite pools only like with like: its finished runs must hold the same
settings apart from the draw, the signal and the seed (a draw rerun with other steps would otherwise join the mean
unseen); otherwise one line names the runs and the settings (UsageError). Per signal: the mean over specs of the main
metric, planted recall, data recovery and subspace recovery (each spec's mean over its seeds first, so every spec
weighs the same); the regret
``oracle - signal``, paired by (spec, seed): per spec the mean over the seeds both finished, then the mean and a 95%
t interval over specs. The interval is over specs: the spread between specs of seed-averaged values, which is what
a claim about "planted specs like these" rests on. ``oracle_fixed - oracle`` per spec is what the schedule costs
when the allocation is right from the start; each signal's regret is read against it.

``report --task planted`` prints this before the per-spec reports when the runs sit in planted_draw folders;
``build_suites`` and the ``suite_*`` formatters can be used directly.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .. import signals as registry
from ..data.planted_spec import spec_text
from ..errors import UsageError
from ..run.folder import Run, discover, strict_json
from ..run.identity import parse_variant, variant_name
from .markdown import table
from .report import accuracy_labels, describe, settings_clash

SUITE_SETTING = "planted_draw"  # the variant setting that numbers a suite's specs
ORACLE, ORACLE_FIXED = "oracle", "oracle_fixed"
# final_summary.json; data recovery and subspace may be absent (runs made before they were recorded)
RECALL, DATA, SUBSPACE = "planted_recall", "planted_data_recovery", "planted_subspace"
SPEC_SETTINGS = ("planted_draw", "signal", "seed")  # what may differ between the runs of one suite
METHOD = ("regret = oracle - signal, paired by (spec, seed): per spec the mean over the seeds both finished, then "
          "the mean over specs and its 95% t interval over specs (mean ± t(0.975, specs-1)·sd/√specs, sd over the "
          "per-spec means); the means of a signal alike, over its per-spec means over seeds")


# -- finding the suite's runs --------------------------------------------------------------------------------------
def _split(variant: str) -> tuple[int, str] | None:
    """``planted_draw=3`` -> (3, ""); ``planted_draw=3,target_r=2`` -> (3, "target_r=2"); None outside a suite."""
    try:
        values = parse_variant(variant) if variant else {}
        index = int(values.pop(SUITE_SETTING))
    except (ValueError, KeyError):
        return None
    return index, variant_name(values)


def is_suite(output_root: str | Path, task: str) -> bool:
    """Whether the task's runs include planted_draw variants."""
    return task == "planted" and any(_split(r.variant) for r in discover(output_root, task))


def build_suites(output_root: str | Path, task: str = "planted", signals: list[str] | None = None,
                 seeds: list[int] | None = None) -> list[dict]:
    """One suite per setting swept beside planted_draw ("" when none): every (signal, spec, seed) requested, found or
    not. Defaults: every signal, spec and seed found on disk, so a spec that one signal lacks shows up as missing."""
    found = [(r, _split(r.variant)) for r in discover(output_root, task)]
    found = [(r, split) for r, split in found if split]
    suites = []
    for rest in sorted({rest for _, (_, rest) in found}):
        mine = [r for r, (_, other) in found if other == rest]
        names = signals or registry.ordered_signals({r.signal for r in mine})
        specs = sorted({_split(r.variant)[0] for r in mine})
        wanted_seeds = seeds or sorted({r.seed for r in mine})
        runs = [Run.at(output_root, task, signal, seed, variant_name({SUITE_SETTING: str(k), **_rest_values(rest)}))
                for signal in names for k in specs for seed in wanted_seeds]
        suites.append(build_suite(runs, task, Path(output_root) / task, rest, str(output_root)))
    return suites


def _rest_values(rest: str) -> dict[str, str]:
    return parse_variant(rest) if rest else {}


# -- the numbers ---------------------------------------------------------------------------------------------------
def _value(run: Run, field: str) -> float | None:
    value = run.summary.get(field)
    return None if value is None else float(value)


def collect_values(runs: list[Run], fields: list[str]) -> dict:
    """field -> signal -> spec -> seed -> value, over the finished runs that have the field."""
    values = {field: {} for field in fields}
    for run in runs:
        if run.problem is not None:
            continue
        spec = _split(run.variant)[0]
        for field in fields:
            value = _value(run, field)
            if value is not None:
                values[field].setdefault(run.signal, {}).setdefault(spec, {})[run.seed] = value
    return values


def spec_means(by_spec: dict[int, dict[int, float]]) -> dict[int, float]:
    """Per spec, the mean over its seeds."""
    return {spec: float(np.mean(list(seeds.values()))) for spec, seeds in by_spec.items() if seeds}


def paired_spec_means(a: dict[int, dict[int, float]], b: dict[int, dict[int, float]]) -> dict[int, float]:
    """Per spec that both have, the mean over the seeds both finished of (a - b)."""
    out = {}
    for spec in sorted(set(a) & set(b)):
        shared = sorted(set(a[spec]) & set(b[spec]))
        if shared:
            out[spec] = float(np.mean([a[spec][s] - b[spec][s] for s in shared]))
    return out


def over_specs(per_spec: dict[int, float]) -> dict:
    """Mean, sd and 95% t interval over specs of per-spec values, and which specs they are."""
    return {**describe([per_spec[k] for k in sorted(per_spec)]), "specs": sorted(per_spec)}


def refuse_unlike(runs: list[Run]) -> None:
    """One line (UsageError) naming two finished runs of the suite whose settings differ other than in the draw,
    the signal and the seed, and those settings; runs whose summary records no settings are taken as they are."""
    what = settings_clash(runs, ignore=SPEC_SETTINGS, place=lambda run: run.run_dir)
    if what:
        raise UsageError(f"a planted suite pools only runs that differ in the draw, signal and seed, but {what}; "
                         f"rerun the odd runs with the suite's settings, or give each setting its own "
                         f"--output-root (or sweep it beside planted_draw: each value becomes its own suite)")


def build_suite(runs: list[Run], task: str, task_dir: Path, rest: str = "", output_root: str = "") -> dict:
    """The suite's numbers from its requested runs (Run objects in planted_draw=K variant folders)."""
    refuse_unlike(runs)
    main_field, main_label = next(iter(accuracy_labels(task, task_dir).items()))
    fields = [main_field, RECALL, DATA, SUBSPACE]
    values = collect_values(runs, fields)
    signals = list(dict.fromkeys(r.signal for r in runs))
    specs = sorted({_split(r.variant)[0] for r in runs})
    means = {f: {signal: spec_means(by_spec) for signal, by_spec in values[f].items()} for f in fields}

    def paired(reference: str, signal: str, field: str) -> dict[int, float] | None:
        """Per spec, reference - signal (paired by seed); None when either has no value of the field at all."""
        have = values[field]
        if signal == reference or reference not in have or signal not in have:
            return None
        return paired_spec_means(have[reference], have[signal])

    regrets = {(ref, signal, f): paired(ref, signal, f) for ref in (ORACLE, ORACLE_FIXED) for signal in signals
               for f in fields}
    rows = []
    for signal in signals:
        finished = set(values[main_field].get(signal, {}))
        rows.append({
            "signal": signal,
            "specs": sorted(finished),
            "missing_specs": [k for k in specs if k not in finished],
            **{f: over_specs(means[f][signal]) if signal in means[f] else None for f in fields},
            "regret": None if signal == ORACLE else {
                f: None if regrets[ORACLE, signal, f] is None else over_specs(regrets[ORACLE, signal, f])
                for f in fields},
            "regret_vs_oracle_fixed": None if signal == ORACLE_FIXED else {
                f: None if regrets[ORACLE_FIXED, signal, f] is None else over_specs(regrets[ORACLE_FIXED, signal, f])
                for f in fields},
        })
    cost = {f: paired(ORACLE_FIXED, ORACLE, f) for f in fields}  # oracle_fixed - oracle
    per_spec = []
    for k in specs:
        spec = next((r.summary["planted"]["spec"] for r in runs if _split(r.variant)[0] == k and r.problem is None
                     and isinstance((r.summary.get("planted") or {}).get("spec"), dict)), None)
        cells = {}
        for signal in signals:
            cells[signal] = {
                "seeds": sorted(values[main_field].get(signal, {}).get(k, {})),
                **{f: means[f].get(signal, {}).get(k) for f in fields},
                "regret": {f: (regrets[ORACLE, signal, f] or {}).get(k) for f in fields},
                "regret_vs_oracle_fixed": {f: (regrets[ORACLE_FIXED, signal, f] or {}).get(k) for f in fields},
            }
        per_spec.append({"draw": k, "spec": spec, "spec_text": spec_text(spec) if spec else None, "signals": cells,
                         "schedule_cost": {f: (cost[f] or {}).get(k) for f in fields}})
    return {
        "task": task, "rest": rest, "output_root": output_root, "main_field": main_field, "main_label": main_label,
        "fields": fields, "specs": specs, "seeds": sorted({r.seed for r in runs}), "signals": rows,
        "oracle_runs": ORACLE in values[main_field], "oracle_fixed_runs": ORACLE_FIXED in values[main_field],
        "schedule_cost": {f: None if cost[f] is None else over_specs(cost[f]) for f in fields},
        "per_spec": per_spec, "method": METHOD,
        "missing_or_partial": [{"signal": r.signal, "draw": _split(r.variant)[0], "seed": r.seed,
                                "problem": r.problem, "path": str(r.run_dir)} for r in runs if r.problem],
    }


# -- output --------------------------------------------------------------------------------------------------------
def _interval(entry: dict | None, sign: str = "+") -> str:
    """``+0.0123 [-0.0040, +0.0286] (5 specs)``; one spec: no interval; no spec: —."""
    if not entry or not entry["n"]:
        return "—"
    mean = format(entry["mean"], f"{sign}.4f")
    if entry["ci95_low"] is None:
        return f"{mean} (1 spec: no CI)"
    low, high = (format(entry[k], f"{sign}.4f") for k in ("ci95_low", "ci95_high"))
    return f"{mean} [{low}, {high}] ({entry['n']} specs)"


def _mean(entry: dict | None, sign: str = "") -> str:
    return "—" if not entry or not entry["n"] else format(entry["mean"], f"{sign}.4f")


def suite_markdown(suite: dict) -> str:
    label = suite["main_label"]
    main = suite["main_field"]
    where = f", {suite['rest']}" if suite["rest"] else ""
    lines = [f"## {suite['task']}: benchmark over {len(suite['specs'])} planted specs (planted_draw "
             f"{_draws(suite['specs'])}{where}; {suite['output_root']})", "",
             f"Main metric: {label} ({main}). Per signal: {METHOD}.", ""]
    if not suite["oracle_runs"]:
        lines += [f"No finished {ORACLE} runs: no regret to compute.", ""]
    has_fixed = suite["oracle_fixed_runs"]
    header = ["signal", "specs", f"{label} mean [95% CI]", "planted recall", "data recovery", "planted subspace",
              f"regret {label} [95% CI]", "regret recall", "regret data recovery", "regret subspace"]
    header += [f"regret vs {ORACLE_FIXED} ({label})"] if has_fixed else []
    rows = []
    for row in suite["signals"]:
        regret = row["regret"]
        cells = [row["signal"], len(row["specs"]), _interval(row[main], sign=""), _mean(row[RECALL]),
                 _mean(row[DATA]), _mean(row[SUBSPACE])]
        if regret is None:
            cells += ["(reference)"] * 4
        else:
            cells += [_interval(regret[main]), _mean(regret[RECALL], "+"), _mean(regret[DATA], "+"),
                      _mean(regret[SUBSPACE], "+")]
        if has_fixed:
            vs_fixed = row["regret_vs_oracle_fixed"]
            cells += ["(reference)" if vs_fixed is None else _interval(vs_fixed[main])]
        rows.append(cells)
    lines += [table(header, rows), ""]
    lines += ["Regret > 0: the signal is below the oracle. Recall, data recovery and subspace regrets: the means over "
              "specs of the same paired per-spec means. Data recovery: how much of the planted updates' effect on "
              "the validation rows' module inputs the learned updates reproduce (1 - ||(ΔW_l - ΔW_p)Xᵀ||² / "
              "||ΔW_p Xᵀ||², clipped at 0); planted subspace: the share of ΔW_p in the learned updates' top-r "
              "directions, in weight space. —: no finished run has the value (runs that do not record it).", ""]
    cost = suite["schedule_cost"][main]
    if has_fixed and cost and cost["n"]:
        lines += [f"**The schedule's cost** ({ORACLE_FIXED} - {ORACLE}, {label}): {_interval(cost)}. "
                  f"{ORACLE_FIXED} holds the planted pattern from step 0 and never prunes; {ORACLE} reaches the "
                  f"same ranks through the warm-up and the falling budget that every signal goes through. Their "
                  f"difference is what the schedule costs when the allocation is right from the start: read each "
                  f"signal's regret (which does not include it) beside it; regret vs {ORACLE_FIXED} = regret + "
                  f"that cost.", ""]
    else:
        lines += [f"The schedule's cost: not measured (needs finished {ORACLE} and {ORACLE_FIXED} runs of the same "
                  f"specs and seeds; ablate --with-controls runs both).", ""]
    signals = [row["signal"] for row in suite["signals"]]
    header = ["draw", "spec"] + [f"{s} {label}" for s in signals]
    header += [f"schedule cost ({ORACLE_FIXED} - {ORACLE})"] if has_fixed else []
    rows = []
    for spec in suite["per_spec"]:
        cells = [spec["draw"], spec["spec_text"] or "— (no finished run)"]
        cells += [_seeds_cell(spec["signals"][s], main) for s in signals]
        if has_fixed:
            value = spec["schedule_cost"][main]
            cells += ["—" if value is None else f"{value:+.4f}"]
        rows.append(cells)
    lines += [f"### Per spec ({label}: mean over seeds, the number of seeds in brackets)", "", table(header, rows), ""]
    if any(spec["signals"][s][DATA] is not None for spec in suite["per_spec"] for s in signals):
        rows = [[spec["draw"]] + ["—" if spec["signals"][s][DATA] is None else f"{spec['signals'][s][DATA]:.4f}"
                                  for s in signals] for spec in suite["per_spec"]]
        lines += ["### Per spec: data recovery (mean over seeds)", "", table(["draw"] + signals, rows), ""]
    problems = suite["missing_or_partial"]
    lines += ["### Missing or unfinished runs", ""]
    lines += [f"- {p['signal']} / planted_draw={p['draw']} / seed {p['seed']}: {p['problem']} ({p['path']})"
              for p in problems] or ["None: every requested run has a valid final_summary.json."]
    return "\n".join(lines) + "\n"


def _draws(specs: list[int]) -> str:
    return f"{specs[0]}..{specs[-1]}" if specs == list(range(specs[0], specs[-1] + 1)) and len(specs) > 1 else \
        ", ".join(map(str, specs))


def _seeds_cell(cell: dict, field: str) -> str:
    return "—" if cell[field] is None else f"{cell[field]:.4f} ({len(cell['seeds'])})"


CSV_PARTS = ("mean", "ci95_low", "ci95_high")


def suite_csv(suites: list[dict]) -> str:
    """One table: a row per signal over the suite (kind=signal), one for the schedule's cost (kind=schedule_cost,
    oracle_fixed - oracle), and a row per spec and signal (kind=spec: means over that spec's seeds, regrets paired
    by seed; no interval)."""
    fields = suites[0]["fields"] if suites else []
    main = fields[0] if fields else ""
    columns = ["kind", "rest", "signal", "draw", "spec", "n_specs", "n_seeds"]
    columns += [f"{f}_{p}" for f in fields for p in CSV_PARTS]
    columns += [f"regret_{f}_{p}" for f in fields for p in CSV_PARTS]
    columns += [f"regret_vs_{ORACLE_FIXED}_{main}_{p}" for p in CSV_PARTS] if fields else []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for suite in suites:
        for row in suite["signals"]:
            out = {"kind": "signal", "rest": suite["rest"], "signal": row["signal"], "n_specs": len(row["specs"])}
            for f in fields:
                out.update(_parts(f, row[f]))
                out.update(_parts(f"regret_{f}", (row["regret"] or {}).get(f)))
            out.update(_parts(f"regret_vs_{ORACLE_FIXED}_{main}", (row["regret_vs_oracle_fixed"] or {}).get(main)))
            writer.writerow(out)
        cost = suite["schedule_cost"]
        if cost[main]:
            out = {"kind": "schedule_cost", "rest": suite["rest"], "signal": f"{ORACLE_FIXED} - {ORACLE}",
                   "n_specs": cost[main]["n"]}
            for f in fields:
                out.update(_parts(f, cost[f]))
            writer.writerow(out)
        for spec in suite["per_spec"]:
            for signal, cell in spec["signals"].items():
                out = {"kind": "spec", "rest": suite["rest"], "signal": signal, "draw": spec["draw"],
                       "spec": spec["spec_text"] or "", "n_seeds": len(cell["seeds"])}
                for f in fields:
                    out[f"{f}_mean"] = cell[f]
                    out[f"regret_{f}_mean"] = cell["regret"][f]
                out[f"regret_vs_{ORACLE_FIXED}_{main}_mean"] = cell["regret_vs_oracle_fixed"][main]
                writer.writerow(out)
    return buffer.getvalue()


def _parts(prefix: str, entry: dict | None) -> dict:
    return {f"{prefix}_{p}": None if not entry else entry.get(p) for p in CSV_PARTS}


def suite_json(suites: list[dict]) -> str:
    return strict_json({"suites": suites})


def with_suite(fmt: str, per_variant: str, output_root, task: str, signals=None, seeds=None) -> str:
    """What ``report`` prints: for a planted suite, the suite first (markdown, and so html: then every spec's own
    report; csv: the suite's table; json: {"suites", "per_variant"}); anything else unchanged."""
    if not is_suite(output_root, task):
        return per_variant
    suites = build_suites(output_root, task, signals, seeds)
    if fmt == "markdown":
        return "\n".join(suite_markdown(s) for s in suites) + "\n# Every spec's own report\n\n" + per_variant
    if fmt == "csv":
        return suite_csv(suites)
    if fmt == "json":
        return strict_json({"suites": suites, "per_variant": json.loads(per_variant)})
    return per_variant
