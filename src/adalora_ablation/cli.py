"""``adalora-ablation`` command: train one run, run the offline demo, plot runs, report over seeds."""

from __future__ import annotations

import argparse
import os
import sys

from .errors import REQUEUE_EXIT_CODE, RunInterrupted, UsageError

COMMANDS = {
    "train": "train one run (flags or a YAML/JSON file; 'train --help' lists them)",
    "demo": "offline four-signal comparison on tiny-deberta + the synthetic task",
    "plot": "figures of one run, or of several signals with --compare ('plot --help')",
    "report": "per-signal accuracy/rank table over seeds, allocation similarity, churn ('report --help')",
    "ablate": "run a task x signal x seed grid, skipping finished runs and resuming broken ones ('ablate --help')",
}


def _usage() -> str:
    lines = ["usage: adalora-ablation COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:8s} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def _train(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        from .args import help_text

        print(help_text())
        return 0
    from .train import train

    train(argv)
    return 0


def _demo(argv: list[str]) -> int:
    from .demo import demo_main

    return demo_main(argv)


def _plot(argv: list[str]) -> int:
    from .plots import plot_main

    return plot_main(argv)


def _report(argv: list[str]) -> int:
    from .report import report_main

    return report_main(argv)


def _ablate(argv: list[str]) -> int:
    from .ablate import ablate_main

    return ablate_main(argv)


HANDLERS = {"train": _train, "demo": _demo, "plot": _plot, "report": _report, "ablate": _ablate}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        print(f"adalora-ablation: error: unknown command {command!r}; choose one of: {', '.join(HANDLERS)}",
              file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return HANDLERS[command](rest)
    except UsageError as exc:
        print(f"adalora-ablation: error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        print(f"adalora-ablation: {exc}", file=sys.stderr)
        return REQUEUE_EXIT_CODE


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming the fix (exit 2) instead of usage + error."""

    def error(self, message):
        raise UsageError(f"{message} (see 'adalora-ablation {self.prog.split()[-1]} --help')")


if __name__ == "__main__":
    sys.exit(main())
