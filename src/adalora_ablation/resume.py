"""Checkpoints that stay resumable, and continuing a run exactly where its last checkpoint left off.

PEFT's ``save_pretrained`` prunes AdaLoRA adapters to ``config.rank_pattern`` (and rewrites that attribute), which
is right for a finished adapter but makes a mid-training checkpoint unresumable: the pruned triplets, their
optimizer state and the allocator's EMAs would be gone. Our checkpoints therefore hold the adapters at full
``init_r`` shape, and next to them the allocator's state (every EMA buffer, the current rank pattern, counters).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import safe_globals

from .errors import RunFileError, UsageError
from .run_files import (
    ALLOCATOR_STATE,
    METRICS,
    RANK_PATTERN,
    SIGNAL_SCORES,
    truncate_jsonl,
    write_json_atomic,
)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Files of a checkpoint that torch.load reads on resume (ours and the Trainer's). All are loaded with
# weights_only=True: a checkpoint folder may come from someone else (a shared directory, a downloaded run), and a
# full pickle load would run whatever code it holds.
_TORCH_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")
# Written last into every checkpoint, atomically: the name, size and sha256 of every other file in it. A checkpoint
# without it is incomplete; one whose files do not match it is damaged.
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(checkpoint: Path) -> None:
    checkpoint = Path(checkpoint)
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != MANIFEST)
    write_json_atomic(checkpoint / MANIFEST, {"files": {
        str(p.relative_to(checkpoint)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}})


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
        if _sha256(path) != expected["sha256"]:
            raise ValueError(f"{path} does not match its checksum in the manifest")


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


def _error_line(exc: BaseException) -> str:
    """The informative line of a torch.load error: for a refused pickle, the global it wanted to call."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    refused = [line.split("error:", 1)[1].split(" was not")[0].strip() for line in lines if "WeightsUnpickler" in line]
    if refused:
        return f"refused: {refused[0]}"
    return lines[0] if lines else type(exc).__name__


def _safe_load(path: Path):
    """torch.load without pickle's code execution, as the Trainer loads its files (numpy's RNG state allowlisted);
    a refused or damaged file raises ValueError naming it."""
    try:
        with safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and OS errors all mean "cannot resume from this file"
        raise ValueError(f"{path} cannot be loaded safely ({_error_line(exc)})") from None


def load_checkpoint_state(checkpoint: Path) -> dict:
    """Our allocator state from a checkpoint, after checking that every torch file the resume will read (ours and
    the Trainer's) loads safely: a damaged or crafted file is found here, with its name, instead of as a traceback
    in the middle of the Trainer's resume. Raises ValueError naming the first file that does not."""
    checkpoint = Path(checkpoint)
    verify_manifest(checkpoint)
    state = _safe_load(checkpoint / ALLOCATOR_STATE)
    for path in [checkpoint / name for name in _TORCH_FILES] + sorted(checkpoint.glob("rng_state_*.pth")):
        if path.is_file():
            _safe_load(path)
    return state


def resumable_checkpoint(run_dir: Path, log, restart: bool = True) -> tuple[Path, dict] | None:
    """The newest complete checkpoint that verifies (manifest, safe loading), with our allocator state; None if the
    run has none. Checkpoints that fail are named and skipped, one line each. If every one fails, the run starts
    over (``restart``) or stops with a one-line error."""
    refused = []
    for checkpoint in reversed(complete_checkpoints(run_dir)):
        try:
            return checkpoint, load_checkpoint_state(checkpoint)
        except ValueError as problem:
            log(f"[run] skipping {checkpoint.name}: {problem}")
            refused.append(str(problem))
    if refused and not restart:
        raise UsageError(f"no checkpoint of {run_dir} can be resumed from: {'; '.join(refused)}; remove the damaged "
                         f"checkpoint-* folders, or pass --resume-fallback restart to start over")
    if refused:
        log(f"[run] no checkpoint of {run_dir} verifies; starting over")
    return None


def run_settings(device: torch.device | str) -> dict:
    """What bitwise equality of a resumed run with an uninterrupted one depends on (beyond the data and flags)."""
    return {"torch": str(torch.__version__), "device": torch.device(device).type,
            "intra_op_threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


def settings_difference(saved: dict | None, now: dict) -> str | None:
    """One line naming the settings that differ between a checkpoint's run and this process, or None."""
    if saved is None:
        return None
    changed = [f"{k} {saved.get(k)} -> {v}" for k, v in now.items() if saved.get(k) != v]
    if not changed:
        return None
    return (f"[run] resuming with different settings ({', '.join(changed)}): the result may differ in the last bits "
            f"from an uninterrupted run")


def checkpoint_step(checkpoint: Path) -> int:
    return int(_CHECKPOINT.match(Path(checkpoint).name).group(1))


def rewind_logs(run_dir: Path, step: int) -> None:
    """Cut the run back to what had happened when checkpoint-<step> was written: later (damaged or cut-off)
    checkpoints go, and the jsonl logs are cut so that resuming neither duplicates nor loses a line. Allocation
    records carry the 0-based step they ran at (< step); Trainer logs carry the global step after it (the checkpoint
    is written after the log and eval of its own step)."""
    for later in Path(run_dir).glob("checkpoint-*"):
        if _CHECKPOINT.match(later.name) and checkpoint_step(later) > step:
            if later.is_dir() and not later.is_symlink():
                shutil.rmtree(later)
            else:
                later.unlink()
    truncate_jsonl(run_dir / RANK_PATTERN, lambda r: r["step"] < step)
    truncate_jsonl(run_dir / SIGNAL_SCORES, lambda r: r["step"] < step)
    truncate_jsonl(run_dir / METRICS, lambda r: r["step"] <= step and "train_runtime" not in r)


def save_torch_atomic(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AdaLoraTrainer(Trainer):
    """A Trainer whose checkpoints keep full-shape adapters and the allocator's state."""

    def __init__(self, *args, adalora_callback, **kwargs):
        super().__init__(*args, **kwargs)
        self.adalora_callback = adalora_callback

    def _save_checkpoint(self, model, trial):
        peft_config = self.model.peft_config[self.model.base_model.trainable_adapter_name]
        rank_pattern = peft_config.rank_pattern
        peft_config.rank_pattern = None  # save every triplet: the checkpoint must continue training, not infer
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                save_torch_atomic(self.adalora_callback.resume_state(), folder / ALLOCATOR_STATE)
                write_manifest(folder)
        except RunFileError:
            raise
        except Exception as exc:  # OSError, or a serializer's own error type wrapping one (safetensors)
            raise RunFileError(f"cannot write checkpoint {folder} ({_error_line(exc)}); the run stopped, and its "
                               f"last verified checkpoint stays resumable: free space, then run the same command "
                               f"with --resume True") from None
        finally:
            peft_config.rank_pattern = rank_pattern
