"""Distillation on the planted task: the student's loss is the MSE on the teacher's logits plus AdaLoRA's own
orthogonal regulariser, exactly as PEFT adds it to any task's loss. The student is the model train.py builds
(plan_run, load_model_and_data, wrap_model), so what train.py sets up for --planted-targets is what is tested."""

import torch

from adalora_ablation import train
from adalora_ablation.train import load_model_and_data, plan_run, wrap_model


def orthogonal_regulariser(peft_model) -> torch.Tensor:
    """PEFT 0.18.1's formula, written out: mean over lora_A/lora_B of ||P Pᵀ - I||_F (A) or ||Pᵀ P - I||_F (B)."""
    terms = []
    for name, p in peft_model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0]), ord="fro"))
    return torch.stack(terms).mean()


def planted_student(tmp_path, monkeypatch, targets):
    """train.py's AdaLoRA student of the planted task (nothing trained) and a batch of token ids with the teacher's
    targets of that kind. The teacher's rows are left out (test_planted.py builds and checks them; here they would
    only cost time): load_model_and_data runs with an empty row set, all else as in a run."""
    monkeypatch.setattr(train, "prepare_planted_data", lambda *args, **kwargs: ({}, None, None, {}))
    monkeypatch.setattr(train, "load_tokenized", lambda task, *args, **kwargs: {
        split: [{}] * 64 for split in (task.train_split, *task.eval_splits.values())})
    plan = plan_run(["--task", "planted", "--signal", "oracle", "--output-root", str(tmp_path), "--max-steps", "24",
                     "--tinit", "4", "--tfinal", "6", "--deltaT", "2", "--planted-targets", targets,
                     "--report-to", "none", "--warmup-steps", "0"])
    loaded = load_model_and_data(plan)
    model = wrap_model(plan, loaded).peft_model
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 100, (4, 12), generator=generator)
    logits = torch.randn(4, model.base_model.model.num_labels, generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    return model, batch, logits if targets == "logits" else logits.argmax(-1)


def test_the_loss_on_teacher_logits_is_their_mse_plus_peft_s_orthogonal_regulariser(tmp_path, monkeypatch):
    model, batch, teacher_logits = planted_student(tmp_path, monkeypatch, "logits")
    out = model(**batch, labels=teacher_logits)
    mse = torch.mean((out.logits - teacher_logits) ** 2)
    weight = model.peft_config["default"].orth_reg_weight
    assert torch.allclose(out.loss, mse + weight * orthogonal_regulariser(model), atol=1e-6)
    assert weight > 0 and orthogonal_regulariser(model) > 0  # the regulariser is really part of it


def test_the_teachers_classes_are_learned_by_cross_entropy(tmp_path, monkeypatch):
    model, batch, classes = planted_student(tmp_path, monkeypatch, "labels")
    out = model(**batch, labels=classes)
    cross_entropy = torch.nn.functional.cross_entropy(out.logits, classes)
    weight = model.peft_config["default"].orth_reg_weight
    assert torch.allclose(out.loss, cross_entropy + weight * orthogonal_regulariser(model), atol=1e-6)
