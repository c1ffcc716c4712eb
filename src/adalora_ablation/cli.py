"""``adalora-ablation COMMAND``: dispatch to a command's ``*_main(argv) -> exit code``.

A command's module is imported only when it runs, so that ``report`` or ``plot`` never load torch; ``train`` parses
and checks its arguments before it imports the training code. ``--help``, ``--version`` and errors a user can fix
(``UsageError``: one line on stderr, exit code 2) come before torch, transformers or peft is imported.
"""

from __future__ import annotations

import importlib
import os
import sys

from .errors import REQUEUE_EXIT_CODE, RunInterrupted, UsageError, version_line
from .logs import configure_console

COMMANDS = {  # name: (module, entry point, one-line description)
    "train": ("cli", "train_main", "train one run (flags or a YAML/JSON file; 'train --help' lists them)"),
    "demo": ("demo", "demo_main",
             "offline comparison of the main signals and controls on tiny-deberta + the planted task"),
    "plot": ("analysis.plots", "plot_main", "figures of one run, or of several signals with --compare ('plot --help')"),
    "report": ("analysis.variants", "report_main",
               "per-signal accuracy/rank table over seeds, allocation similarity, churn ('report --help')"),
    "ablate": ("grid.ablate", "ablate_main",
               "run a task x signal x seed grid, skipping finished runs and resuming broken ones ('ablate --help')"),
    "warmup": ("grid.warmup_run", "warmup_main", "train a grid's shared warm-up once and seed its runs (ablate "
               "starts it)"),
}


def train_main(argv: list[str]) -> int:
    """``train``: its arguments parsed and checked (args.py, no torch), then the run (train.py)."""
    from .args import help_text, parse_settings

    if "-h" in argv or "--help" in argv:
        print(help_text())
        return 0
    parse_settings(argv)  # --version ends here; so does every usage error, in one line
    from .train import train_main as train_run

    return train_run(argv)


def _usage() -> str:
    lines = ["usage: adalora-ablation [--version] COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:8s} {text}" for name, (_, _, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version_line())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"adalora-ablation: error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    configure_console()
    module, entry_point, _ = COMMANDS[command]
    try:
        return getattr(importlib.import_module(f"{__package__}.{module}"), entry_point)(rest)
    except UsageError as exc:
        print(f"adalora-ablation: error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        if os.environ.get("RANK", "0") == "0":  # every process of a DDP run stops at the same step: say it once
            print(f"adalora-ablation: {exc}", file=sys.stderr)
        return REQUEUE_EXIT_CODE

