"""Imports go one way, layer by layer (the README's Layout section), and reading runs loads no training stack."""

import ast
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


def top_level_imports(path: Path) -> set[str]:
    """The package modules (dotted, relative to the package) that a file imports at its top level."""
    here = path.relative_to(PACKAGE).with_suffix("").parts[:-1]  # the subpackage the file lives in
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = list(here[: len(here) - (node.level - 1)])
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found |= {".".join([*base, alias.name]) for alias in node.names}
    return {m for m in found if m}


def package_modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer():
    for name in package_modules():
        layer_of(name)  # raises StopIteration for a module outside every layer


def test_imports_go_one_way():
    wrong = []
    for name, path in package_modules().items():
        if name.endswith("__init__") and "." not in name:
            continue
        for imported in top_level_imports(path):
            if layer_of(imported) > layer_of(name):
                wrong.append(f"{name} imports {imported}")
    assert wrong == []


def test_the_layer_check_sees_a_wrong_import(tmp_path):
    bad = PACKAGE / "run" / "_probe_for_test.py"
    bad.write_text("from ..adalora.schedule import budget_at\n")
    try:
        assert "run._probe_for_test" in package_modules()
        assert top_level_imports(bad) == {"adalora.schedule"}
        assert layer_of("adalora.schedule") > layer_of("run._probe_for_test")
    finally:
        bad.unlink()


def test_nothing_imports_the_command_line():
    assert not any(m.split(".")[0] == "cli" for name, p in package_modules().items() if name != "__main__"
               for m in top_level_imports(p))


def test_registry_reports_and_grid_status_load_no_torch_peft_or_transformers():
    code = ("import sys, adalora_ablation.analysis.report, adalora_ablation.analysis.plots, "
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
