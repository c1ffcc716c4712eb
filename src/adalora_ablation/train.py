"""One run: parse -> check -> load model and data -> wrap with AdaLoRA (+ our allocator) -> Trainer -> summary."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import platform
import signal
import socket
import time
from pathlib import Path

import peft
import torch
import transformers
from transformers import DataCollatorWithPadding, set_seed

from .adalora.adapter_effect import accuracy_without_adapters
from .adalora.allocator import install_allocator
from .args import help_text, parse_settings, run_config
from .adalora.callback import AdaLoraCallback
from .adalora.recovery import recovery_fields
from .data.loading import load_tokenized
from .data.metrics import compute_metrics_for
from .data.planted import (
    freeze_head, planted_setup_from_args, prepare_planted_data, rows_digest, without_dropout,
)
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
from .run.console import use_readable_console
from .run.preemption import STOP_SIGNALS, StopOnSignal
from .run.resume import AdaLoraTrainer, Checkpoints
from .run.identity import parse_variant, variant_mismatch, variant_name
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
    """The phases of one run, in order: plan (arguments, checks), load (model, planted teacher, data), wrap (AdaLoRA
    and our allocator), then inside the run folder train, evaluate and summarise."""
    started = time.time()
    plan = plan_run(argv, warmup)
    loaded = load_model_and_data(plan)
    adapted = wrap_model(plan, loaded, warmup)
    args = plan.training_args
    is_main = args.process_index == 0
    # One writer per run folder, for the life of this process: a second `train` on the same folder (a requeued job
    # whose predecessor still runs, the same grid started twice) stops here instead of mixing its logs in.
    run = RunFolder(plan.run_dir, stopper, logger.warning if is_main else logger.debug, is_main)
    run.stop_if_signalled(args)  # came in while loading: nothing is held or written yet
    allocator = adapted.allocator
    with run.open(resume=plan.run_args.resume, overwrite=plan.run_args.overwrite,
                  restart=plan.run_args.resume_fallback == "restart",
                  # a warm-up's checkpoint serves every member: its settings are the warm-up's, not one run's
                  identity=warmup.identity if warmup else plan.asked,
                  accept=lambda state, found: check_same_signal(state, allocator.signal_name,
                                                                allocator.signal_config, found)):
        trainer, callback = make_trainer(plan, loaded, adapted, run, stopper, warmup)
        run.stop_if_signalled(args)  # before training: the folder is as the last run left it
        loss_sum = train_or_load(trainer, callback, run, stopper, loaded.total_step)
        if warmup:
            return None  # stopped at tinit with its checkpoint; grid/warmup_run.py seeds the members from it
        results = evaluate_and_save(plan, loaded, adapted, trainer, callback, run)
        summary = summarise(plan, loaded, adapted, trainer, callback, results, loss_sum,
                            run.checkpoint, started)
        run.write_summary(summary)
        task = plan.task
        main = headline(task.name, summary, Path(plan.run_args.output_root) / task.name)
        logger.info(f"[run] {task.name}/{plan.run_args.signal}/{summary['seed']}: {main}, "
                    f"total rank {summary['total_rank']} (budget {summary['target_budget']}) -> {plan.run_dir}")
        return summary


@dataclasses.dataclass
class RunPlan:
    """What the arguments ask for, parsed and checked; nothing loaded or written yet."""

    run_args: object
    model_args: object
    data_args: object
    ada_args: object
    training_args: object
    task: Task
    asked: dict  # the run's identity (settings and fingerprint)
    run_dir: Path


@dataclasses.dataclass
class Loaded:
    """The base model and the data it trains on (on the planted task: the teacher's planted updates too)."""

    model: object
    tokenizer: object
    target_modules: list[str]
    modules_to_save: list[str]
    data: object
    train_set: object
    eval_sets: dict
    total_step: int
    planted_setup: object = None
    planted_record: dict | None = None
    planted_answer: object = None  # data/planted.PlantedAnswer: what the learned updates are measured against
    hidden_targets: object = None  # data/planted.HiddenStateTargets (--planted-targets hidden): a second loss term


@dataclasses.dataclass
class Adapted:
    """The AdaLoRA model with our allocator installed."""

    peft_model: object
    allocator: object
    params: dict


def plan_run(argv: list[str], warmup=None) -> RunPlan:
    """Parse the arguments and refuse bad input before anything is loaded or written."""
    settings = parse_settings(argv)
    run_args, model_args, data_args, ada_args, training_args = settings.parts()
    use_process_log_level(training_args)
    check_peft_version()
    task = resolve_task(run_args.task, data_args)
    # the one identity of this run (args.RunSettings.identity), as ablate and a shared warm-up compute it
    asked = settings.identity({split: digest for split, (_, digest) in task.custom_files.items()}
                              if task.custom_files else None)
    run_dir = warmup.folder if warmup else run_dir_for(run_args.output_root, task.name, run_args.signal,
                                                       training_args.seed, checked_variant(run_args, asked))
    if task.custom_files:
        check_task_spec(run_args.output_root, task)
    refuse_finished_run(run_dir, asked, run_args.overwrite)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir} exists but is not a folder; move it away or choose another --output-root")
    training_args.output_dir = str(run_dir)
    if getattr(training_args, "logging_dir", None) is not None and not settings.trainer_flag_given("logging_dir"):
        # transformers 4.x fills logging_dir (TensorBoard's folder) from output_dir when TrainingArguments is built,
        # before the run folder is known: point it into the run folder, named as transformers names it there.
        started = datetime.datetime.now().strftime("%b%d_%H-%M-%S")
        training_args.logging_dir = str(run_dir / "runs" / f"{started}_{socket.gethostname()}")
    if training_args.load_best_model_at_end:
        raise UsageError("--load-best-model-at-end is not supported: AdaLoRA checkpoints hold full-shape adapters "
                         "and the final rank pattern belongs to the last step; pick a checkpoint from metrics.jsonl "
                         "instead")
    return RunPlan(run_args, model_args, data_args, ada_args, training_args, task, asked, run_dir)


def load_model_and_data(plan: RunPlan) -> Loaded:
    """The base model, the planted teacher's updates (task planted) and the tokenized data; the schedule checked
    against the number of steps the data gives. Everything that can fail on bad input happens before anything is
    written."""
    task, data_args, ada_args, training_args = plan.task, plan.data_args, plan.ada_args, plan.training_args
    model_name, seed = plan.model_args.model, training_args.seed
    # The planted task's base model (a random model's weights, any model's new head) is the teacher's, so it is
    # drawn from --planted-seed: the task must not change with the training --seed.
    set_seed(data_args.planted_seed if task.planted else seed)
    model, tokenizer = load_model_and_tokenizer(model_name, task.labels)
    if task.planted:
        set_seed(seed)  # the adapters' initialisation and the data order follow --seed, as on every task
        without_dropout(model)  # before PEFT wraps it: the adapters' lora_dropout stays as set
    target_modules = detect_target_modules(model, plan.model_args.target_modules)
    planted_setup, planted_record, planted_answer, hidden_targets, build = None, None, None, None, {}
    if task.planted:
        planted_setup = planted_setup_from_args(data_args, ada_args, [short_module_name(n) for n in target_modules])
        planted_record, build["build"], build["build_key"], planted_answer, hidden_targets = prepare_planted_data(
            model, tokenizer, task, planted_setup, data_args, model_name, log=logger.info)
        if planted_setup.targets != "labels":  # distillation: every model's own loss is then MSE on the logits,
            model.config.problem_type = "regression"  # to which PEFT adds AdaLoRA's orthogonal regulariser as always
    data = load_tokenized(task, data_args, tokenizer, model_name, log=logger.info, **build)
    train_set = data[task.train_split]
    total_step = compute_total_step(len(train_set), training_args)
    check_schedule(ada_args.tinit, ada_args.tfinal, total_step)
    for warning in schedule_warnings(ada_args.tinit, ada_args.tfinal, ada_args.deltaT, total_step,
                                     training_args.get_warmup_steps(total_step), ada_args.init_r * len(target_modules),
                                     ada_args.target_r * len(target_modules)):
        logger.warning(f"[schedule] {warning}")
    return Loaded(model, tokenizer, target_modules, plan.model_args.modules_to_save or detect_head_modules(model),
                  data, train_set, {name: data[split] for name, split in task.eval_splits.items()}, total_step,
                  planted_setup, planted_record, planted_answer, hidden_targets)


def wrap_model(plan: RunPlan, loaded: Loaded, warmup=None) -> Adapted:
    """AdaLoRA around the target modules (PEFT's), on the training device, with our allocator for the signal."""
    task, data_args, training_args = plan.task, plan.data_args, plan.training_args
    peft_model = wrap_with_adalora(loaded.model, loaded.target_modules, loaded.modules_to_save, plan.ada_args,
                                   loaded.total_step)
    if task.planted:
        loaded.planted_record["train_head"] = data_args.planted_train_head
        if not data_args.planted_train_head:  # the teacher's head, unchanged: only ΔW differs
            freeze_head(peft_model)
    peft_model.to(training_args.device)  # first, so that the allocator's buffers live where the adapters train
    signal_config = signal_config_for(plan.ada_args, training_args.seed,
                                      loaded.planted_setup.spec if loaded.planted_setup else None)
    allocator = (warmup.install_allocator(peft_model, signal_config) if warmup
                 else install_allocator(peft_model, plan.run_args.signal, signal_config))
    params = count_parameters(peft_model)
    head = ("frozen (the teacher's head)" if task.planted and not data_args.planted_train_head
            else f"trained in full: {loaded.modules_to_save}")
    logger.info(f"[model] {plan.model_args.model}: {len(loaded.target_modules)} adapted modules, {head}; "
                f"trainable parameters {params['trainable']:,} of {params['total']:,}")
    if task.synthetic:
        logger.info("[data] task 'synthetic' is a SYNTHETIC keyword task for offline demos, not GLUE")
    return Adapted(peft_model, allocator, params)


def make_trainer(plan: RunPlan, loaded: Loaded, adapted: Adapted, run: RunFolder, stopper: StopOnSignal,
                 warmup=None) -> tuple[AdaLoraTrainer, AdaLoraCallback]:
    """The Trainer with our callbacks: the AdaLoRA update and logs, the stop signal, the lock check, the console
    lines."""
    task, args, is_main = plan.task, plan.training_args, run.is_main
    if is_main and task.custom_files:  # what the report and the figures read the custom task's metrics from
        write_task_spec(plan.run_args.output_root, task)
    callback = AdaLoraCallback(adapted.peft_model, adapted.allocator, plan.run_dir, write_files=is_main,
                               planted_answer=loaded.planted_answer)
    if run.checkpoint is not None:
        logger.info(f"[run] resuming {plan.run_dir} from {run.checkpoint.name}")
        callback.pending_resume = run.resume_state
    eval_sets = loaded.eval_sets
    trainer = AdaLoraTrainer(
        model=adapted.peft_model,
        args=args,
        train_dataset=loaded.train_set,
        eval_dataset=eval_sets[""] if "" in eval_sets else eval_sets,
        data_collator=DataCollatorWithPadding(loaded.tokenizer),
        compute_metrics=compute_metrics_for(task),
        callbacks=[callback, stopper, CheckLock(run), *(warmup.callbacks if warmup else [])],
        # completes each checkpoint the Trainer writes (full-shape adapters, allocator state, manifest)
        checkpoints=Checkpoints(adapted.peft_model, callback, plan.run_dir, run.resume_state),
        hidden_targets=loaded.hidden_targets.to(args.device) if loaded.hidden_targets else None,
    )
    callback.trainer = trainer
    # one readable line per log record (loss, lr, the total rank now, eval metrics) instead of the Trainer's dicts
    use_readable_console(trainer, lambda: sum(callback.ranks))
    return trainer, callback


def refuse_cpu_multiprocess_resume(args) -> None:
    """transformers 4.x resumes a multi-process run by loading the optimizer state onto each process's device,
    which on CPUs is "cpu:<rank>", a location torch cannot restore (fixed in transformers 5): refuse in one line
    instead of every process failing inside the Trainer."""
    if args.world_size > 1 and args.device.type == "cpu" and int(transformers.__version__.split(".")[0]) < 5:
        raise UsageError(f"resuming a run of {args.world_size} processes on CPUs fails in transformers "
                         f"{transformers.__version__} (it loads the optimizer state to an indexed CPU device); "
                         f"resume it with transformers >= 5.4 installed, or on GPUs")


def train_or_load(trainer: AdaLoraTrainer, callback: AdaLoraCallback, run: RunFolder, stopper: StopOnSignal,
                  total_step: int) -> float | None:
    """Train (from the start or the run's checkpoint); returns the training loss summed over every step of the run
    (None: resumed from a checkpoint that did not record it). A stop signal during training ends here with the
    checkpoint of the step it came in."""
    checkpoint = run.checkpoint
    if checkpoint is not None and checkpoint_step(checkpoint) >= total_step:
        # Resumed at the last step: nothing to train (the Trainer would take one step past max_steps)
        trainer.load_without_training(checkpoint)
        callback.on_train_begin(trainer.args, trainer.state, trainer.control)  # the allocator's state
        return trainer.checkpoints.loss.total()
    if checkpoint is not None:
        refuse_cpu_multiprocess_resume(trainer.args)
    with trainer.checkpoints.naming_write_errors():
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stopper.stopped_at is not None:
        step = stopper.stopped_at
        raise RunInterrupted(signal.Signals(stopper.received).name, step, f"checkpoint-{step}")
    return trainer.checkpoints.loss.total()


def evaluate_and_save(plan: RunPlan, loaded: Loaded, adapted: Adapted, trainer: AdaLoraTrainer,
                      callback: AdaLoraCallback, run: RunFolder) -> dict:
    """The final evaluation (and test predictions, and the adapter effect), then the pruned adapter; a stop signal
    between any two of these keeps the final step's checkpoint. Returns the metrics for the summary."""
    args, task = plan.training_args, plan.task

    def keep_final_step() -> tuple[int, str]:  # a signal after the last step: its checkpoint is worth keeping
        return trainer.state.global_step, trainer.checkpoints.write_last_step(trainer)

    run.stop_if_signalled(args, keep_final_step)
    if args.world_size > 1:
        check_ranks_agree(callback.mask_digests, plan.run_dir if run.is_main else None)
    eval_metrics = trainer.evaluate()
    run.stop_if_signalled(args, keep_final_step)
    test_metrics = trainer.predict(loaded.data["test"]).metrics if "test" in loaded.data else None  # --test-file
    run.stop_if_signalled(args, keep_final_step)
    effect = {}
    if plan.run_args.adapter_effect:  # do the adapters carry part of what was learned? (a void comparison if not)
        fields = metric_fields(task, main_only=True)
        without = accuracy_without_adapters(trainer, loaded.eval_sets, {a.eval_set: a.without_adapters_field
                                                                        for a in fields}, task.metrics[0])
        for a in fields:
            effect[a.without_adapters_field] = without[a.without_adapters_field]
            effect[a.adapter_effect_field] = eval_metrics[a.metric] - without[a.without_adapters_field]
    # The last moment to stop: writing the final adapter and the summary takes seconds, and PEFT's pruned save
    # rewrites the adapter config, after which no training checkpoint should be written.
    run.stop_if_signalled(args, keep_final_step)
    if run.is_main:  # the pruned adapter for inference, apart from the (full-shape) training checkpoints
        run.check_lock()
        adapted.peft_model.save_pretrained(plan.run_dir / FINAL_ADAPTER)
        loaded.tokenizer.save_pretrained(plan.run_dir / FINAL_ADAPTER)
    return {"eval_metrics": eval_metrics, "test_metrics": test_metrics, "effect": effect}


def summarise(plan: RunPlan, loaded: Loaded, adapted: Adapted, trainer: AdaLoraTrainer, callback: AdaLoraCallback,
              results: dict, loss_sum: float | None, checkpoint: Path | None, started: float) -> dict:
    """final_summary.json: what the run was, what it reached and where its rank went."""
    run_args, task, allocator = plan.run_args, plan.task, adapted.allocator
    eval_metrics, test_metrics = results["eval_metrics"], results["test_metrics"]
    summary = {
        "task": task.name,
        "synthetic": task.synthetic,
        "signal": run_args.signal,
        "seed": plan.training_args.seed,
        "variant": run_args.variant,
        "fingerprint": plan.asked["fingerprint"],
        "settings": plan.asked["settings"],
        "model": plan.model_args.model,
        **accuracy_fields(task, eval_metrics),
        **results["effect"],
        "eval_metrics": eval_metrics,
        **({"test_metrics": test_metrics} if test_metrics is not None else {}),
        # the Trainer's train_loss covers only the steps of its own process; this is the whole run's
        "train_loss": None if loss_sum is None else loss_sum / max(trainer.state.global_step, 1),
        "total_step": loaded.total_step,
        "total_rank": sum(callback.ranks),
        "target_budget": allocator.target_bgt,
        "initial_budget": allocator.init_bgt,
        **callback.budget_check(),  # budget_check_passed, and what it checked
        "allocations": callback.allocations,
        "nonfinite_steps": int(allocator.nonfinite_steps),
        "scaler_skipped_steps": callback.scaler_skipped_steps,
        "final_ranks": dict(zip(allocator.layout.names, callback.ranks)),
        "resumed_from": checkpoint.name if checkpoint else None,
        "shared_warmup": read_shared_warmup(plan.run_dir) if checkpoint else None,
        "trainable_parameters": adapted.params["trainable"],
        "total_parameters": adapted.params["total"],
        "target_modules": loaded.target_modules,
        "module_shapes": {name: [din, dout] for name, din, dout in
                          zip(allocator.layout.names, allocator.layout.in_features, allocator.layout.out_features)},
        "modules_to_save": loaded.modules_to_save,
        "config": run_config(run_args, plan.model_args, plan.data_args, plan.ada_args, plan.training_args),
        "versions": library_versions(),
        "wall_time_s": round(time.time() - started, 2),
    }
    if loaded.planted_setup is not None:  # how much of the known answer the allocation found
        spec = loaded.planted_setup.spec
        summary.update(planted_recovery(summary["final_ranks"], spec))
        summary.update(recovery_fields(adapted.peft_model, loaded.planted_answer, spec))
        summary["planted"] = {**loaded.planted_record, "rows": {s: len(d) for s, d in loaded.data.items()},
                              "rows_digest": rows_digest(loaded.data)}
    return summary


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


