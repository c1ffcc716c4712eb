#!/usr/bin/env bash
# One run of a task: bash scripts/run_task.sh TASK SIGNAL SEED [extra train flags, e.g. --preset paper --data-dir DIR]
# (run_rte.sh and run_mnli.sh are this with the task filled in.)
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash scripts/run_${1:-TASK}.sh SIGNAL SEED [extra adalora-ablation train flags]" >&2
  exit 2
fi
task=$1 signal=$2 seed=$3
shift 3
exec adalora-ablation train --task "$task" --signal "$signal" --seed "$seed" "$@"
