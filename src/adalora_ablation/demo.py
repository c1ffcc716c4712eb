"""The offline demo: the baseline and every replacement signal on tiny-deberta + the SYNTHETIC task, then a
comparison table."""

from __future__ import annotations

from .errors import OneLineArgumentParser
from .analysis.markdown import table
from .run.folder import run_dir_for
from .signals import SIGNALS, expand_signals, group_names
from .train import train


def comparison_table(summaries: list[dict]) -> str:
    rows = [[s["signal"], f"{s['eval_accuracy']:.4f}", s["total_rank"], s["target_budget"],
             "pass" if s["budget_check_passed"] else "FAIL"] for s in summaries]
    return table(["signal", "accuracy", "total rank", "budget", "budget check"], rows)


def demo_main(argv: list[str]) -> int:
    parser = OneLineArgumentParser(prog="adalora-ablation demo", description=__doc__)
    parser.add_argument("--output-root", "--output_root", default="outputs/demo",
                        help="run folders go to <output-root>/synthetic/<signal>/<seed> (default outputs/demo)")
    parser.add_argument("--signals", nargs="+", default=["seed"], choices=group_names() + list(SIGNALS),
                        metavar="SIGNAL_OR_GROUP", help="signals or groups (seed, table4, peers, controls, all); "
                                                        "default: seed, the study's four signals")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-steps", "--max_steps", type=int, default=None, help="override the demo's 300 steps")
    args = parser.parse_args(argv)

    extra = ["--max_steps", str(args.max_steps)] if args.max_steps else []
    summaries = []
    for signal in expand_signals(args.signals):
        print(f"\n=== demo: {signal} (tiny-deberta, SYNTHETIC task) ===", flush=True)
        summaries.append(train(["--task", "synthetic", "--signal", signal, "--seed", str(args.seed),
                                "--output_root", args.output_root, "--overwrite", "True", *extra]))
    print("\nSYNTHETIC demo (tiny random DeBERTa, keyword task): these numbers say nothing about GLUE.")
    print(comparison_table(summaries))
    print(f"\nRun folders: {run_dir_for(args.output_root, 'synthetic', '<signal>', args.seed)}/. Real runs: "
          "bash scripts/run_rte.sh combo 42 --data-dir /path/to/glue")
    return 0 if all(s["budget_check_passed"] for s in summaries) else 1
