"""report --format html: one self-contained page holding every table of the markdown report and the figures."""

from __future__ import annotations

import base64
import io
from collections import Counter
from html.parser import HTMLParser

import matplotlib.image
import pytest
from runs_crafted import INIT_R, MODULE_SHAPES, Schedule, craft, write_run
from test_report import ACCURACIES

from adalora_ablation.cli import main
from adalora_ablation.run.folder import SIGNAL_SCORES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "source"}
SIGNALS = ("baseline_adalora", "combo")


class Page(HTMLParser):
    """Tables as [[(tag, text), ...] per row], images, every attribute, and whether every tag was closed in
    order."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.open, self.misnested, self.tags = [], [], Counter()
        self.tables, self.images, self.attributes = [], [], []
        self.row = self.cell = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        self.attributes += attrs
        if tag not in VOID:
            self.open.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.row = []
            self.tables[-1].append(self.row)
        elif tag in ("th", "td"):
            self.cell = (tag, [])
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.misnested.append(tag)
        if tag in ("th", "td"):
            self.row.append((self.cell[0], "".join(self.cell[1])))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[1].append(data)


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every table of a markdown text: its rows' cells, header first, the |---| line left out."""
    tables, current = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        if current is None:
            current = []
            tables.append(current)
        if set(line.strip()) <= {"|", "-"}:
            continue
        current.append([cell.strip() for cell in line.strip()[1:-1].split("|")])
    return tables


def craft_sweep(root, task="rte"):
    """Two signals x three seeds at two budgets (a target_r sweep), as train writes them."""
    for target_r, shift in ((2, 0.0), (4, 0.03)):
        schedule = Schedule(init_r=INIT_R, target_r=target_r, modules=MODULE_SHAPES)
        ranks = {m: target_r + (i % 3) - 1 for i, m in enumerate(MODULE_SHAPES)}  # target_r per module on average
        final = {m: [int(i < r) for i in range(INIT_R)] for m, r in ranks.items()}
        for signal in SIGNALS:
            for seed, accuracy in enumerate(ACCURACIES[signal], start=1):
                write_run(root, task, signal, seed, {"eval_accuracy": accuracy + shift}, variant=f"target_r={target_r}",
                          schedule=schedule, kept={schedule.steps()[-1]: final},
                          summary={"trainable_parameters": 1000 * target_r})
    return root


def check_page(text: str, markdown: str) -> Page:
    page = Page(text)
    assert page.misnested == [] and page.open == [], "every element closed, in order"
    assert text.startswith("<!DOCTYPE html>") and page.tags["html"] == page.tags["body"] == 1
    # every table of the markdown report, header cells and rows, and nothing else
    expected = markdown_tables(markdown)
    assert len(expected) >= 5
    assert [[[cell for _, cell in row] for row in table] for table in page.tables] == expected
    for table in page.tables:
        assert {tag for tag, _ in table[0]} == {"th"} and all(tag == "td" for row in table[1:] for tag, _ in row)
    # self-contained: images inline, no script, stylesheet link or remote address anywhere
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        data = base64.b64decode(image["src"][len(prefix):], validate=True)
        assert data[:8] == PNG_MAGIC
        height, width = matplotlib.image.imread(io.BytesIO(data)).shape[:2]
        assert width >= 300 and height >= 200
    assert page.tags["script"] == page.tags["link"] == 0
    assert not [v for _, v in page.attributes if v and v.lower().startswith(("http:", "https:", "//"))]
    assert "url(" not in text and "@import" not in text and "http://" not in text and "https://" not in text
    return page


def test_html_holds_every_table_and_figure_of_a_sweep(tmp_path, capsys):
    root = craft_sweep(tmp_path / "runs")
    assert main(["report", "--task", "rte", "--output-root", str(root)]) == 0
    markdown = capsys.readouterr().out
    assert "### Gap to baseline_adalora per budget (target_r sweep)" in markdown

    assert main(["report", "--task", "rte", "--output-root", str(root), "--format", "html"]) == 0
    path = root / "rte" / "compare" / "report.html"
    assert capsys.readouterr().out.strip() == str(path)
    page = check_page(path.read_text(encoding="utf-8"), markdown)
    # per variant: the comparison figure and each signal's score heatmap; then the budget curve
    captions = [image["alt"] for image in page.images]
    assert captions == [caption for variant in ("target_r=2", "target_r=4") for caption in (
        f"Comparison ({variant}): signals at seed 1",
        *(f"Signal scores per module ({variant}): {signal}, seed 1" for signal in SIGNALS))] + [
        "accuracy against the budget (target_r sweep)"]
    assert not list(path.parent.glob(".report.html.*"))  # no temporary file left behind


def test_html_without_a_sweep_to_output_and_with_a_missing_run(tmp_path, capsys):
    root = craft(tmp_path / "runs", {"baseline_adalora": ACCURACIES["baseline_adalora"],
                                     "combo": ACCURACIES["combo"][:2] + (None,),
                                     "importance_only": ACCURACIES["importance_only"]})
    for seed in (1, 2):  # combo's runs cannot be drawn: no score records
        (root / "rte" / "combo" / str(seed) / SIGNAL_SCORES).unlink()
    (root / "rte" / "combo" / "3").mkdir()  # a requested run that never finished
    assert main(["report", "--task", "rte", "--output-root", str(root)]) == 0
    markdown = capsys.readouterr().out
    assert "- combo / seed 3: no valid final_summary.json" in markdown

    out = tmp_path / "page.html"
    assert main(["report", "--task", "rte", "--output-root", str(root), "--format", "html", "--output",
                 str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text(encoding="utf-8")
    page = check_page(text, markdown)
    assert [image["alt"] for image in page.images] == [
        "Comparison: signals at seed 1", "Signal scores per module: baseline_adalora, seed 1",
        "Signal scores per module: importance_only, seed 1"]
    assert "<li>combo / seed 3: no valid final_summary.json" in text
    assert "<h3>Seeds needed (paired t-test at power 0.8, Holm level α/m)</h3>" in text
    assert "<code>adalora-ablation ablate --task rte --signals" in text
    assert not (root / "rte" / "compare" / "report.html").exists()  # --output, not the default place


@pytest.mark.parametrize("fmt", ["html", "markdown"])
def test_output_into_a_missing_folder_is_one_line_exit_2(tmp_path, capsys, fmt):
    root = craft(tmp_path / "runs", {s: ACCURACIES[s] for s in SIGNALS})
    out = tmp_path / "nowhere" / "report.html"
    assert main(["report", "--task", "rte", "--output-root", str(root), "--format", fmt, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--output {out}: no folder {out.parent}" in err and "\n" not in err
    assert not out.parent.exists()


def test_markdown_to_an_output_file(tmp_path, capsys):
    root = craft(tmp_path / "runs", {s: ACCURACIES[s] for s in SIGNALS})
    assert main(["report", "--task", "rte", "--output-root", str(root)]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "report.md"
    assert main(["report", "--task", "rte", "--output-root", str(root), "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text(encoding="utf-8") == printed
