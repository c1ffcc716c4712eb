"""Logging: every module logs to ``logging.getLogger(__name__)`` under the package logger configured here.

The command line shows progress (INFO) on stdout and warnings and errors on stderr. During a run each process logs
at the Trainer's level for it (``--log-level``, ``--log-level-replica``): by default the main process shows our
progress and the other processes of a multi-process run only warnings. The Trainer's own log records (loss, learning
rate, evaluation) reach the console as one readable line each (``trainer_log_line``; run/console.py writes them),
not as the raw dicts the Trainer prints.
"""

from __future__ import annotations

import logging
import sys

PACKAGE_LOGGER = logging.getLogger("adalora_ablation")


class _ConsoleHandler(logging.StreamHandler):
    """Writes to sys.stdout or sys.stderr as they are when each record is written (redirected, captured)."""

    def __init__(self, name: str):
        super().__init__()
        self._stream_name = name

    @property
    def stream(self):
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, _value):  # StreamHandler.__init__ sets it; the property decides
        pass


def configure_console() -> None:
    """Progress on stdout, warnings and errors on stderr, message text only (once per process)."""
    PACKAGE_LOGGER.setLevel(logging.INFO)
    if any(isinstance(h, _ConsoleHandler) for h in PACKAGE_LOGGER.handlers):
        return
    progress = _ConsoleHandler("stdout")
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = _ConsoleHandler("stderr")
    problems.setLevel(logging.WARNING)
    for handler in (progress, problems):
        handler.setFormatter(logging.Formatter("%(message)s"))
        PACKAGE_LOGGER.addHandler(handler)
    PACKAGE_LOGGER.propagate = False  # a root handler (e.g. basicConfig) would print every line twice


def use_process_log_level(training_args) -> None:
    """Log at the Trainer's level for this process. The Trainer's default, "passive", leaves the libraries' own
    levels alone; for our messages it means INFO on the main process (replicas default to "warning")."""
    level = training_args.get_process_log_level()
    if training_args.should_log and training_args.log_level == "passive":
        level = logging.INFO
    PACKAGE_LOGGER.setLevel(level)


# -- the Trainer's log records as console lines ------------------------------------------------------------------
ALLOCATION_LOG_PREFIX = "adalora/"  # allocation scalars in the Trainer's log stream (adalora/callback.py)
_TIMINGS = ("_runtime", "_samples_per_second", "_steps_per_second")  # the Trainer's speed metrics: not shown
_TRAIN_FIELDS = {"loss": "loss", "grad_norm": "grad norm", "learning_rate": "lr", "epoch": "epoch"}
_TRAIN_FORMATS = {"learning_rate": "{:.2e}", "epoch": "{:.2f}"}


def _number(value) -> str:
    """4 significant digits; scientific notation for very small or large magnitudes; anything else as it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value != 0 and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.2e}"
    return f"{value:.4g}"


def _metric(name: str, value) -> str:
    """An evaluation metric to 4 decimals (accuracy 0.8120); a loss like the training loss."""
    return f"{value:.4f}" if isinstance(value, float) and not name.endswith("loss") else _number(value)


def trainer_log_line(logs: dict, step: int, max_steps: int, total_rank: int | None = None) -> str | None:
    """One readable console line for a record of the Trainer's log stream (what ``on_log`` receives), e.g.
    ``[train] step 40/300  loss 1.234  grad norm 0.3528  lr 9.50e-03  epoch 0.32  total rank 96`` or
    ``[eval] step 40/300  accuracy 0.8120  loss 0.4512``. None for a record that is not shown: the allocation
    scalars (the [AdaLoRA Update] lines say the same readably) and an empty one."""
    logs = {k: v for k, v in (logs or {}).items() if k != "total_flos"}
    if not logs or any(k.startswith(ALLOCATION_LOG_PREFIX) for k in logs):
        return None
    where = f"step {step}/{max_steps}" if max_steps else f"step {step}"
    if "train_runtime" in logs:  # the Trainer's summary at the end of train()
        line = f"[train] finished at {where} in {logs['train_runtime']:.1f} s"
        if logs.get("train_steps_per_second") is not None:
            line += f" ({logs['train_steps_per_second']:.3g} steps/s)"
        if logs.get("train_loss") is not None:
            line += f"; mean training loss {_number(logs['train_loss'])}"
        return line
    if any(k.startswith("eval_") for k in logs):
        metrics = {k.removeprefix("eval_"): v for k, v in logs.items()
                   if k.startswith("eval_") and not k.endswith(_TIMINGS)}
        ordered = [k for k in metrics if not k.endswith("loss")] + [k for k in metrics if k.endswith("loss")]
        return "  ".join([f"[eval] {where}", *(f"{k} {_metric(k, metrics[k])}" for k in ordered)])
    known = [f"{label} {_TRAIN_FORMATS[k].format(logs[k]) if k in _TRAIN_FORMATS else _number(logs[k])}"
             for k, label in _TRAIN_FIELDS.items() if logs.get(k) is not None]
    others = [f"{k} {_number(v)}" for k, v in logs.items() if k not in _TRAIN_FIELDS]
    rank = [] if total_rank is None else [f"total rank {total_rank}"]
    kind = "[train]" if "loss" in logs or "learning_rate" in logs else "[log]"
    return "  ".join([f"{kind} {where}", *known, *others, *rank])
