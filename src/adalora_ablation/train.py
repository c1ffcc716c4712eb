"""One run: parse -> check -> load model and data -> wrap with AdaLoRA (+ our allocator) -> Trainer -> summary."""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import signal
import time
from pathlib import Path

import peft
import torch
import transformers
from transformers import DataCollatorWithPadding, set_seed

from .adalora.adapter_effect import accuracy_without_adapters
from .adalora.allocator import install_allocator
from .args import help_text, parse_train_args, run_config
from .adalora.callback import AdaLoraCallback
from .adalora.recovery import subspace_fields
from .data.loading import load_tokenized
from .data.metrics import compute_metrics_for
from .data.planted import freeze_head, planted_setup_from_args, prepare_planted_data, rows_digest
from .data.planted_spec import planted_recovery
from .module_names import short_module_name
from .errors import RunInterrupted, UsageError
from .logs import use_process_log_level
from .adalora.model import (
    count_parameters,
    detect_head_modules,
    detect_target_modules,
    load_model_and_tokenizer,
    wrap_with_adalora,
)
from .run.life import CheckLock, RunFolder, refuse_finished_run
from .run.preemption import STOP_SIGNALS, StopOnSignal
from .run.resume import AdaLoraTrainer
from .run.identity import identity, parse_variant, variant_mismatch, variant_name
from .run.folder import (
    DDP_CONSISTENCY, FINAL_ADAPTER, accuracy_fields, check_task_spec, checkpoint_step, headline, read_shared_warmup,
    run_dir_for, write_json_atomic, write_task_spec,
)
from .adalora.schedule import schedule_warnings
from .signals import SignalConfig
from .data.tasks import CUSTOM, TASKS, Task, metric_fields

logger = logging.getLogger(__name__)
PEFT_VERSION = "0.18.1"


def resolve_task(name: str, data_args) -> Task:
    """The task table's entry, or for --task custom the task read from the user's files (every file checked)."""
    if name == CUSTOM:
        from .data.custom import load_custom

        return load_custom(data_args)
    return TASKS[name]


def check_peft_version(version: str = peft.__version__) -> None:
    if version != PEFT_VERSION:
        raise UsageError(f"peft {version} is installed but this tool is pinned to peft {PEFT_VERSION} (its AdaLoRA "
                         f"schedule and masking are what we compare against): pip install peft=={PEFT_VERSION}")


def compute_total_step(num_train_rows: int, args) -> int:
    """The number of optimizer steps the Trainer will take (PEFT needs it before the model is wrapped)."""
    if args.max_steps > 0:
        return args.max_steps
    batch = args.train_batch_size  # per device x GPUs seen by this process
    batches = num_train_rows // batch if args.dataloader_drop_last else math.ceil(num_train_rows / batch)
    world = max(args.world_size, 1)  # accelerate shards the batches over processes
    per_process = batches // world if args.dataloader_drop_last else math.ceil(batches / world)
    per_epoch = max(math.ceil(per_process / args.gradient_accumulation_steps), 1)
    return math.ceil(args.num_train_epochs * per_epoch)


def check_schedule(tinit: int, tfinal: int, total_step: int) -> None:
    if tinit >= total_step - tfinal:
        hint_tinit, hint_tfinal = max(total_step // 10, 0), max(total_step // 5, 0)
        raise UsageError(
            f"impossible AdaLoRA schedule: total_step came out as {total_step} optimizer steps, but --tinit {tinit} "
            f">= total_step - --tfinal {tfinal} = {total_step - tfinal}, leaving no budget-reduction phase; try "
            f"--tinit {hint_tinit} --tfinal {hint_tfinal}, or train longer (--max-steps / --num-train-epochs)"
        )


def library_versions() -> dict[str, str]:
    import datasets

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "datasets": datasets.__version__}


def train(argv: list[str], stop_signals=STOP_SIGNALS, warmup=None) -> dict:
    """Run one training job from command-line style arguments; returns the final summary. On one of
    ``stop_signals``, at any moment until the summary is written, it stops in a defined way and raises
    RunInterrupted: after writing a checkpoint of the step it is in when there is training state worth keeping.
    ``warmup`` (a grid.warmup_run.WarmupSession) makes it a shared warm-up instead: its own folder, every member's
    signal, and a stop with a checkpoint at tinit (returns None)."""
    stopper = StopOnSignal(stop_signals).install()  # from the start: no signal kills the run between its phases
    try:
        return _train(argv, stopper, warmup)
    finally:
        stopper.restore()


def _train(argv: list[str], stopper: StopOnSignal, warmup=None) -> dict | None:
    started = time.time()
    run_args, model_args, data_args, ada_args, training_args = parse_train_args(argv)
    use_process_log_level(training_args)
    check_peft_version()
    task = resolve_task(run_args.task, data_args)
    seed = training_args.seed
    asked = identity(result_config(task, run_args, model_args, data_args, ada_args, training_args))
    run_dir = warmup.folder if warmup else run_dir_for(run_args.output_root, task.name, run_args.signal, seed,
                                                       checked_variant(run_args, asked))
    if task.custom_files:
        check_task_spec(run_args.output_root, task)
    refuse_finished_run(run_dir, asked, run_args.overwrite)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir} exists but is not a folder; move it away or choose another --output-root")
    training_args.output_dir = str(run_dir)
    if training_args.load_best_model_at_end:
        raise UsageError("--load-best-model-at-end is not supported: AdaLoRA checkpoints hold full-shape adapters "
                         "and the final rank pattern belongs to the last step; pick a checkpoint from metrics.jsonl "
                         "instead")

    # Everything that can fail on bad input happens before anything is written.
    # The planted task's base model (a random model's weights, any model's new head) is the teacher's, so it is
    # drawn from --planted-seed: the task must not change with the training --seed.
    set_seed(data_args.planted_seed if task.planted else seed)
    model, tokenizer = load_model_and_tokenizer(model_args.model, task.labels)
    if task.planted:
        set_seed(seed)  # the adapters' initialisation and the data order follow --seed, as on every task
    target_modules = detect_target_modules(model, model_args.target_modules)
    planted_setup, planted_record, planted_deltas, build = None, None, None, {}
    if task.planted:
        planted_setup = planted_setup_from_args(data_args, ada_args, [short_module_name(n) for n in target_modules])
        planted_record, build["build"], build["build_key"], planted_deltas = prepare_planted_data(
            model, tokenizer, task, planted_setup, data_args, model_args.model, log=logger.info)
        if planted_setup.targets == "logits":  # distillation: every model's own loss is then MSE on the logits,
            model.config.problem_type = "regression"  # to which PEFT adds AdaLoRA's orthogonal regulariser as always
    data = load_tokenized(task, data_args, tokenizer, model_args.model, log=logger.info, **build)
    train_set = data[task.train_split]
    eval_sets = {name: data[split] for name, split in task.eval_splits.items()}
    modules_to_save = model_args.modules_to_save or detect_head_modules(model)
    total_step = compute_total_step(len(train_set), training_args)
    check_schedule(ada_args.tinit, ada_args.tfinal, total_step)
    for warning in schedule_warnings(ada_args.tinit, ada_args.tfinal, ada_args.deltaT, total_step,
                                     training_args.get_warmup_steps(total_step), ada_args.init_r * len(target_modules),
                                     ada_args.target_r * len(target_modules)):
        logger.warning(f"[schedule] {warning}")

    peft_model = wrap_with_adalora(model, target_modules, modules_to_save, ada_args, total_step)
    if task.planted:
        planted_record["train_head"] = data_args.planted_train_head
        if not data_args.planted_train_head:  # the teacher's head, unchanged: only ΔW differs
            freeze_head(peft_model)
    peft_model.to(training_args.device)  # first, so that the allocator's buffers live where the adapters train
    signal_config = signal_config_for(ada_args, seed, planted_setup.spec if planted_setup else None)
    allocator = (warmup.install_allocator(peft_model, signal_config) if warmup
                 else install_allocator(peft_model, run_args.signal, signal_config))
    params = count_parameters(peft_model)
    head = ("frozen (the teacher's head)" if task.planted and not data_args.planted_train_head
            else f"trained in full: {modules_to_save}")
    logger.info(f"[model] {model_args.model}: {len(target_modules)} adapted modules, {head}; "
                f"trainable parameters {params['trainable']:,} of {params['total']:,}")
    if task.synthetic:
        logger.info("[data] task 'synthetic' is a SYNTHETIC keyword task for offline demos, not GLUE")

    is_main = training_args.process_index == 0
    # One writer per run folder, for the life of this process: a second `train` on the same folder (a requeued job
    # whose predecessor still runs, the same grid started twice) stops here instead of mixing its logs in.
    run = RunFolder(run_dir, stopper, logger.warning if is_main else logger.debug, is_main)
    run.stop_if_signalled(training_args)  # came in while loading: nothing is held or written yet
    with run.open(resume=run_args.resume, overwrite=run_args.overwrite,
                  restart=run_args.resume_fallback == "restart",
                  # a warm-up's checkpoint serves every member: checked by its (shared) allocator, not one run's
                  identity=None if warmup else asked,
                  accept=lambda state, found: check_same_signal(state, allocator.signal_name,
                                                                allocator.signal_config, found)):
        if is_main and task.custom_files:  # what the report and the figures read the custom task's metrics from
            write_task_spec(run_args.output_root, task)
        callback = AdaLoraCallback(peft_model, allocator, run_dir, write_files=is_main, planted_deltas=planted_deltas)
        checkpoint = run.checkpoint
        if checkpoint is not None:
            logger.info(f"[run] resuming {run_dir} from {checkpoint.name}")
            callback.pending_resume = run.resume_state
        trainer = AdaLoraTrainer(
            model=peft_model,
            args=training_args,
            train_dataset=train_set,
            eval_dataset=eval_sets[""] if "" in eval_sets else eval_sets,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=compute_metrics_for(task),
            callbacks=[callback, stopper, CheckLock(run), *(warmup.callbacks if warmup else [])],
            adalora_callback=callback,
        )
        callback.trainer = trainer
        run.stop_if_signalled(training_args)  # before training: the folder is as the last run left it

        def keep_final_step() -> tuple[int, str]:  # a signal after the last step: its checkpoint is worth keeping
            trainer._save_checkpoint(trainer.model, trial=None)
            return trainer.state.global_step, f"checkpoint-{trainer.state.global_step}"

        if checkpoint is not None and checkpoint_step(checkpoint) >= total_step:
            # Resumed at the last step: nothing to train (the Trainer would take one step past max_steps)
            trainer.load_without_training(checkpoint)
            callback.on_train_begin(training_args, trainer.state, trainer.control)  # the allocator's state
            loss_this_process = 0.0
        else:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
            if stopper.stopped_at is not None:
                step = stopper.stopped_at
                raise RunInterrupted(signal.Signals(stopper.received).name, step, f"checkpoint-{step}")
            loss_this_process = trainer._total_loss_scalar
        if warmup:
            return None  # stopped at tinit with its checkpoint; grid/warmup_run.py seeds the members from it
        run.stop_if_signalled(training_args, keep_final_step)
        loss_sum = callback.train_loss_sum(loss_this_process)
        if training_args.world_size > 1:
            check_ranks_agree(callback.mask_digests, run_dir if is_main else None)
        eval_metrics = trainer.evaluate()
        run.stop_if_signalled(training_args, keep_final_step)
        test_metrics = trainer.predict(data["test"]).metrics if "test" in data else None  # --test-file
        run.stop_if_signalled(training_args, keep_final_step)
        effect = {}
        if run_args.adapter_effect:  # do the adapters carry part of what was learned? (a void comparison if not)
            fields = metric_fields(task, main_only=True)
            without = accuracy_without_adapters(trainer, eval_sets, {a.eval_set: a.without_adapters_field
                                                                     for a in fields}, task.metrics[0])
            for a in fields:
                effect[a.without_adapters_field] = without[a.without_adapters_field]
                effect[a.adapter_effect_field] = eval_metrics[a.metric] - without[a.without_adapters_field]
        # The last moment to stop: writing the final adapter and the summary takes seconds, and PEFT's pruned save
        # rewrites the adapter config, after which no training checkpoint should be written.
        run.stop_if_signalled(training_args, keep_final_step)
        if is_main:  # the pruned adapter for inference, apart from the (full-shape) training checkpoints
            run.check_lock()
            peft_model.save_pretrained(run_dir / FINAL_ADAPTER)
            tokenizer.save_pretrained(run_dir / FINAL_ADAPTER)

        summary = {
            "task": task.name,
            "synthetic": task.synthetic,
            "signal": run_args.signal,
            "seed": seed,
            "variant": run_args.variant,
            "fingerprint": asked["fingerprint"],
            "settings": asked["settings"],
            "model": model_args.model,
            **accuracy_fields(task, eval_metrics),
            **effect,
            "eval_metrics": eval_metrics,
            **({"test_metrics": test_metrics} if test_metrics is not None else {}),
            # the Trainer's train_loss covers only the steps of its own process; this is the whole run's
            "train_loss": None if loss_sum is None else loss_sum / max(trainer.state.global_step, 1),
            "total_step": total_step,
            "total_rank": sum(callback.ranks),
            "target_budget": allocator.target_bgt,
            "initial_budget": allocator.init_bgt,
            **callback.budget_check(),  # budget_check_passed, and what it checked
            "allocations": callback.allocations,
            "nonfinite_steps": int(allocator.nonfinite_steps),
            "scaler_skipped_steps": callback.scaler_skipped_steps,
            "final_ranks": dict(zip(allocator.layout.names, callback.ranks)),
            "resumed_from": checkpoint.name if checkpoint else None,
            "shared_warmup": read_shared_warmup(run_dir) if checkpoint else None,
            "trainable_parameters": params["trainable"],
            "total_parameters": params["total"],
            "target_modules": target_modules,
            "module_shapes": {name: [din, dout] for name, din, dout in
                              zip(allocator.layout.names, allocator.layout.in_features, allocator.layout.out_features)},
            "modules_to_save": modules_to_save,
            "config": run_config(run_args, model_args, data_args, ada_args, training_args),
            "versions": library_versions(),
            "wall_time_s": round(time.time() - started, 2),
        }
        if planted_setup is not None:  # how much of the known answer the allocation found
            summary.update(planted_recovery(summary["final_ranks"], planted_setup.spec))
            summary.update(subspace_fields(peft_model, planted_deltas, planted_setup.spec))
            summary["planted"] = {**planted_record, "rows": {s: len(d) for s, d in data.items()},
                                  "rows_digest": rows_digest(data)}
        run.write_summary(summary)
        main = headline(task.name, summary, Path(run_args.output_root) / task.name)
        logger.info(f"[run] {task.name}/{run_args.signal}/{seed}: {main}, "
                    f"total rank {summary['total_rank']} (budget {summary['target_budget']}) -> {run_dir}")
        return summary


def result_config(task, run_args, model_args, data_args, ada_args, training_args) -> dict:
    """What the run's identity is computed from: its resolved settings, the number of processes it trains in (the
    global batch is per-device batch x processes) and, for your own data (--task custom), the contents of its files
    (a file edited under the same name is other data)."""
    config = run_config(run_args, model_args, data_args, ada_args, training_args)
    config["processes"] = {"world_size": training_args.world_size}
    if task.custom_files:
        config["task"] = {"data_files_sha256": {split: digest for split, (_, digest) in task.custom_files.items()}}
    return config


def checked_variant(run_args, asked: dict) -> str:
    """The run's --variant in its folder form, after checking that it names this run's own settings."""
    if not run_args.variant:
        return ""
    try:
        values = parse_variant(run_args.variant)
    except ValueError as exc:
        raise UsageError(f"--variant {run_args.variant!r}: {exc}; write it as NAME=VALUE[,NAME=VALUE...], "
                         f"e.g. target_r=2") from None
    problem = variant_mismatch(values, asked["settings"])
    if problem:
        raise UsageError(f"--variant {run_args.variant}: {problem}")
    return variant_name(values)


def signal_config_for(ada_args, seed: int, planted: dict[str, int] | None = None) -> SignalConfig:
    """``planted``: the planted task's answer (module -> planted rank), which only the oracle reads."""
    return SignalConfig(beta1=ada_args.beta1, beta2=ada_args.beta2, ema_decay=ada_args.ema_decay,
                        combo_lambda=ada_args.combo_lambda, normalize_method=ada_args.normalize_method,
                        plasticity_norm=ada_args.plasticity_norm, seed=seed, planted=planted)


def check_same_signal(state: dict, signal: str, config: SignalConfig, checkpoint: Path) -> None:
    """A checkpoint continues only the signal, with the settings, that wrote it (e.g. combo's --plasticity-norm):
    anything else would splice two different runs into one folder."""
    saved = {"signal": state["allocator"]["signal"], **state.get("signal_config", {})}
    now = {"signal": signal, **dataclasses.asdict(config)}
    changed = [f"--{k.replace('_', '-')} {saved[k]} (now {now[k]})" for k in saved if k in now and saved[k] != now[k]]
    if changed:
        raise UsageError(f"{checkpoint} was written with {', '.join(changed)}; resume with the same settings, or "
                         f"use another --output-root for this variant")


def train_main(argv: list[str]) -> int:
    """``adalora-ablation train``."""
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return 0
    finished = False
    try:
        train(argv)
        finished = True
    finally:
        close_process_group(wait_for_others=finished)
    return 0


def close_process_group(wait_for_others: bool) -> None:
    """End a multi-process run's process group before the interpreter exits: left to exit, gloo's threads can abort
    a process that is done ("terminate called without an active exception") while another still reads from it.
    After a finished run every process waits for the others first; after an error, nobody waits for anybody."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if wait_for_others:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def check_ranks_agree(mask_digests: list[str], run_dir: Path | None) -> None:
    """Every process must have applied the same masks (they see the same all-reduced gradients). Rank 0 records
    each rank's per-allocation mask digests in ddp_consistency.json; any difference stops the run."""
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mask_digests)
    identical = all(d == gathered[0] for d in gathered)
    if run_dir is not None:
        write_json_atomic(run_dir / DDP_CONSISTENCY, {"world_size": len(gathered), "identical": identical,
                                                      "mask_digests": {str(r): d for r, d in enumerate(gathered)}})
    if not identical:
        raise RuntimeError("the processes applied different AdaLoRA masks; see ddp_consistency.json")


