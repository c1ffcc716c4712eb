"""The private Trainer members that train.py and run/resume.py rely on are there, as expected, on the installed
transformers, and pyproject allows only the transformers versions the tests ran with."""

import tomllib
from pathlib import Path

import pytest
import torch
import transformers
from packaging.requirements import Requirement
from transformers import Trainer, TrainerCallback, TrainingArguments

from adalora_ablation.errors import UsageError
from adalora_ablation.run.resume import (
    TESTED_TRANSFORMERS, TRAINER_ATTRIBUTES, AdaLoraTrainer, changed_trainer_internals,
)


def test_pyproject_allows_the_tested_transformers_only_and_it_is_installed():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    wanted = [r for r in map(Requirement, pyproject["project"]["dependencies"]) if r.name == "transformers"]
    assert [str(r) for r in wanted] == [str(Requirement(TESTED_TRANSFORMERS))]
    assert wanted[0].specifier.contains(transformers.__version__), (
        f"transformers {transformers.__version__} is outside {TESTED_TRANSFORMERS}: run the whole suite on it, then "
        f"move the bound (run/resume.py TESTED_TRANSFORMERS and pyproject.toml)")


def test_the_private_trainer_methods_are_there_with_their_parameters(monkeypatch):
    assert changed_trainer_internals() == []

    def other(self, trial, metrics):  # as a newer transformers might change it
        return ""

    monkeypatch.setattr(Trainer, "_get_output_dir", other)
    monkeypatch.delattr(Trainer, "_load_from_checkpoint")
    assert changed_trainer_internals() == ["Trainer._get_output_dir takes (trial, metrics), not (trial)",
                                           "Trainer._load_from_checkpoint is gone"]
    with pytest.raises(UsageError, match=rf"transformers {transformers.__version__} changed Trainer internals .*"
                                         rf"install a tested version: pip install '{TESTED_TRANSFORMERS}'"):
        AdaLoraTrainer(adalora_callback=None)  # refused before anything is built


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, labels=None):
        return {"loss": ((self.w - x) ** 2).mean()}


def test_the_running_loss_attributes_sum_every_step_as_the_checkpoint_reads_them(tmp_path):
    """resume.py saves the loss summed over every step so far as _total_loss_scalar + _tr_loss: two toy steps."""
    seen = []

    class Read(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            pending, before = (getattr(trainer, name) for name in TRAINER_ATTRIBUTES)
            assert isinstance(pending, torch.Tensor) and isinstance(before, float)
            seen.append(before + pending.item())  # (the tensor is drained in place at the next log)

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, logging_steps=1,
                             learning_rate=0.1, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=Toy(), args=args, train_dataset=[{"x": torch.tensor([1.0])}] * 4, callbacks=[Read()])
    output = trainer.train()
    assert len(seen) == 2 and 0 < seen[0] < seen[1] == pytest.approx(output.training_loss * 2)
