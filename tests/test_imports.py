"""Imports go one way: cli -> commands -> (runs, core). Reading runs loads no training stack."""

import ast
import subprocess
import sys
from pathlib import Path

import adalora_ablation

PACKAGE = Path(adalora_ablation.__file__).parent
HEAVY = {"torch", "peft", "transformers", "datasets"}


def test_report_and_figures_load_no_torch_peft_or_transformers():
    code = ("import sys, adalora_ablation.report, adalora_ablation.plots, adalora_ablation.runs; "
            f"print(sorted({HEAVY!r} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def module_imports(name: str) -> set[str]:
    """The package modules that a module imports at its top level (not inside functions)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found


def test_nothing_imports_the_command_line_and_results_never_import_training():
    modules = [p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")]
    assert all("cli" not in module_imports(m) for m in modules)
    for results in ("runs", "report", "plots", "ablate", "launchers", "schedule", "module_names", "markdown"):
        assert not module_imports(results) & {"train", "demo", "args", "callback", "resume", "allocator", "model",
                                              "data", "signals", "lora_layout", "controls"}, results
