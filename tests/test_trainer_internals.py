"""The tool uses the Trainer through its public API only, so that it runs on every transformers version pyproject
admits: no import from the Trainer's internal modules, no private member of the Trainer read, called or overridden
anywhere in src/. Checked on the source (an AST walk), and the checker is shown to find each kind of use."""

import ast
import tomllib
from pathlib import Path

import torch
import transformers
from packaging.requirements import Requirement
from transformers import Trainer, TrainerCallback, TrainingArguments

from adalora_ablation.run.resume import TrainLoss

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "adalora_ablation"
# transformers' modules behind the Trainer: their names are not part of the public API (top-level names are)
INTERNAL_MODULES = ("transformers.trainer", "transformers.training_args", "transformers.integrations")


def trainer_private_names() -> set[str]:
    """Every private name of the installed Trainer: its methods and class attributes, and the attributes it sets
    on itself (``self._x = ...`` anywhere in transformers/trainer.py)."""
    names = {n for n in dir(Trainer) if n.startswith("_") and not n.startswith("__")}
    tree = ast.parse(Path(transformers.trainer.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            names.add(node.attr)
    return names


def _is_trainer_subclass(node: ast.ClassDef) -> bool:
    return any((isinstance(b, ast.Name) and b.id == "Trainer") or (isinstance(b, ast.Attribute) and b.attr == "Trainer")
               for b in node.bases)


def private_trainer_use(source: str, private: set[str]) -> list[str]:
    """Where ``source`` imports from the Trainer's internal modules, overrides a private Trainer method, or reads,
    calls or sets a private Trainer member (any ``x._name`` whose name is one of the Trainer's: the tool's own
    private names are not the Trainer's)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(INTERNAL_MODULES):
            found.append(f"line {node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.startswith(INTERNAL_MODULES)]
        elif isinstance(node, ast.ClassDef) and _is_trainer_subclass(node):
            found += [f"line {f.lineno}: overrides Trainer.{f.name}" for f in node.body
                      if isinstance(f, ast.FunctionDef) and f.name.startswith("_") and not f.name.startswith("__")]
        elif isinstance(node, ast.Attribute) and node.attr in private:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr"):
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and name.value in private:
                found.append(f"line {node.lineno}: {node.func.id}(..., {name.value!r})")
    return sorted(found, key=lambda line: int(line.split(":")[0].split()[1]))  # in source order


def test_src_uses_no_private_trainer_member_and_no_internal_trainer_module():
    private = trainer_private_names()
    assert {"_save_checkpoint", "_load_from_checkpoint", "_total_loss_scalar"} <= private  # it reads the Trainer
    used = {str(p.relative_to(ROOT)): found for p in sorted(SRC.rglob("*.py"))
            if (found := private_trainer_use(p.read_text(encoding="utf-8"), private))}
    assert used == {}


def test_the_check_finds_each_kind_of_private_use():
    private = trainer_private_names()
    source = '''
from transformers.trainer_utils import rotate_checkpoints
from transformers.trainer_pt_utils import nested_gather
import transformers.trainer
from transformers import Trainer, TrainerCallback


class Ours(Trainer):
    def _save_checkpoint(self, model, trial):
        return super()._save_checkpoint(model, trial)

    def training_step(self, *args):
        return self._memory_tracker


def summary(trainer, callback):
    callback._previous = 1  # the tool's own private name: not the Trainer's
    return trainer._total_loss_scalar + getattr(trainer, "_globalstep_last_logged")
'''
    assert private_trainer_use(source, private) == [
        "line 2: from transformers.trainer_utils import", "line 3: from transformers.trainer_pt_utils import",
        "line 4: import transformers.trainer", "line 9: overrides Trainer._save_checkpoint",
        "line 10: ._save_checkpoint", "line 13: ._memory_tracker", "line 18: ._total_loss_scalar",
        "line 18: getattr(..., '_globalstep_last_logged')"]


def test_pyproject_admits_the_installed_transformers_and_4_57_but_not_5_0_to_5_3():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (wanted,) = [r for r in map(Requirement, pyproject["project"]["dependencies"]) if r.name == "transformers"]
    assert wanted.specifier.contains(transformers.__version__)
    admitted = [v for v in ("4.56.2", "4.57.0", "4.57.6", "5.0.0", "5.2.1", "5.3.0", "5.4.0", "5.17.1", "5.25.0",
                            "5.26.0") if wanted.specifier.contains(v)]
    assert admitted == ["4.57.0", "4.57.6", "5.4.0", "5.17.1", "5.25.0"]


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, labels=None):
        return {"loss": ((self.w - x) ** 2).mean()}


def test_the_tools_own_loss_record_sums_as_the_trainer_does(tmp_path):
    """TrainLoss, fed each micro-batch's loss through the public training_step, gives the Trainer's own train_loss
    bit for bit: logged every 3 steps, 7 steps of 2 micro-batches, so the last steps are summed at the end."""
    record = TrainLoss()

    class Recording(Trainer):
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            record.add(loss, self.args, self.state)
            return loss

    class Log(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            record.start(args, state)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in logs:
                record.log(args, state)

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=7, per_device_train_batch_size=2, logging_steps=3,
                             gradient_accumulation_steps=2, learning_rate=0.1, report_to="none", use_cpu=True,
                             save_strategy="no", disable_tqdm=True)
    rows = [{"x": torch.tensor([float(i % 5) / 3])} for i in range(40)]
    output = Recording(model=Toy(), args=args, train_dataset=rows, callbacks=[Log()]).train()
    record.finish()
    assert record.total() / 7 == output.training_loss and record.logged > 0
