"""The README and the manual (docs/*.md): every relative link reaches a file, every #anchor a heading of its page
(GitHub's slugs), the README stays a front door, and CI still finds the two commands it runs from it."""

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (code spans, links and emphasis reduced to their text),
    lowercased, every character but letters, digits, '_', '-' and spaces dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's slug, repeated headings numbered as GitHub numbers them (-1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(page.read_text()):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(page: Path) -> list[str]:
    return [m.group(1) for line in prose_lines(page.read_text()) for m in LINK.finditer(INLINE_CODE.sub("", line))]


def github_slug(heading: str) -> str:
    """GitHub's anchor rule written a second way, character by character (github-slugger): the heading as rendered
    (a code span's text, a link's text, no emphasis markers), lowercased; every punctuation or symbol character but
    '-' and '_' removed (Unicode categories P* and S*); each space a '-'."""
    rendered, i = [], 0
    while i < len(heading):
        char = heading[i]
        if char == "[" and "](" in heading[i:]:  # [text](target): the text only
            close = heading.index("](", i)
            rendered.append(heading[i + 1:close])
            i = heading.index(")", close) + 1
        elif char in "`*":  # code-span and emphasis markers render as nothing
            i += 1
        else:
            rendered.append(char)
            i += 1
    return "".join("-" if c == " " else c for c in "".join(rendered).lower()
                   if c in "-_ " or unicodedata.category(c)[0] not in "PS")


def headings() -> list[str]:
    return [m.group(2) for page in PAGES for line in prose_lines(page.read_text())
            if (m := HEADING.match(line))]


def test_slugs_follow_githubs_rules():
    # anchors GitHub gives these headings (as linked from the pages)
    assert slug("Your own data (`--task custom`)") == "your-own-data---task-custom"
    assert slug("One run on several GPUs (torchrun / accelerate)") == "one-run-on-several-gpus-torchrun--accelerate"
    assert slug("final_summary.json") == "final_summaryjson"
    assert slug("The paper's budgets (Table 1)") == "the-papers-budgets-table-1"
    assert slug("See [the layout](docs/layout.md) *first*") == "see-the-layout-first"  # a link's text, no emphasis
    # every real heading of the README and the manual: the checker's slug is GitHub's rule, written independently
    real = headings()
    assert len(real) > 50 and any("`" in h for h in real) and any("(" in h for h in real)
    assert {h: slug(h) for h in real} == {h: github_slug(h) for h in real}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_readme_is_a_front_door_that_maps_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    unmapped = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unmapped, f"docs pages the README does not link: {unmapped}"


def test_every_page_says_what_it_is_for():
    for page in PAGES[1:]:
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# "), page.name
        assert lines[1] == "" and lines[2].strip() and not lines[2].startswith("#"), page.name


def test_ci_finds_the_readme_commands():
    """.ci/run's own readme_command (the first line of the ```bash block after each marker), run as CI runs it."""
    script = (ROOT / ".ci" / "run").read_text()
    function = re.search(r"^readme_command\(\) \{.*?^\}", script, re.S | re.M).group(0)
    found = {}
    for marker in ("demo-command", "test-command"):
        done = subprocess.run(["bash", "-c", f"{function}\nreadme_command {marker}"], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        found[marker] = done.stdout.strip()
    assert found["demo-command"].endswith("adalora-ablation demo")
    assert found["test-command"].endswith("ruff check src tests benchmarks && python -m pytest -q -n 2")  # lint too
