"""Distillation on the planted task: the student's loss is the MSE on the teacher's logits plus AdaLoRA's own
orthogonal regulariser, exactly as PEFT adds it to any task's loss. The student is the model train.py builds
(plan_run, load_model_and_data, wrap_model), so what train.py sets up for --planted-targets is what is tested."""

import pytest
import torch
from transformers import set_seed

from adalora_ablation import train
from adalora_ablation.adalora.model import load_model_and_tokenizer
from adalora_ablation.data import planted
from adalora_ablation.data.tasks import TASKS
from adalora_ablation.train import load_model_and_data, plan_run, wrap_model


def orthogonal_regulariser(peft_model) -> torch.Tensor:
    """PEFT 0.18.1's formula, written out: mean over lora_A/lora_B of ||P Pᵀ - I||_F (A) or ||Pᵀ P - I||_F (B)."""
    terms = []
    for name, p in peft_model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0]), ord="fro"))
    return torch.stack(terms).mean()


def planted_student(tmp_path, monkeypatch, targets, *flags):
    """train.py's AdaLoRA student of the planted task (nothing trained) and a batch of token ids with the teacher's
    targets of that kind. The teacher's rows are left out (test_planted.py builds and checks them; here they would
    only cost time): load_model_and_data runs with an empty row set, all else as in a run."""
    monkeypatch.setattr(train, "prepare_planted_data", lambda *args, **kwargs: ({}, None, None, {}, None))
    monkeypatch.setattr(train, "load_tokenized", lambda task, *args, **kwargs: {
        split: [{}] * 64 for split in (task.train_split, *task.eval_splits.values())})
    plan = plan_run(["--task", "planted", "--signal", "oracle", "--output-root", str(tmp_path), "--max-steps", "24",
                     "--tinit", "4", "--tfinal", "6", "--deltaT", "2", "--planted-targets", targets,
                     "--report-to", "none", "--warmup-steps", "0", *flags])
    loaded = load_model_and_data(plan)
    model = wrap_model(plan, loaded).peft_model
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 100, (4, 12), generator=generator)
    logits = torch.randn(4, model.base_model.model.num_labels, generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    return model, batch, logits.argmax(-1) if targets == "labels" else logits


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


# -- --planted-targets hidden: the teacher's final hidden states on every real token ---------------------------------
def padded_batch(vocab=100, rows=4, tokens=12, seed=0):
    """Token ids with the last tokens of some rows padding (attention mask 0)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (rows, tokens), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[1, 8:], mask[3, 5:] = 0, 0
    return {"input_ids": input_ids, "attention_mask": mask}


def mean_square_on_real_tokens(a, b, mask) -> float:
    """Written out: the mean of (a - b)² over the real tokens' hidden dimensions, token by token."""
    total, count = 0.0, 0
    for row in range(a.shape[0]):
        for token in range(a.shape[1]):
            if mask[row, token]:
                total += float(((a[row, token] - b[row, token]).double() ** 2).sum())
                count += a.shape[-1]
    return total / count


def test_masked_mean_square_leaves_padding_out():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 5, 3, generator=generator), torch.randn(2, 5, 3, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    expected = mean_square_on_real_tokens(a, b, mask)
    assert float(planted.masked_mean_square(a - b, mask)) == pytest.approx(expected, rel=1e-6)
    a[0, 3:] += 1000.0  # whatever the padding's states, they do not count
    assert float(planted.masked_mean_square(a - b, mask)) == pytest.approx(expected, rel=1e-6)


def tiny_teacher_of(student_base_seed=0):
    """tiny-deberta as the planted task loads it (from --planted-seed 0), with one weight moved: a teacher."""
    set_seed(student_base_seed)
    teacher, _ = load_model_and_tokenizer("tiny-deberta", TASKS["planted"].labels)
    with torch.no_grad():
        weight = teacher.deberta.encoder.layer[1].attention.output.dense.weight
        weight += 0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(3))
    return teacher.eval()


def test_the_hidden_state_term_is_divided_by_the_base_models_own_distance(tmp_path):
    set_seed(0)
    base, _ = load_model_and_tokenizer("tiny-deberta", TASKS["planted"].labels)
    teacher, batch = tiny_teacher_of(), padded_batch()
    scale = planted.hidden_scale(base, teacher, [batch])
    with torch.no_grad():
        base_states = planted.final_states(base.eval(), batch)
        expected = mean_square_on_real_tokens(base_states, planted.final_states(teacher, batch),
                                              batch["attention_mask"])
    assert scale == pytest.approx(expected, rel=1e-6) and scale > 0
    # so the term starts at 1 for a student that is still the base model, and is 0 at the teacher
    targets = planted.HiddenStateTargets(teacher, scale)
    assert float(targets.loss(base_states, batch)) == pytest.approx(1.0, rel=1e-5)
    with torch.no_grad():
        assert float(targets.loss(planted.final_states(teacher, batch), batch)) == 0.0


def test_training_adds_the_distance_to_the_teachers_final_states_and_evaluation_does_not(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    from adalora_ablation.run.resume import AdaLoraTrainer, Checkpoints

    model, _, _ = planted_student(tmp_path, monkeypatch, "hidden")
    teacher, batch = tiny_teacher_of(), padded_batch()
    teacher_logits = torch.randn(4, model.base_model.model.num_labels, generator=torch.Generator().manual_seed(2))
    targets = planted.HiddenStateTargets(teacher, scale=0.25)
    trainer = AdaLoraTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "t"), report_to="none"),
                             checkpoints=Checkpoints(model, None, tmp_path, None), hidden_targets=targets)
    inputs = {**batch, "labels": teacher_logits}
    model.train()
    loss = trainer.compute_loss(model, inputs)
    out = model(**inputs, output_hidden_states=True)
    with torch.no_grad():
        wanted = planted.final_states(teacher, batch)
    hidden = mean_square_on_real_tokens(out.hidden_states[-1].detach(), wanted, batch["attention_mask"]) / 0.25
    assert hidden > 0.01  # the term is really there
    assert float(loss) == pytest.approx(float(out.loss) + hidden, rel=1e-5)
    assert loss.requires_grad  # and it trains the adapters
    # the term is part of the model's output loss, which the Trainer then scales as any model's loss
    again, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
    assert float(outputs["loss"]) == float(outputs.loss) == pytest.approx(float(loss), rel=1e-6)
    model.eval()  # evaluation: the model's own loss, so eval_loss means the same whatever the targets
    assert float(trainer.compute_loss(model, inputs)) == pytest.approx(float(model(**inputs).loss), rel=1e-6)


def test_the_planted_student_computes_without_dropout_but_its_adapters_keep_theirs(tmp_path, monkeypatch,
                                                                                    minilm_path):
    """MiniLM's config has dropout 0.1 (tiny-deberta's 0): the teacher computes without it, so the student does."""
    model, _, _ = planted_student(tmp_path, monkeypatch, "hidden", "--model", minilm_path, "--lora-dropout", "0.2")
    dropouts = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    adapters = {name: p for name, p in dropouts.items() if "lora_dropout" in name}
    assert len(adapters) == 36 and set(adapters.values()) == {0.2}
    assert len(dropouts) > len(adapters) and {p for n, p in dropouts.items() if n not in adapters} == {0.0}
    peft_config = model.peft_config["default"]
    assert peft_config.lora_dropout == 0.2
