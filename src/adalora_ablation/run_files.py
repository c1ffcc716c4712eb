"""The run folder's files: whole-line jsonl appends and atomic single-file writes (a killed run leaves no torn data)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

METRICS = "metrics.jsonl"
RANK_PATTERN = "rank_pattern.jsonl"
SIGNAL_SCORES = "signal_scores.jsonl"
SUMMARY = "final_summary.json"
RUN_LOGS = (METRICS, RANK_PATTERN, SIGNAL_SCORES)


def _clean(value):
    """JSON has no NaN/Inf: write them as null so every line stays parseable by strict readers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record as one line, in a single write, flushed to the OS."""
    line = json.dumps(_clean(record), sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def write_json_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_clean(data), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_summary(run_dir: Path) -> dict | None:
    """The run's final_summary.json, or None if absent or unreadable (an unfinished run)."""
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
