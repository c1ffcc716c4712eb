"""Imports go one way, layer by layer (docs/layout.md), and reading runs loads no training stack."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import adalora_ablation

PACKAGE = Path(adalora_ablation.__file__).parent
HEAVY = {"torch", "peft", "transformers", "datasets"}
# Lower layers first; a module may import from its own layer and the ones above it in this list, never below.
LAYERS = [
    {"errors", "files", "logs", "module_names"},
    {"data"},
    {"signals"},
    {"run"},
    {"adalora"},
    {"args", "train"},
    {"analysis"},
    {"grid"},
    {"demo"},
    {"cli", "__main__", "__init__"},
]


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def imports_of(path: Path, package: Path = PACKAGE) -> set[str]:
    """The package modules (dotted, relative to the package) that a file imports, at its top level or inside a
    function (a lazy import is a dependency all the same)."""
    here = path.relative_to(package).with_suffix("").parts[:-1]  # the subpackage the file lives in
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = list(here[: len(here) - (node.level - 1)])
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found |= {".".join([*base, alias.name]) for alias in node.names}
        else:  # absolute imports of the package itself
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            found |= {n.removeprefix(f"{package.name}.") for n in names if n.startswith(f"{package.name}.")}
    return {m for m in found if m}


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {".".join(p.relative_to(package).with_suffix("").parts): p for p in package.rglob("*.py")}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports; a package is its __init__ ("signals"), and a name imported from a
    module ("from .folder import Run") counts as that module."""
    modules = {name.removesuffix(".__init__"): path for name, path in package_modules(package).items()}
    graph = {}
    for name, path in modules.items():
        graph[name] = set()
        for imported in imports_of(path, package):
            parts = imported.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()  # "signals.SignalConfig" -> "signals"
            if parts and ".".join(parts) != name:
                graph[name].add(".".join(parts))
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle of imports (one per set of modules that import each other, directly or through others)."""
    circles, done = [], set()
    for start in sorted(graph):
        path, seen = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                seen.discard(path.pop())
            elif nxt == start and frozenset(path) not in done:
                done.add(frozenset(path))
                circles.append([*path, start])
            elif nxt not in seen and nxt > start:  # each circle is found once, from its smallest module
                path.append(nxt)
                seen.add(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return circles


def test_every_module_has_a_layer():
    modules = package_modules()
    assert {"errors", "train", "cli", "run.folder", "analysis.report"} <= set(modules)  # the package was found
    unplaced = sorted(name for name in modules if not any(name.split(".")[0] in layer for layer in LAYERS))
    assert unplaced == [], "modules outside every layer of LAYERS (and of docs/layout.md)"


def wrong_imports(package: Path = PACKAGE) -> list[str]:
    """Every import of a module from a layer below its own."""
    wrong = []
    for name, path in package_modules(package).items():
        if name.endswith("__init__") and "." not in name:
            continue
        for imported in imports_of(path, package):
            if layer_of(imported) > layer_of(name):
                wrong.append(f"{name} imports {imported}")
    return wrong


def test_imports_go_one_way():
    assert wrong_imports() == []


def test_the_layer_check_sees_a_wrong_import_also_inside_a_function(tmp_path):
    """On a copy of the package: a probe written into the package itself would be seen, for that moment, by
    test_imports_go_one_way running on another worker (pytest -n 2), and fail it."""
    package = tmp_path / PACKAGE.name
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    bad = package / "run" / "_probe_for_test.py"
    bad.write_text("from ..errors import UsageError\n\n\ndef later():\n    from ..adalora.schedule import budget_at\n")
    assert "run._probe_for_test" in package_modules(package)
    assert imports_of(bad, package) == {"errors", "adalora.schedule"}
    assert wrong_imports(package) == ["run._probe_for_test imports adalora.schedule"]
    assert not (PACKAGE / "run" / "_probe_for_test.py").exists()


def test_no_circle_of_imports_not_even_inside_a_folder():
    """Layers only order folders; inside one (analysis/report.py and analysis/variants.py) imports go one way too."""
    assert import_circles(import_graph()) == []


def test_the_circle_check_sees_a_circle_through_a_lazy_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "analysis").mkdir(parents=True)
    for path, text in [("__init__.py", ""), ("analysis/__init__.py", ""),
                       ("analysis/report.py", "def report_main():\n    from .variants import FORMATS\n"),
                       ("analysis/variants.py", "from .report import build_report\nfrom .markdown import table\n"),
                       ("analysis/markdown.py", "import pkg.analysis.stats\n"), ("analysis/stats.py", "")]:
        (package / path).write_text(text)
    graph = import_graph(package)
    assert graph["analysis.report"] == {"analysis.variants"}  # seen inside the function
    assert graph["analysis.markdown"] == {"analysis.stats"}  # an absolute import of the package
    assert import_circles(graph) == [["analysis.report", "analysis.variants", "analysis.report"]]


def test_nothing_imports_the_command_line():
    assert not any(m.split(".")[0] == "cli" for name, p in package_modules().items() if name != "__main__"
               for m in imports_of(p))


def test_registry_reports_and_grid_status_load_no_torch_peft_or_transformers():
    code = ("import sys, adalora_ablation.analysis.variants, adalora_ablation.analysis.plots, "
            "adalora_ablation.run.folder, adalora_ablation.grid.ablate, adalora_ablation.signals as s; "
            "s.describe_signals(); s.expand_signals(['all']); "
            f"print(sorted({HEAVY!r} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_grid_status_and_dry_run_load_no_statistics_or_figures():
    """ablate --status / --dry-run start at once: the report's scipy and matplotlib load only when a report is made."""
    code = ("import sys, adalora_ablation.cli, adalora_ablation.grid.ablate; "
            "print(sorted({'scipy', 'matplotlib', 'numpy', 'torch'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
