"""Grid wall time and optimizer steps with and without a shared warm-up, side by side in one session.

    python benchmarks/bench_warmup.py [--output-root DIR] [--budgets 2 4] [--signals ...] [-- train flags]

The grid: the demo's four signals and the two controls at each ``--target-r`` of ``--budgets``, one seed, on the
demo preset (tiny-deberta, the SYNTHETIC task: 300 steps, tinit 50). ``alone``: every run trains all its steps in
its own ``train`` process. ``shared``: one ``adalora-ablation warmup`` process trains steps 0..tinit-1 once for
the whole grid and seeds every run, which then continues with ``train --resume True``: what ``ablate`` does for a
group (a grid with a budget axis is one group). Processes run one at a time with the same thread count; the two
arms are run alternately, run by run, so that load on a shared machine hits both alike. At the end every run's
rank_pattern.jsonl and signal_scores.jsonl are compared between the arms (they must be identical). The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from adalora_ablation.grid.warmup import WarmupGroup, warmup_key, write_plan
from adalora_ablation.run.folder import read_summary, run_dir_for

SIGNALS = ["baseline_adalora", "importance_only", "plasticity_only", "combo", "random", "uniform"]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-root", default="/tmp/bench_warmup")
    parser.add_argument("--budgets", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--signals", nargs="+", default=SIGNALS)
    parser.add_argument("--seed", type=int, default=42)
    args, extra = parser.parse_known_args()
    root = Path(args.output_root)
    cells = [(s, r) for r in args.budgets for s in args.signals]

    def argv(arm, signal, target_r):
        return ["--task", "synthetic", "--seed", str(args.seed), *extra, "--signal", signal, "--target-r",
                str(target_r), "--output-root", str(root / arm / f"r{target_r}"), "--resume", "True"]

    train = [sys.executable, "-m", "adalora_ablation", "train"]
    runs = [SimpleNamespace(task="synthetic", seed=args.seed, signal=s,
                            run_dir=run_dir_for(root / "shared" / f"r{r}", "synthetic", s, args.seed))
            for s, r in cells]
    argvs = [argv("shared", s, r) for s, r in cells]
    group = WarmupGroup(warmup_key(argvs[0]), root / "shared" / "grid" / "warmup" / "bench", 0, runs, argvs)
    write_plan(group)

    seconds = {"alone": 0.0, "shared": timed([sys.executable, "-m", "adalora_ablation", "warmup", str(group.folder)])}
    warmup_s = seconds["shared"]
    for signal, target_r in cells:
        seconds["alone"] += timed([*train, *argv("alone", signal, target_r)])
        seconds["shared"] += timed([*train, *argv("shared", signal, target_r)])

    summary = read_summary(run_dir_for(root / "alone" / f"r{args.budgets[0]}", "synthetic", cells[0][0], args.seed))
    total, tinit = summary["total_step"], summary["config"]["adalora"]["tinit"]
    steps = {"alone": len(cells) * total, "shared": tinit + len(cells) * (total - tinit)}
    identical = all(
        (run_dir_for(root / "alone" / f"r{r}", "synthetic", s, args.seed) / name).read_bytes()
        == (run_dir_for(root / "shared" / f"r{r}", "synthetic", s, args.seed) / name).read_bytes()
        for s, r in cells for name in ("rank_pattern.jsonl", "signal_scores.jsonl"))
    print("| arm | runs | optimizer steps | wall time (s) |\n|---|---|---|---|")
    for arm in ("alone", "shared"):
        print(f"| {arm} | {len(cells)} | {steps[arm]:,} | {seconds[arm]:.1f} |")
    print(f"warm-up process: {warmup_s:.1f} s; logs identical between the arms: {identical}")
    print(json.dumps({"runs": len(cells), "total_step": total, "tinit": tinit, "steps": steps,
                      "seconds": {k: round(v, 1) for k, v in seconds.items()}, "warmup_seconds": round(warmup_s, 1),
                      "identical": identical}))


if __name__ == "__main__":
    main()
