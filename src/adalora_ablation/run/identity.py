"""A run is its settings: the resolved settings that decide a run's numbers, their fingerprint, and how two differ.

The settings come from the same five groups that ``final_summary.json`` records under ``config`` (run, model, data,
adalora, training), flattened to one level (the field names are unique across the groups). Everything is kept
except what cannot change a run's numbers: where it writes, what and how often it logs, evaluates or saves, how it
resumes, and what the machine it runs on decides by itself (``use_cpu``, ``local_rank``, data-loader workers).
Leaving a field out is the dangerous direction (two different runs would pass as one), so unknown fields, such as
one a newer transformers adds, are kept.

No torch here: ``ablate --status`` and ``--dry-run`` compare folders against a grid without loading it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

IDENTITY_FILE = "run_settings.json"  # in the run folder and in every checkpoint-N: {"fingerprint", "settings"}

# Per group, the fields that do not decide a run's numbers.
_NOT_RESULT = {
    "run": {"output_root", "overwrite", "resume", "resume_fallback", "preset", "variant", "adapter_effect",
            "include"},  # include: where a signal's code is found; the signal's name is the setting
    "model": set(),
    "data": {"cache_dir"},
    "adalora": set(),
    "training": {
        "output_dir", "run_name", "project", "report_to", "disable_tqdm", "debug", "skip_memory_metrics",
        "eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "eval_do_concat_batches",
        "eval_use_gather_object", "per_device_eval_batch_size", "batch_eval_metrics", "prediction_loss_only",
        "include_for_metrics", "include_num_input_tokens_seen", "load_best_model_at_end", "metric_for_best_model",
        "greater_is_better", "restore_callback_states_from_checkpoint", "resume_from_checkpoint", "ignore_data_skip",
        "do_train", "do_eval", "do_predict", "enable_jit_checkpoint", "push_to_hub", "local_rank", "use_cpu",
        "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "ddp_timeout", "ddp_backend",
        "torch_empty_cache_steps", "log_level", "log_level_replica", "log_on_each_node",
    },
}
_NOT_RESULT_PREFIXES = ("logging_", "save_", "hub_", "trackio_")


def decides_result(group: str, name: str) -> bool:
    """Whether a setting of a group (run, model, data, adalora, training) can change a run's numbers."""
    return name not in _NOT_RESULT.get(group, set()) and not name.startswith(_NOT_RESULT_PREFIXES)


def result_settings(config: dict) -> dict:
    """The settings that decide a run's result, flat and JSON-normal (what a round trip through a file gives), from
    a config as ``final_summary.json`` records it: {"run": {...}, "model": {...}, "data": {...}, ...}."""
    flat = {}
    for group, values in config.items():
        for name, value in (values or {}).items():
            if decides_result(group, name):
                flat[name] = value
    return json.loads(json.dumps(flat, sort_keys=True, default=str))


def fingerprint(settings: dict) -> str:
    """A short stable hash of the settings (16 hex digits of a sha256 over their sorted JSON)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def identity(config: dict) -> dict:
    settings = result_settings(config)
    return {"fingerprint": fingerprint(settings), "settings": settings}


def differing(a: dict, b: dict, ignore=()) -> list[str]:
    """The settings two runs hold with different values. A setting only one side knows (a field that another
    transformers version adds) is not compared."""
    return [name for name in sorted(a) if name in b and name not in ignore and a[name] != b[name]]


def difference(recorded: dict, asked: dict, where: str = "in the folder") -> str | None:
    """One line naming every setting that differs (``target_r: 4 in the folder, 2 asked``), or None if none does."""
    changed = [f"{name}: {show(recorded[name])} {where}, {show(asked[name])} asked"
               for name in differing(recorded, asked)]
    return "; ".join(changed) or None


def show(value) -> str:
    """A setting's value as messages and folder names write it."""
    return json.dumps(value) if isinstance(value, (dict, list)) or value is None else str(value)


# Settings this tool added after runs were made without them, per task, and the value such a run had: a recorded run
# that lacks one is read as holding that value (never skipped as "a field only one side knows"), so that it does not
# pass for a run made with the new value. planted_construction: the planted updates uniformly random (v1);
# planted_student: the student's base model kept the dropout of its config (v1); planted_max_strength: "auto" could
# choose any rung of the ladder (up to 16).
ADDED_SETTINGS = {"planted": {"planted_construction": "construction v1", "planted_student": "student v1",
                              "planted_max_strength": 16.0}}


def completed(settings: dict) -> dict:
    """Recorded settings with the ADDED_SETTINGS' old values filled in where the run predates them."""
    added = ADDED_SETTINGS.get(settings.get("task"), {})
    return {**{k: v for k, v in added.items() if k not in settings}, **settings}


def summary_settings(summary: dict) -> dict | None:
    """A finished run's settings: recorded by train, or, for a run written before fingerprints were recorded, read
    from the full config its summary holds (the same fields, so such runs are compared just as well); None when the
    summary holds neither."""
    if isinstance(summary.get("settings"), dict):
        return completed(summary["settings"])
    if isinstance(summary.get("config"), dict):
        return completed(result_settings(summary["config"]))
    return None


def read_identity(folder: Path) -> dict | None:
    """The {"fingerprint", "settings"} recorded in a run folder or checkpoint, or None (absent or unreadable)."""
    try:
        found = json.loads((Path(folder) / IDENTITY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(found, dict) and isinstance(found.get("settings"), dict)):
        return None
    return {**found, "settings": completed(found["settings"])}


# -- variants: the settings a sweep varies, as a run folder's name ------------------------------------------------
def canonical_value(text: str) -> str:
    """A setting's value as a folder name writes it: numbers in one form (1e-4 and 0.0001 name the same folder)."""
    text = str(text).strip()
    try:
        return repr(int(text))
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return repr(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)


def variant_sort_key(name: str) -> list:
    """Variants in the order of their values, numbers numerically (target_r=2 before target_r=12)."""
    key = []
    for setting, value in parse_variant(name).items() if name else []:
        try:
            key.append((setting, 0, float(value), ""))
        except ValueError:
            key.append((setting, 1, 0.0, value))
    return key


def variant_name(values: dict[str, str]) -> str:
    """``target_r=2`` or ``combo_lambda=0.5,target_r=2``: sorted by name, so the order of the flags does not matter."""
    return ",".join(f"{name}={canonical_value(values[name])}" for name in sorted(values))


def parse_variant(name: str) -> dict[str, str]:
    """``combo_lambda=0.5,target_r=2`` -> {"combo_lambda": "0.5", "target_r": "2"}; ValueError if malformed."""
    values = {}
    for part in name.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key or not value.strip():
            raise ValueError(f"{part!r} is not NAME=VALUE")
        if key in values:
            raise ValueError(f"{key} is named twice")
        values[key] = value.strip()
    return values


def variant_mismatch(variant: dict[str, str], settings: dict) -> str | None:
    """One line naming each setting of the variant that the run's resolved settings do not have, or None."""
    wrong = []
    for name, value in sorted(variant.items()):
        if name not in settings:
            wrong.append(f"{name} is not a setting that decides a run's result")
        elif canonical_value(value) != canonical_value(show(settings[name])):
            wrong.append(f"{name}={value} named, but the run's {name} is {show(settings[name])} "
                         f"(add --{name.replace('_', '-')} {value})")
    return "; ".join(wrong) or None
