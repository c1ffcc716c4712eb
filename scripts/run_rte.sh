#!/usr/bin/env bash
# One RTE run: bash scripts/run_rte.sh SIGNAL SEED [extra train flags, e.g. --preset paper --data-dir DIR]
exec bash "$(dirname "$0")/run_task.sh" rte "$@"
