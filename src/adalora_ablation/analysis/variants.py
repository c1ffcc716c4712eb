"""``adalora-ablation report``: one report per variant of a sweep, the gap to the baseline per budget, and the
budget curve.

Each variant (a sweep's point, ``target_r=2``; "" for runs outside a sweep) gets its own report from report.py, so
its rows, its paired tests against ``baseline_adalora`` and their Holm correction only ever see runs of that
variant. Across variants, a sweep over the budget (``target_r`` or ``init_r``) adds a table in the form of
AdaLoRA's Table 1 budget columns (per signal and budget: accuracy and its gap to the baseline at the same budget)
and ``budget_curve.png`` in the task's ``compare/`` folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .. import signals as registry
from ..errors import OneLineArgumentParser, RunFileError, UsageError, first_line
from ..run.folder import Run, atomic_write, compare_dir, discover, strict_json
from ..run.identity import parse_variant, variant_name, variant_sort_key
from .markdown import table
from .power import detect_difference
from .report import build_report, to_csv, to_markdown
from .suite import with_suite

BUDGET_SETTINGS = ("target_r", "init_r")  # a sweep over one of these moves the budget
BUDGET_CURVE = "budget_curve.png"


def variants_of(output_root: str | Path, task: str) -> list[str]:
    """The variants with run folders for the task, in the order of their values; [""] when there are none."""
    names = {r.variant for r in discover(output_root, task)}
    return sorted(names, key=variant_sort_key) or [""]


def build_reports(output_root: str | Path, task: str, signals=None, seeds=None, detect=None) -> list[dict]:
    return [build_report(output_root, task, signals, seeds, variant, detect)
            for variant in variants_of(output_root, task)]


# -- across variants: the budget axis ------------------------------------------------------------------------------
def budget_setting(reports: list[dict]) -> str | None:
    """The budget setting the variants sweep (target_r before init_r), or None."""
    swept = {name for r in reports if r["variant"] for name in parse_variant(r["variant"])}
    return next((name for name in BUDGET_SETTINGS if name in swept), None)


def _rest_of(variant: str, setting: str) -> str:
    """The variant without the budget setting: the other swept settings, which make separate lines."""
    values = {k: v for k, v in parse_variant(variant).items() if k != setting} if variant else {}
    return variant_name(values)


def budget_points(reports: list[dict]) -> list[dict]:
    """Per signal (and the other swept settings), per budget: accuracy mean, its 95% CI, the budget in triplets,
    the trainable parameters, and the gap to the baseline at the same variant."""
    setting = budget_setting(reports)
    if setting is None:
        return []
    points = []
    for report in reports:
        if not report["variant"] or setting not in parse_variant(report["variant"]):
            continue
        key = next(iter(report["metrics"]))
        for row in report["signals"]:
            if not row["n"]:
                continue
            runs = [Run.at(report["output_root"], report["task"], row["signal"], seed, report["variant"])
                    for seed in row["seeds"]]
            params = [r.summary.get("trainable_parameters") for r in runs if r.summary]
            diff = row[key].get("vs_baseline") or {}
            points.append({
                "signal": row["signal"], "rest": _rest_of(report["variant"], setting), "setting": setting,
                "value": parse_variant(report["variant"])[setting], "variant": report["variant"],
                "budget": row["target_budget"][0] if len(row["target_budget"]) == 1 else None,
                "trainable_parameters": float(np.mean(params)) if params and None not in params else None,
                "n": row["n"], "mean": row[key]["mean"], "ci95_low": row[key]["ci95_low"],
                "ci95_high": row[key]["ci95_high"], "gap": diff.get("mean_diff"),
                "gap_seeds": len(diff.get("shared_seeds", [])), "p_value": diff.get("p_value"),
                "p_value_holm": diff.get("p_value_holm"), "baseline": row["signal"] == report["baseline"],
            })
    return points


def gap_markdown(points: list[dict], baseline: str) -> list[str]:
    """AdaLoRA's Table 1 budget columns: per signal, per budget, accuracy and its gap to the baseline there."""
    if not points:
        return []
    setting = points[0]["setting"]
    values = sorted({p["value"] for p in points}, key=lambda v: variant_sort_key(f"{setting}={v}"))
    lines_of = list(dict.fromkeys((p["signal"], p["rest"]) for p in points))
    header = ["signal"] + [f"{setting}={v}" + (f" (budget {b})" if (b := _budget(points, v)) else "") for v in values]
    rows = []
    for signal, rest in lines_of:
        cells = [f"{signal}" + (f" ({rest})" if rest else "")]
        for value in values:
            p = next((p for p in points if (p["signal"], p["rest"], p["value"]) == (signal, rest, value)), None)
            cells.append(_gap_cell(p))
        rows.append(cells)
    return [f"### Gap to {baseline} per budget ({setting} sweep)", "",
            table(header, rows), "",
            f"Each cell: mean accuracy over seeds; in brackets the mean difference to {baseline} at the same "
            f"variant over the seeds both finished, with its paired t-test p (Holm-adjusted within the variant) "
            f"where there are enough seeds.", ""]


def _budget(points: list[dict], value: str):
    budgets = {p["budget"] for p in points if p["value"] == value and p["budget"] is not None}
    return budgets.pop() if len(budgets) == 1 else None


def _gap_cell(p: dict | None) -> str:
    if p is None or p["mean"] is None:
        return "—"
    if p["baseline"]:
        return f"{p['mean']:.4f} (baseline)"
    if p["gap"] is None:
        return f"{p['mean']:.4f} (no shared seeds)"
    test = "" if p["p_value"] is None else f", p={p['p_value']:.3g}" + (
        f" (Holm {p['p_value_holm']:.3g})" if p.get("p_value_holm") is not None else "")
    return f"{p['mean']:.4f} ({p['gap']:+.4f} over {p['gap_seeds']} seed(s){test})"


def plot_budget_curve(points: list[dict], metric_label: str) -> Figure:
    """Accuracy against the budget (triplets kept; trainable parameters for an init_r sweep, whose budget in
    triplets does not move), one line per signal with its 95% interval, the controls dashed."""
    by_params = points[0]["setting"] == "init_r" or any(p["budget"] is None for p in points)

    def x_of(p):
        return p["trainable_parameters"] if by_params else p["budget"]

    controls = set(registry.signal_names("control"))
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for signal, rest in dict.fromkeys((p["signal"], p["rest"]) for p in points):
        line = sorted((p for p in points if (p["signal"], p["rest"]) == (signal, rest) and x_of(p) is not None),
                      key=x_of)
        if not line:
            continue
        x = [x_of(p) for p in line]
        y = [p["mean"] for p in line]
        low = [p["mean"] - p["ci95_low"] if p["ci95_low"] is not None else 0.0 for p in line]
        high = [p["ci95_high"] - p["mean"] if p["ci95_high"] is not None else 0.0 for p in line]
        ax.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, linestyle="--" if signal in controls else "-",
                    label=signal + (f" ({rest})" if rest else ""))
    ax.set_xlabel("trainable parameters" if by_params else "budget (triplets kept = target_r x modules)")
    ax.set_ylabel(f"{metric_label} (mean, 95% CI over seeds)")
    ax.set_title(f"{metric_label} against the budget ({points[0]['setting']} sweep)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_budget_curve(reports: list[dict]) -> Path | None:
    """budget_curve.png in the task's compare/ folder, for a budget sweep; None without one."""
    points = budget_points(reports)
    if not points:
        return None
    report = reports[0]
    folder = compare_dir(report["output_root"], report["task"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / BUDGET_CURVE
    plot_budget_curve(points, next(iter(report["metrics"].values()))).savefig(path, dpi=120)
    return path


# -- output ----------------------------------------------------------------------------------------------------------
def reports_markdown(reports: list[dict]) -> str:
    """Outside a sweep the one report as before; with variants one report per variant, then the gap table."""
    if len(reports) == 1 and not reports[0]["variant"]:
        return to_markdown(reports[0])
    parts = []
    for report in reports:
        parts += [f"# Variant: {report['variant'] or '(no sweep)'}", "", to_markdown(report), ""]
    parts += gap_markdown(budget_points(reports), reports[0]["baseline"])
    return "\n".join(parts)


def reports_csv(reports: list[dict]) -> str:
    """The per-signal table; with variants a leading variant column, one block of rows per variant."""
    if len(reports) == 1 and not reports[0]["variant"]:
        return to_csv(reports[0])
    lines = []
    for i, report in enumerate(reports):
        header, *rows = to_csv(report).splitlines()
        if i == 0:
            lines.append(f"variant,{header}")
        lines += [f"{json.dumps(report['variant'])},{row}" for row in rows]
    return "\n".join(lines) + "\n"


def reports_json(reports: list[dict]) -> str:
    """Strict JSON (an undefined statistic, or a NaN another writer left in a summary, is null)."""
    if len(reports) == 1 and not reports[0]["variant"]:
        return strict_json(reports[0])
    return strict_json({"variants": reports, "budget": budget_points(reports)})


FORMATS = {"markdown": reports_markdown, "csv": reports_csv, "json": reports_json}
HTML_DEFAULT = "<output-root>/<task>/compare/report.html"


def report_main(argv: list[str]) -> int:
    registry.load_signals(registry.included_modules(argv))  # a signal of your own: its role and --signals
    parser = OneLineArgumentParser(prog="adalora-ablation report",
                                   description="Accuracy, rank and allocation statistics over seeds, per signal.")
    registry.add_include_flag(parser)
    parser.add_argument("--task", required=True,
                        help="task folder under the output root (a GLUE task, synthetic, or custom-<name>)")
    names = registry.signal_names()
    parser.add_argument("--signals", nargs="+", choices=names, metavar="SIGNAL",
                        help=f"some of {', '.join(names)} (default: every signal folder found)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="seeds to report (default: every seed folder found)")
    parser.add_argument("--format", choices=[*FORMATS, "html"], default="markdown",
                        help="markdown (default): all tables; csv: the per-signal table; json: everything; html: "
                             f"one self-contained page (the tables and figures), written to {HTML_DEFAULT}")
    parser.add_argument("--output", metavar="PATH",
                        help="write the report to PATH instead of printing it (html: default " + HTML_DEFAULT + ")")
    parser.add_argument("--detect", nargs="+", type=detect_difference, metavar="DIFFERENCE",
                        help="the seed plan's targets: absolute differences in the main metric (0.005: half a point "
                             "of accuracy); default: the smallest of 0.005, 0.01 and the largest observed difference")
    parser.add_argument("--output-root", "--output_root", default="outputs",
                        help="runs are read from <output-root>/<task>/<signal>/[<variant>/]<seed>/ (default "
                             "outputs); each sweep variant gets its own report")
    args = parser.parse_args(argv)
    output = Path(args.output) if args.output else None
    if output is not None and not output.parent.is_dir():
        raise UsageError(f"--output {output}: no folder {output.parent}; create it or write elsewhere")
    reports = build_reports(args.output_root, args.task, args.signals, args.seeds, args.detect)  # one per variant
    if args.format == "html":
        from .html_report import reports_html  # (figures of every run: only for this format)

        points = budget_points(reports)
        curve = plot_budget_curve(points, next(iter(reports[0]["metrics"].values()))) if points else None
        markdown = with_suite("markdown", reports_markdown(reports), args.output_root, args.task, args.signals,
                              args.seeds)  # a planted suite (planted_draw variants): the benchmark over its specs first
        text = reports_html(reports, markdown, curve)
        if output is None:
            output = compare_dir(args.output_root, args.task) / "report.html"
            output.parent.mkdir(parents=True, exist_ok=True)
    else:
        text = with_suite(args.format, FORMATS[args.format](reports), args.output_root, args.task, args.signals,
                          args.seeds)
    if output is None:
        print(text)
    else:
        write_report(output, text)
        print(output)
    curve = write_budget_curve(reports)
    if curve is not None:
        print(f"[report] budget curve: {curve}", file=sys.stderr)
    return 0


def write_report(path: Path, text: str) -> None:
    """The whole file or none of it (a report read while it is written is never half a report)."""
    try:
        atomic_write(path, lambda f: f.write((text + "\n").encode("utf-8")))
    except (OSError, RunFileError) as exc:  # (atomic_write's own message speaks of a run: name the cause)
        cause = exc.__context__ if isinstance(exc, RunFileError) and exc.__context__ else exc
        reason = getattr(cause, "strerror", None) or first_line(cause)
        raise UsageError(f"cannot write {path} ({reason}); choose another --output or free space") from None
