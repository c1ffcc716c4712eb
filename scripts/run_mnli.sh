#!/usr/bin/env bash
# One MNLI run: bash scripts/run_mnli.sh SIGNAL SEED [extra train flags, e.g. --preset paper --data-dir DIR]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/run_mnli.sh SIGNAL SEED [extra adalora-ablation train flags]" >&2
  exit 2
fi
signal=$1 seed=$2
shift 2
exec adalora-ablation train --task mnli --signal "$signal" --seed "$seed" "$@"
