"""``report --format html``: the report as one self-contained page a person opens offline in a browser.

The text and every table come from the markdown report itself (variants.reports_markdown, converted here), so the
page holds exactly the markdown's tables; the figures are inlined as base64 PNG: per report (one per sweep variant)
the comparison figure at the seed most signals can be drawn at (final-rank heatmaps side by side, accuracy, eval
curves, rank per layer) and each signal's score heatmap there, drawn here with plots.py; across variants the budget
curve of a budget sweep (variants.py draws it: it builds on this module). No external file, script, font or link.
"""

from __future__ import annotations

import base64
import html
import io
import re

from matplotlib.figure import Figure

from ..errors import UsageError
from ..run.folder import Run
from .plots import plot_comparison, plot_signal_heatmap

FIGURE_DPI = 100
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 90em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #eee; }
tbody tr:nth-child(even) { background: #f7f7f7; }
code { background: #f0f0f0; padding: 0 0.2em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
"""


# -- the markdown the report writes, as HTML --------------------------------------------------------------------
def _inline(text: str) -> str:
    """Escaped text with the report's inline markup: **bold** and `code`."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def table_cells(line: str) -> list[str]:
    """The cells of one markdown table line as markdown.table writes it ('| a | b |'; a '|' in a cell is '/')."""
    return [cell.strip() for cell in line.strip().removeprefix("|").removesuffix("|").split("|")]


def _table(lines: list[str]) -> str:
    """A markdown table as <table>; cells are escaped verbatim (no inline markup), so they read as in markdown."""
    header, *rows = [table_cells(line) for line in lines if not re.fullmatch(r"\|(-+\|)+", line.strip())]
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def markdown_to_html(text: str) -> str:
    """The subset of markdown the report writes: '#' headings, tables, '- ' lists, paragraphs."""
    out: list[str] = []
    block: list[str] = []
    kind = None

    def flush():
        nonlocal block, kind
        if kind == "table":
            out.append(_table(block))
        elif kind == "list":
            out.append("<ul>\n" + "\n".join(f"<li>{_inline(line[2:])}</li>" for line in block) + "\n</ul>")
        elif kind == "paragraph":
            out.append(f"<p>{_inline(' '.join(block))}</p>")
        block, kind = [], None

    for line in text.splitlines():
        heading = re.match(r"(#{1,6}) (.*)", line)
        this = (None if not line.strip() else "heading" if heading else "table" if line.startswith("|")
                else "list" if line.startswith("- ") else "paragraph")
        if this != kind or this == "heading":
            flush()
        if this == "heading":
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif this is not None:
            kind = this
            block.append(line)
    flush()
    return "\n".join(out)


# -- figures ------------------------------------------------------------------------------------------------------
def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()


def _drawable_runs(report: dict, seed: int) -> dict[str, Run]:
    """The report's signals with a run at ``seed`` that has allocation records to draw."""
    runs = {}
    for row in report["signals"]:
        if seed in row["seeds"]:
            run = Run.at(report["output_root"], report["task"], row["signal"], seed, report["variant"])
            if run.allocations and run.scores:
                runs[row["signal"]] = run
    return runs


def comparison_seed(report: dict) -> int | None:
    """The seed at which the most signals can be drawn (the smallest of those); None when none can."""
    seeds = sorted({s for row in report["signals"] for s in row["seeds"]})
    counts = {seed: len(_drawable_runs(report, seed)) for seed in seeds}
    best = max(counts.values(), default=0)
    return next((seed for seed in seeds if counts[seed] == best), None) if best else None


def report_figures(report: dict) -> list[tuple[str, bytes | None, str]]:
    """(caption, PNG or None, why it is absent) for one report's figures."""
    where = f" ({report['variant']})" if report["variant"] else ""
    seed = comparison_seed(report)
    if seed is None:
        return [(f"Comparison{where}", None, "no finished run with allocation records to draw")]
    runs = _drawable_runs(report, seed)
    missing = [row["signal"] for row in report["signals"] if row["signal"] not in runs]
    figures = [(f"Comparison{where}: signals at seed {seed}", lambda: plot_comparison(runs, missing))]
    figures += [(f"Signal scores per module{where}: {signal}, seed {seed}", lambda run=run: plot_signal_heatmap(run))
                for signal, run in runs.items()]
    out = []
    for caption, draw in figures:
        try:
            out.append((caption, png_bytes(draw()), ""))
        except UsageError as exc:  # e.g. module names without a layer number: the page says so, the rest stays
            out.append((caption, None, str(exc)))
    return out


def _figure_html(caption: str, png: bytes | None, why: str) -> str:
    if png is None:
        return f"<p><em>{html.escape(caption)}: not drawn ({html.escape(why)}).</em></p>"
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption, quote=True)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def reports_html(reports: list[dict], markdown: str, budget_curve: Figure | None = None) -> str:
    """The page: ``markdown`` (the reports' markdown) with its tables, then the figures; ``budget_curve``: a budget
    sweep's figure."""
    figures = [f for report in reports for f in report_figures(report)]
    if budget_curve is not None:
        figures.append((budget_curve.axes[0].get_title(), png_bytes(budget_curve), ""))
    title = f"{reports[0]['task']}: AdaLoRA scoring signals"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        markdown_to_html(markdown),
        "<h2>Figures</h2>", *(_figure_html(*f) for f in figures),
        "</body>", "</html>", ""])
