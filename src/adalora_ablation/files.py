"""File checksums, shared by the data layer (a custom task's files are part of its run's identity) and the run
folder (every checkpoint's manifest); the tool's cache folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def default_cache_dir() -> Path:
    """Where the tool caches what it can recompute (tokenized data, other transformers versions' Trainer flags)."""
    return Path(os.environ.get("ADALORA_CACHE", Path.home() / ".cache" / "adalora_ablation"))


def file_sha256(path: Path) -> str:
    """The file's sha256 in hex, read in 1 MiB blocks so that a large file is never held in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
