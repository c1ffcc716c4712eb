#!/usr/bin/env bash
# The four signals for one task and seed: bash scripts/run_ablation_all.sh TASK SEED [extra flags, e.g. --with-controls]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/run_ablation_all.sh TASK SEED [extra adalora-ablation ablate/train flags]" >&2
  exit 2
fi
task=$1 seed=$2
shift 2
exec adalora-ablation ablate --task "$task" --seeds "$seed" "$@"
