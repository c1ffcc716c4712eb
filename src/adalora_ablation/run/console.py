"""The Trainer's console: one readable line per log record (logs.trainer_log_line) through our logger, on the main
process only, instead of the raw dicts that transformers' PrinterCallback and ProgressCallback print. The progress
bar stays where the Trainer shows one (``--disable-tqdm False``; our default shows none)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from ..logs import trainer_log_line

logger = logging.getLogger(__name__)


def write_log_line(state, logs: dict | None, total_rank: Callable[[], int | None], bar=None) -> None:
    """The record's line, on the main process of the whole run (world rank 0) only; around a progress bar the way
    tqdm.write does it (the bar cleared, the line written, the bar drawn again)."""
    if not state.is_world_process_zero:
        return
    line = trainer_log_line(logs or {}, state.global_step, state.max_steps, total_rank())
    if line is None:
        return
    if bar is None:
        logger.info(line)
        return
    with type(bar).external_write_mode():
        logger.info(line)


class ConsoleLines(TrainerCallback):
    """In place of PrinterCallback (no progress bar): our line per log record."""

    def __init__(self, total_rank: Callable[[], int | None]):
        self.total_rank = total_rank

    def on_log(self, args, state, control, logs=None, **kwargs):
        write_log_line(state, logs, self.total_rank)


class ConsoleProgress(ProgressCallback):
    """In place of ProgressCallback: its bars, and our line per log record (also after training: the final
    evaluation) instead of its dict."""

    def __init__(self, total_rank: Callable[[], int | None]):
        super().__init__()
        self.total_rank = total_rank

    def on_log(self, args, state, control, logs=None, **kwargs):
        write_log_line(state, logs, self.total_rank, self.training_bar)


def use_readable_console(trainer, total_rank: Callable[[], int | None]) -> None:
    """Swap the Trainer's console callbacks for ours; ``total_rank`` gives the adapters' total rank now (the
    AdaLoRA callback's), shown on every training line. A notebook's progress display is left as it is."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ConsoleProgress(total_rank))
    if trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(ConsoleLines(total_rank))
