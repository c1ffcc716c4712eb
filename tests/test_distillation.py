"""Distillation on the planted task: the student's loss is the MSE on the teacher's logits plus AdaLoRA's own
orthogonal regulariser, exactly as PEFT adds it to any task's loss."""

import torch

from conftest import tiny_adalora


def orthogonal_regulariser(peft_model) -> torch.Tensor:
    """PEFT 0.18.1's formula, written out: mean over lora_A/lora_B of ||P Pᵀ - I||_F (A) or ||Pᵀ P - I||_F (B)."""
    terms = []
    for name, p in peft_model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0]), ord="fro"))
    return torch.stack(terms).mean()


def test_the_loss_on_teacher_logits_is_their_mse_plus_peft_s_orthogonal_regulariser():
    model = tiny_adalora()
    model.base_model.model.config.problem_type = "regression"  # what train.py sets for --planted-targets logits
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 100, (4, 12), generator=generator)
    teacher_logits = torch.randn(4, model.base_model.model.num_labels, generator=generator)
    out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=teacher_logits)
    mse = torch.mean((out.logits - teacher_logits) ** 2)
    weight = model.peft_config["default"].orth_reg_weight
    assert torch.allclose(out.loss, mse + weight * orthogonal_regulariser(model), atol=1e-6)
    assert weight > 0 and orthogonal_regulariser(model) > 0  # the regulariser is really part of it
