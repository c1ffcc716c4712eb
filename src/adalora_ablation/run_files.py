"""The run folder's files: whole-line jsonl appends and atomic single-file writes (a killed run leaves no torn data)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from .errors import RunFileError

METRICS = "metrics.jsonl"
RANK_PATTERN = "rank_pattern.jsonl"
SIGNAL_SCORES = "signal_scores.jsonl"
SUMMARY = "final_summary.json"
RUN_LOGS = (METRICS, RANK_PATTERN, SIGNAL_SCORES)
ALLOCATOR_STATE = "adalora_allocator.pt"  # inside every checkpoint-*
FINAL_ADAPTER = "final_adapter"  # the pruned adapter for inference (PEFT format)
DDP_CONSISTENCY = "ddp_consistency.json"  # multi-process runs: every rank's mask digests


def _clean(value):
    """JSON has no NaN/Inf: write them as null so every line stays parseable by strict readers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _write_error(path: Path, exc: OSError) -> RunFileError:
    return RunFileError(f"cannot write {path} ({exc.strerror or exc}); the run stopped, and its last verified "
                        f"checkpoint stays resumable: free space, then run the same command with --resume True")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record as one line with a single O_APPEND write: a killed process leaves whole lines only."""
    data = (json.dumps(_clean(record)) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):  # only on a full disk; never leave half a record behind
                os.ftruncate(fd, os.fstat(fd).st_size - written)
                raise OSError(28, "short write")
        finally:
            os.close(fd)
    except OSError as exc:
        raise _write_error(path, exc) from None


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
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_jsonl(path: Path, keep) -> int:
    """Rewrite a jsonl file (atomically) with only the records for which keep(record) is true; a torn last line
    (which append_jsonl never writes, but an outside copy might) is dropped. Returns the number of lines kept."""
    path = Path(path)
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if keep(record):
            kept.append(line + "\n")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    return len(kept)


def read_summary(run_dir: Path) -> dict | None:
    """The run's final_summary.json, or None if absent or unreadable (an unfinished run)."""
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
