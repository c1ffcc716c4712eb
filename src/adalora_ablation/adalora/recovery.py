"""The planted task's answer beyond ranks: how much of each planted update the student learned.

**Data recovery** (the main measure): for a planted module with planted update ΔW_p, learned update ΔW_l and X its
inputs in the teacher on the validation rows (every real token's input vector, a row of X),

    data recovery = max(0, 1 - ||(ΔW_l - ΔW_p)·Xᵀ||_F² / ||ΔW_p·Xᵀ||_F²)

is how much of the planted update's effect on the inputs the task shows the learned update reproduces: 1 when the
learned update acts on those inputs as the planted one does, 0 when it does no better than no update at all (or
worse: clipped). A part of either update that the inputs do not excite changes neither norm. With E[x·xᵀ] the
inputs' mean square, ||D·Xᵀ||_F² = tokens x trace(D·E[x·xᵀ]·Dᵀ), so only that in x in matrix is kept.
``planted_data_recovery`` is its planted-rank-weighted mean over the planted modules.

**Subspace recovery** (weight space, kept beside it):

``planted_recall`` counts rank in the planted modules; a module can hold its planted rank and learn directions that
have nothing to do with the planted U and V. Here, for a planted module with ΔW_p of planted rank r and the
student's learned update ΔW_l, U_l and V_l are the left and right singular vectors of ΔW_l for its r largest
singular values (fewer where ΔW_l has a lower numerical rank), and

    recovery = ||U_l U_lᵀ ΔW_p V_l V_lᵀ||_F² / ||ΔW_p||_F²  in [0, 1]

is the share of the planted update's energy in the learned update's r strongest directions: 1 when the learned
update spans the planted row and column spaces, 0 when either is orthogonal to them, k/r when it holds k of r
equal-σ planted directions. ``planted_subspace`` is its planted-rank-weighted mean over the planted modules, as
``planted_recall`` is rank-weighted. It counts a planted direction the same whatever the inputs do with it.
"""

from __future__ import annotations

import torch
from peft.tuners.adalora.layer import AdaLoraLayer

from ..data.planted import PlantedAnswer
from ..module_names import short_module_name

RANK_TOLERANCE = 1e-6  # singular values <= this x the largest one do not count as directions of ΔW_l


def learned_factors(peft_model, names=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(left, right) per adapted module (or only those in ``names``), float64 on the CPU, with the learned update
    ΔW_l = left @ right, out x in like nn.Linear.weight: left = lora_B, right = (lora_A * lora_E) * scaling /
    (ranknum + 1e-5). That is PEFT 0.18.1's ``SVDLinear.get_delta_weight`` without its ``fan_in_fan_out``
    transpose (which lays ΔW out as a Conv1D weight, in x out). Masked triplets have E = 0, so they add nothing."""
    adapter = peft_model.base_model.trainable_adapter_name
    factors = {}
    for module_name, module in peft_model.named_modules():
        if not isinstance(module, AdaLoraLayer) or adapter not in module.lora_A:
            continue
        name = short_module_name(module_name)
        if names is not None and name not in names:
            continue
        with torch.no_grad():
            a, e, b = (p[adapter].detach().to("cpu", torch.float64) for p in
                       (module.lora_A, module.lora_E, module.lora_B))
            ranknum = module.ranknum[adapter].detach().to("cpu", torch.float64)
            factors[name] = (b, (a * e) * module.scaling[adapter] / (ranknum + 1e-5))
    return factors


def learned_updates(peft_model, names=None) -> dict[str, torch.Tensor]:
    """ΔW_l (out x in, float64 on the CPU) per adapted module, or only those in ``names``."""
    return {name: left @ right for name, (left, right) in learned_factors(peft_model, names).items()}


def top_directions(left: torch.Tensor, right: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal U (out x k) and V (in x k): the left and right singular vectors of left @ right for its k
    largest singular values, k = ``rank`` or the numerical rank if lower (σ > RANK_TOLERANCE x σ_max; a zero
    update has none). Computed from the thin factors (a QR of each, then the SVD of the small core), so a
    3072 x 768 module with init_r triplets costs what an init_r x init_r matrix does."""
    q_left, r_left = torch.linalg.qr(left.to(torch.float64))
    q_right, r_right = torch.linalg.qr(right.to(torch.float64).T)
    u, sigma, vh = torch.linalg.svd(r_left @ r_right.T, full_matrices=False)
    k = 0 if sigma.numel() == 0 else min(rank, int((sigma > RANK_TOLERANCE * sigma[0]).sum()))
    return q_left @ u[:, :k], q_right @ vh[:k].T


def subspace_recovery(planted: torch.Tensor, learned, rank: int) -> float:
    """The share of the planted update's energy (``planted``: ΔW_p, out x in, of planted rank ``rank``) that lies
    in the learned update's ``rank`` strongest directions. ``learned``: ΔW_l itself (out x in) or its thin factors
    (left, right) with ΔW_l = left @ right. NaN when ΔW_l is not finite (the run's logs write it as null)."""
    planted = planted.to("cpu", torch.float64)
    energy = torch.linalg.matrix_norm(planted) ** 2
    if energy == 0:
        raise ValueError("the planted update is zero: the share of it that was recovered is undefined")
    left, right = learned if isinstance(learned, tuple) else (learned, torch.eye(learned.shape[1]))
    if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
        return float("nan")
    u, v = top_directions(left.to("cpu"), right.to("cpu"), rank)
    # U, V have orthonormal columns, so ||U Uᵀ P V Vᵀ||_F = ||Uᵀ P V||_F: no out x in projector is built.
    captured = torch.linalg.matrix_norm(u.T @ planted @ v) ** 2
    return float(min(max(captured / energy, 0.0), 1.0))  # rounding may step a hair outside [0, 1]


def planted_subspace(by_module: dict[str, float], spec: dict[str, int]) -> float:
    """The run's number: Σ_m r_m·recovery_m / Σ_m r_m over the planted modules (spec: module -> planted rank)."""
    return sum(spec[name] * by_module[name] for name in spec) / sum(spec.values())


def data_recovery(planted: torch.Tensor, learned, mean_square: torch.Tensor) -> float:
    """max(0, 1 - trace(E·M·Eᵀ) / trace(P·M·Pᵀ)), E = ΔW_l - ΔW_p, P = ΔW_p (out x in), M = E[x·xᵀ] of the module's
    inputs (in x in): the share of the planted update's effect on those inputs that the learned update reproduces.
    ``learned``: ΔW_l or its thin factors (left, right). NaN when ΔW_l is not finite; a ValueError when the inputs
    do not excite the planted update at all (nothing to recover)."""
    planted = planted.to("cpu", torch.float64)
    mean_square = mean_square.to("cpu", torch.float64)
    effect = float(((planted @ mean_square) * planted).sum())
    if not effect > 0:
        raise ValueError("the inputs do not excite the planted update: the share of its effect that was recovered "
                         "is undefined")
    if isinstance(learned, tuple):
        learned = learned[0].to("cpu", torch.float64) @ learned[1].to("cpu", torch.float64)
    if not torch.isfinite(learned).all():
        return float("nan")
    error = learned.to("cpu", torch.float64) - planted
    missed = float(((error @ mean_square) * error).sum())
    return max(0.0, 1.0 - missed / effect)


def rank_weighted(by_module: dict[str, float], spec: dict[str, int]) -> float:
    """Σ_m r_m·value_m / Σ_m r_m over the planted modules (spec: module -> planted rank)."""
    return sum(spec[name] * by_module[name] for name in spec) / sum(spec.values())


def recovery_fields(peft_model, answer: PlantedAnswer, spec: dict[str, int]) -> dict:
    """``planted_data_recovery`` and ``planted_subspace`` (run level, rank-weighted) and their values per planted
    module, for the adapters as they are now (final_summary.json and every rank_pattern.jsonl record of a planted
    run)."""
    factors = learned_factors(peft_model, set(spec))
    data = {name: data_recovery(answer.deltas[name], factors[name], answer.eval_inputs[name].mean_square())
            for name in spec}
    subspace = {name: subspace_recovery(answer.deltas[name], factors[name], spec[name]) for name in spec}
    return {"planted_data_recovery": rank_weighted(data, spec), "planted_data_recovery_by_module": data,
            "planted_subspace": planted_subspace(subspace, spec), "planted_subspace_by_module": subspace}
