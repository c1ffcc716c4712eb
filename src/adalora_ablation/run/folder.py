"""The run folder. Only this module knows its layout, its file names and the summary's schema.

``<output-root>/<task>/<signal>/<seed>/`` (the Trainer's output_dir; in a sweep ``<task>/<signal>/<variant>/<seed>/``,
e.g. ``target_r=2``) holds ``run_settings.json`` (run/identity.py), ``metrics.jsonl``,
``rank_pattern.jsonl``, ``signal_scores.jsonl``, ``final_summary.json``, ``final_adapter/``, ``checkpoint-N/`` (each
with ``adalora_allocator.pt``) and, for multi-process runs, ``ddp_consistency.json``. Beside the runs live
``<output-root>/<task>/compare/`` (comparison figures) and ``<output-root>/grid/`` (the grid's job record).

Writing: whole-line jsonl appends and atomic single-file writes, so that a killed run leaves no torn data.
Reading: a run's summary, logs and checkpoints (``Run``), and every run under an output root (``discover``).
No torch here: the report, the figures and ``ablate --status`` read runs without loading it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from ..errors import RunFileError, UsageError, first_line
from ..files import file_sha256
from ..data.tasks import METRIC_LABELS, TASK_SPEC, TASKS, MetricField, Task, metric_fields, task_from_spec, task_spec

METRICS = "metrics.jsonl"  # every Trainer log line (train and eval), with the global step
RANK_PATTERN = "rank_pattern.jsonl"  # one line per allocation
SIGNAL_SCORES = "signal_scores.jsonl"  # one line per allocation
SUMMARY = "final_summary.json"
FINAL_ADAPTER = "final_adapter"  # the pruned adapter for inference (PEFT format)
ALLOCATOR_STATE = "adalora_allocator.pt"  # inside every checkpoint-N
MANIFEST = "manifest.json"  # inside every checkpoint-N, written last: name, size and sha256 of every other file
DDP_CONSISTENCY = "ddp_consistency.json"  # multi-process runs: every rank's mask digests
SHARED_WARMUP = "shared_warmup.json"  # a run seeded from a shared warm-up: which one (grid/warmup_run.py)
COMPARE_DIR = "compare"  # <output-root>/<task>/compare/ holds comparison figures, not runs
GRID_DIR = "grid"  # <output-root>/grid/ holds the grid's job record and job logs
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def run_dir_for(output_root: str | Path, task: str, signal: str, seed: int, variant: str = "") -> Path:
    """``<root>/<task>/<signal>/<seed>``; a run of a sweep's variant (the settings the sweep varies, e.g.
    ``target_r=2``, run/identity.py) goes to ``<root>/<task>/<signal>/<variant>/<seed>``."""
    signal_dir = Path(output_root) / task / signal
    return (signal_dir / variant if variant else signal_dir) / str(seed)


def task_spec_path(output_root: str | Path, task: str) -> Path:
    return Path(output_root) / task / TASK_SPEC


def check_task_spec(output_root: str | Path, task: Task) -> None:
    """A custom-<name> folder holds runs of one data set: other files (or other contents) under the same name would
    mix two studies in one report."""
    recorded = read_task_spec(task_spec_path(output_root, task.name).parent)
    if recorded is not None and task_spec(recorded) != task_spec(task):
        raise UsageError(f"{task_spec_path(output_root, task.name)} records other data for {task.name} (files, "
                           f"contents, columns or labels differ); use another --output-root, or name the files "
                           f"differently")


def write_task_spec(output_root: str | Path, task: Task) -> None:
    check_task_spec(output_root, task)
    write_json_atomic(task_spec_path(output_root, task.name), task_spec(task))


def compare_dir(output_root: str | Path, task: str) -> Path:
    return Path(output_root) / task / COMPARE_DIR


def grid_dir(output_root: str | Path) -> Path:
    return Path(output_root) / GRID_DIR


# -- the summary's schema ----------------------------------------------------------------------------------------
# One metric of one eval set (field, Trainer key, eval set, metric name); the task table defines them.
Accuracy = MetricField


def read_task_spec(task_dir: str | Path | None) -> Task | None:
    """The custom task recorded in <output-root>/custom-<name>/task.json, or None."""
    try:
        return task_from_spec(json.loads((Path(task_dir) / TASK_SPEC).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _task_entry(task: str, task_dir: str | Path | None) -> Task | None:
    """The task table's entry, or for a custom task the one its folder records (task_dir: <output-root>/<task>)."""
    return TASKS.get(task) or (read_task_spec(task_dir) if task_dir is not None else None)


def accuracies(task: str, task_dir: str | Path | None = None) -> list[MetricField]:
    """The task's main metric per eval set, in the task table's eval-set order (MNLI: accuracy matched, then
    mismatched; CoLA: Matthews correlation); the first is the task's headline number. The name is kept from when
    every task was scored by accuracy. A task folder that is neither in the table nor a recorded custom task is
    read as one accuracy."""
    entry = _task_entry(task, task_dir)
    if entry is None:
        return [MetricField("eval_accuracy", "eval_accuracy", "", "accuracy")]
    return metric_fields(entry, main_only=True)


def secondary_metrics(task: str, task_dir: str | Path | None = None) -> list[MetricField]:
    """The task's other metrics (MRPC/QQP: F1; STS-B: Spearman; CoLA: accuracy), reported beside the main one."""
    entry = _task_entry(task, task_dir)
    if entry is None:
        return []
    main = {m.field for m in metric_fields(entry, main_only=True)}
    return [m for m in metric_fields(entry) if m.field not in main]


def accuracy_fields(task: str | Task, eval_metrics: dict) -> dict[str, float]:
    """The summary's metric fields (main and secondary) from the Trainer's final evaluation."""
    fields = metric_fields(task) if isinstance(task, Task) else accuracies(task) + secondary_metrics(task)
    return {m.field: eval_metrics[m.metric] for m in fields}


def headline(task: str, summary: dict, task_dir: str | Path | None = None) -> str:
    """The run's main number in words, for status lines: 'accuracy 0.8123', 'Matthews corr. 0.4012'."""
    main = accuracies(task, task_dir)[0]
    value = summary.get(main.field)
    return f"{METRIC_LABELS.get(main.name, main.name)} {'—' if value is None else format(value, '.4f')}"



def task_dir_of(run_dir: str | Path) -> Path:
    """The task folder <output-root>/<task> of the run in <output-root>/<task>/<signal>/[<variant>/]<seed>/ (a
    custom task's task.json is there)."""
    run_dir = Path(run_dir)
    return run_dir.parents[2] if _is_variant(run_dir.parent.name) else run_dir.parents[1]


def run_headline(run_dir: str | Path, summary: dict) -> str:
    """headline() for the run in <output-root>/<task>/<signal>/[<variant>/]<seed>/."""
    task_dir = task_dir_of(run_dir)
    return headline(task_dir.name, summary, task_dir)


# Besides the accuracies: what the report needs from every summary.
REQUIRED_FIELDS = ("total_rank", "target_budget", "budget_check_passed", "final_ranks")


# -- writing -----------------------------------------------------------------------------------------------------
def _clean(value):
    """JSON has no NaN/Inf: write them as null so every line stays parseable by strict readers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file whole or not at all: ``write`` fills a temporary file next to ``path``, which then replaces
    ``path`` in one rename; if anything fails the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the mode any new file gets (0666 less the umask), so that results
        # on a shared output root are as readable as the files the Trainer writes
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def _umask() -> int:
    """The process's umask, read from /proc where it can be (os.umask can only be read by setting it, which for a
    moment would change it for every thread of the process)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_error(path: Path, exc: BaseException) -> RunFileError:
    """A failed write of a run's file (full disk, quota, ...) as the one-line error that stops the run."""
    reason = getattr(exc, "strerror", None) or first_line(exc)
    return RunFileError(f"cannot write {path} ({reason}); the run stopped, and its last verified checkpoint stays "
                        f"resumable: free space, then run the same command with --resume True")


def strict_json(data, indent: int | None = 2) -> str:
    """JSON that strict readers accept: every NaN/Inf written as null (run files, checkpoint manifests, the report)."""
    return json.dumps(_clean(data), indent=indent, allow_nan=False)


def write_json_atomic(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write((strict_json(data) + "\n").encode("utf-8")))


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json_atomic(Path(run_dir) / SUMMARY, summary)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record as one line with a single O_APPEND write: a killed process leaves whole lines only."""
    data = (strict_json(record, indent=None) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # less the umask, as open() does
        try:
            written = os.write(fd, data)
            if written != len(data):  # only on a full disk; never leave half a record behind
                os.ftruncate(fd, os.fstat(fd).st_size - written)
                raise OSError(28, "short write")
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None


def truncate_jsonl(path: Path, keep: Callable[[dict], bool]) -> int:
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
    atomic_write(path, lambda f: f.write("".join(kept).encode("utf-8")))
    return len(kept)


def rewind_logs(run_dir: Path, step: int) -> None:
    """Cut the run back to what had happened when checkpoint-<step> was written: later (damaged or cut-off)
    checkpoints go, and the jsonl logs are cut so that resuming neither duplicates nor loses a line. Allocation
    records carry the 0-based step they ran at (< step); Trainer logs carry the global step after it (the checkpoint
    is written after the log and eval of its own step)."""
    run_dir = Path(run_dir)
    for later in run_dir.glob("checkpoint-*"):
        if _CHECKPOINT.match(later.name) and checkpoint_step(later) > step:
            if later.is_dir() and not later.is_symlink():
                shutil.rmtree(later)
            else:
                later.unlink()
    truncate_jsonl(run_dir / RANK_PATTERN, lambda r: r["step"] < step)
    truncate_jsonl(run_dir / SIGNAL_SCORES, lambda r: r["step"] < step)
    # Everything from the end-of-training line on (the final evaluation included) belongs to the finish, which the
    # resumed run writes again.
    finished = [False]

    def before_the_finish(record: dict) -> bool:
        finished[0] = finished[0] or "train_runtime" in record
        return record["step"] <= step and not finished[0]

    truncate_jsonl(run_dir / METRICS, before_the_finish)


# -- reading -----------------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_shared_warmup(run_dir: Path) -> dict | None:
    """The shared warm-up a run continued from (its record in the run folder), or None."""
    try:
        return json.loads((Path(run_dir) / SHARED_WARMUP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_summary(run_dir: Path) -> dict | None:
    """The run's final_summary.json, or None if absent or unreadable (an unfinished run)."""
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Every checkpoint-N that was completely written (its manifest is written last), oldest first."""
    found = []
    for path in Path(run_dir).glob("checkpoint-*"):
        match = _CHECKPOINT.match(path.name)
        if match and (path / MANIFEST).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_complete_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = complete_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def write_manifest(checkpoint: Path) -> None:
    """The checkpoint's manifest (name, size and sha256 of every other file in it), written last and atomically."""
    checkpoint = Path(checkpoint)
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != MANIFEST)
    write_json_atomic(checkpoint / MANIFEST, {"files": {
        str(p.relative_to(checkpoint)): {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in files}})


def verify_manifest(checkpoint: Path) -> None:
    """Raise ValueError naming the first file that is missing or differs from the checkpoint's manifest."""
    checkpoint = Path(checkpoint)
    try:
        files = json.loads((checkpoint / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{checkpoint / MANIFEST} is missing or unreadable ({type(exc).__name__})") from None
    for name, expected in files.items():
        path = checkpoint / name
        if not path.is_file():
            raise ValueError(f"{path} is missing")
        if path.stat().st_size != expected["size"]:
            raise ValueError(f"{path} has {path.stat().st_size} bytes, the manifest says {expected['size']}")
        if file_sha256(path) != expected["sha256"]:
            raise ValueError(f"{path} does not match its checksum in the manifest")


def checkpoint_step(checkpoint: Path) -> int:
    return int(_CHECKPOINT.match(Path(checkpoint).name).group(1))


@dataclass(eq=False)
class Run:
    """One run folder, as found on disk: each file is read on first use, then kept (a snapshot)."""

    task: str
    signal: str
    seed: int
    run_dir: Path
    variant: str = ""  # the settings a sweep varies (``target_r=2``); "" outside a sweep

    @classmethod
    def at(cls, output_root: str | Path, task: str, signal: str, seed: int, variant: str = "") -> Run:
        return cls(task, signal, seed, run_dir_for(output_root, task, signal, seed, variant), variant)

    @classmethod
    def from_dir(cls, folder: str | Path) -> Run:
        folder = Path(folder)
        variant = folder.parent.name if _is_variant(folder.parent.name) else ""
        task, signal = (folder.parts[-4:-2] if variant else folder.parts[-3:-1])
        seed = folder.name
        return cls(task, signal, int(seed) if seed.isdigit() else seed, folder, variant)

    @property
    def task_dir(self) -> Path:
        """<output-root>/<task>: where a custom task records its metrics (task.json)."""
        return task_dir_of(self.run_dir)

    @property
    def name(self) -> str:
        return "/".join(str(p) for p in (self.task, self.signal, self.variant, self.seed) if p != "")

    @cached_property
    def summary(self) -> dict | None:
        """None for an unfinished run."""
        return read_summary(self.run_dir)

    @cached_property
    def allocations(self) -> list[dict]:
        return read_jsonl(self.run_dir / RANK_PATTERN)

    @cached_property
    def scores(self) -> list[dict]:
        return read_jsonl(self.run_dir / SIGNAL_SCORES)

    @cached_property
    def metrics(self) -> list[dict]:
        return read_jsonl(self.run_dir / METRICS)

    @cached_property
    def problem(self) -> str | None:
        """Why the run cannot go into statistics; None for a finished run whose summary has every field."""
        if not self.run_dir.is_dir():
            return "no run folder"
        if self.summary is None:
            return "no valid final_summary.json (unfinished, killed or corrupt run)"
        main = accuracies(self.task, self.task_dir)
        required = [a.field for a in main] + list(REQUIRED_FIELDS)
        absent = [f for f in required if self.summary.get(f) is None]  # NaN is written as null: just as unusable
        if absent:
            return f"final_summary.json has no value for {', '.join(absent)}"
        # json reads a literal NaN/Infinity (another writer's file): such a metric would turn every mean into nan.
        for a in main:
            for field in (a.field, a.adapter_effect_field, a.without_adapters_field):
                value = self.summary.get(field)
                if isinstance(value, float) and not math.isfinite(value):
                    kind = "NaN" if math.isnan(value) else "infinite"
                    return f"unfinished: metric is {kind} ({field} is {value} in final_summary.json)"
        return None

    @property
    def final_ranks(self) -> dict[str, int]:
        """Per-module final rank: the summary's, or for an unfinished run its last allocation's."""
        return self.summary["final_ranks"] if self.summary else self.allocations[-1]["ranks"]


def _is_variant(name: str) -> bool:
    return "=" in name


def _seed_dirs(folder: Path) -> list[Path]:
    return [d for d in sorted(folder.iterdir()) if d.is_dir() and d.name.isdigit()]


def discover(output_root: str | Path, task: str) -> list[Run]:
    """Every <output-root>/<task>/<signal>/[<variant>/]<seed>/ folder (seed folders are integers, as train writes
    them; variant folders are NAME=VALUE[,NAME=VALUE...])."""
    task_dir = Path(output_root) / task
    if not task_dir.is_dir():
        return []
    runs = []
    for signal_dir in sorted(task_dir.iterdir()):
        if not signal_dir.is_dir() or signal_dir.name == COMPARE_DIR:
            continue
        runs += [Run(task, signal_dir.name, int(d.name), d) for d in _seed_dirs(signal_dir)]
        for variant_dir in sorted(signal_dir.iterdir()):
            if variant_dir.is_dir() and _is_variant(variant_dir.name):
                runs += [Run(task, signal_dir.name, int(d.name), d, variant_dir.name) for d in _seed_dirs(variant_dir)]
    return runs
