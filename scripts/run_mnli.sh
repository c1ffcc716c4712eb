#!/usr/bin/env bash
# One MNLI run: bash scripts/run_mnli.sh SIGNAL SEED [extra train flags, e.g. --preset paper --data-dir DIR]
exec bash "$(dirname "$0")/run_task.sh" mnli "$@"
