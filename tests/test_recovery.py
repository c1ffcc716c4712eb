"""The planted task's subspace recovery: crafted cases with known answers, an independent numpy/scipy computation,
and the learned update read from real PEFT AdaLoRA models (no training)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from peft import AdaLoraConfig, get_peft_model
from peft.tuners.adalora.layer import AdaLoraLayer
from transformers import AutoModelForCausalLM, GPT2Config

from adalora_ablation.adalora.recovery import (
    learned_factors, learned_updates, planted_subspace, recovery_fields, subspace_recovery,
)
from adalora_ablation.data.planted import InputMoments, PlantedAnswer
from adalora_ablation.module_names import short_module_name
from conftest import tiny_adalora


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64)).Q


def planted_update(out_f=20, in_f=12, rank=4, seed=0, sigma=None):
    """U·diag(σ)·Vᵀ with orthonormal U (out x 8), V (in x 8), of which the first ``rank`` columns are planted; the
    rest are orthogonal directions for crafted learned updates."""
    u, v = orthonormal(out_f, 8, seed), orthonormal(in_f, 8, seed + 1)
    sigma = torch.full((rank,), 3.0, dtype=torch.float64) if sigma is None else torch.as_tensor(sigma).double()
    return u[:, :rank] @ torch.diag(sigma) @ v[:, :rank].T, u, v


# -- crafted cases -------------------------------------------------------------------------------------------------
def test_learned_equal_to_planted_scaled_or_negated_recovers_all_of_it():
    planted, u, v = planted_update(rank=4)
    for learned in (planted, 0.01 * planted, -planted, -7 * planted):
        assert subspace_recovery(planted, learned, 4) == pytest.approx(1.0, abs=1e-12)
    # the same update as thin factors (left @ right), as the adapters hold it
    assert subspace_recovery(planted, (u[:, :4], 3 * v[:, :4].T), 4) == pytest.approx(1.0, abs=1e-12)
    # other singular values, the same directions: still all of it
    assert subspace_recovery(planted, u[:, :4] @ torch.diag(torch.tensor([5.0, 1, 0.5, 2]).double()) @ v[:, :4].T,
                             4) == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_column_or_row_space_recovers_nothing():
    planted, u, v = planted_update(rank=3)
    other_columns = u[:, 3:6] @ v[:, :3].T  # the planted row space, orthogonal column space
    other_rows = u[:, :3] @ v[:, 3:6].T  # the planted column space, orthogonal row space
    both = u[:, 4:7] @ v[:, 4:7].T
    for learned in (other_columns, other_rows, both):
        assert subspace_recovery(planted, learned, 3) == pytest.approx(0.0, abs=1e-12)


def test_k_of_r_equal_sigma_directions_recover_k_over_r():
    r = 4
    planted, u, v = planted_update(rank=r)
    for k in range(r + 1):
        # k planted directions, plus r - k orthogonal ones as strong, so that all r are among the top r
        learned = u[:, :k] @ v[:, :k].T + u[:, r:2 * r - k] @ v[:, r:2 * r - k].T
        assert subspace_recovery(planted, learned, r) == pytest.approx(k / r, abs=1e-12), k


def test_only_the_r_strongest_learned_directions_count():
    planted, u, v = planted_update(rank=2)
    # the two planted directions, but one direction unrelated to them is stronger than one of them: of the top 2,
    # one is planted -> 1/2
    learned = u[:, :2] @ torch.diag(torch.tensor([2.0, 1.0]).double()) @ v[:, :2].T + 5 * u[:, 5:6] @ v[:, 5:6].T
    assert subspace_recovery(planted, learned, 2) == pytest.approx(0.5, abs=1e-12)
    # with the unrelated direction weaker than both planted ones, it is the third and does not count
    learned = u[:, :2] @ v[:, :2].T + 0.5 * u[:, 5:6] @ v[:, 5:6].T
    assert subspace_recovery(planted, learned, 2) == pytest.approx(1.0, abs=1e-12)


def test_directions_below_the_numerical_rank_do_not_count():
    planted, u, v = planted_update(rank=2)
    # one planted direction, and the other at 1e-8 of it: numerically rank 1, so only the first counts
    learned = u[:, :1] @ v[:, :1].T + 1e-8 * u[:, 1:2] @ v[:, 1:2].T
    assert subspace_recovery(planted, learned, 2) == pytest.approx(0.5, abs=1e-12)
    learned = u[:, :1] @ v[:, :1].T + 1e-3 * u[:, 1:2] @ v[:, 1:2].T  # well above the tolerance: both count
    assert subspace_recovery(planted, learned, 2) == pytest.approx(1.0, abs=1e-12)


def test_zero_learned_update_recovers_nothing_and_a_zero_planted_update_is_refused():
    planted, u, _ = planted_update(rank=3)
    assert subspace_recovery(planted, torch.zeros_like(planted), 3) == 0.0
    assert subspace_recovery(planted, (torch.zeros(20, 6), torch.zeros(6, 12)), 3) == 0.0
    with pytest.raises(ValueError, match="planted update is zero"):
        subspace_recovery(torch.zeros_like(planted), planted, 3)
    assert math.isnan(subspace_recovery(planted, planted * float("nan"), 3))  # written as null in the logs


def test_run_level_number_is_the_planted_rank_weighted_mean():
    assert planted_subspace({"a": 1.0, "b": 0.0}, {"a": 4, "b": 2}) == pytest.approx(4 / 6)
    assert planted_subspace({"a": 0.5, "b": 0.25}, {"a": 1, "b": 3}) == pytest.approx((0.5 + 0.75) / 4)
    assert planted_subspace({"a": 0.3}, {"a": 6}) == pytest.approx(0.3)


# -- an independent computation ------------------------------------------------------------------------------------
def numpy_recovery(planted: np.ndarray, learned: np.ndarray, rank: int) -> float:
    """The definition written out with explicit projectors: L_k = the best rank-k approximation of the learned
    update (k = the rank, or its numerical rank if lower); L_k L_k⁺ projects onto its column space, L_k⁺ L_k onto
    its row space."""
    u, s, vt = np.linalg.svd(learned)
    k = min(rank, int(np.sum(s > 1e-6 * s[0]))) if s[0] > 0 else 0
    best = (u[:, :k] * s[:k]) @ vt[:k]
    columns, rows = best @ np.linalg.pinv(best), np.linalg.pinv(best) @ best
    return float(np.linalg.norm(columns @ planted @ rows) ** 2 / np.linalg.norm(planted) ** 2)


def test_rank_1_modules_match_the_principal_angles_of_scipy():
    rng = np.random.default_rng(0)
    for trial in range(20):
        out_f, in_f = rng.integers(3, 30, size=2)
        u, v = rng.standard_normal((out_f, 1)), rng.standard_normal((in_f, 1))
        planted = 2.5 * u @ v.T
        if trial % 2:  # a rank-1 learned update a·bᵀ: its directions are a and b
            a, b = u + 0.7 * rng.standard_normal(u.shape), v + 0.7 * rng.standard_normal(v.shape)
            learned = a @ b.T
        else:  # a full-rank learned update: its strongest directions from numpy's SVD
            learned = planted + 1.5 * rng.standard_normal((out_f, in_f))
            left, _, right_t = np.linalg.svd(learned)
            a, b = left[:, :1], right_t[:1].T
        theta_u = scipy.linalg.subspace_angles(u, a)[0]
        theta_v = scipy.linalg.subspace_angles(v, b)[0]
        expected = math.cos(theta_u) ** 2 * math.cos(theta_v) ** 2
        ours = subspace_recovery(torch.from_numpy(planted), torch.from_numpy(learned), 1)
        assert ours == pytest.approx(expected, abs=1e-10), trial
        assert 0.0 < ours < 1.0  # not a crafted case: some of it, not all


def test_random_modules_match_an_explicit_projector_computation():
    rng = np.random.default_rng(1)
    values = []
    for trial in range(30):
        out_f, in_f = rng.integers(4, 40, size=2)
        rank = int(rng.integers(1, min(out_f, in_f, 6) + 1))
        init_r = int(rng.integers(1, 9))
        planted = rng.standard_normal((out_f, rank)) @ rng.standard_normal((rank, in_f))
        # as the adapters hold it: B (out x init_r) @ (A * E) (init_r x in), some triplets masked (E = 0)
        left = rng.standard_normal((out_f, init_r))
        right = rng.standard_normal((init_r, in_f)) * (rng.random((init_r, 1)) > 0.3)
        if trial % 3 == 0:  # near the planted update: values close to 1, not only random ones near 0
            left, right = np.hstack([left * 0.2, planted]), np.vstack([right, np.eye(in_f)])
        learned = left @ right
        expected = numpy_recovery(planted, learned, rank)
        dense = subspace_recovery(torch.from_numpy(planted), torch.from_numpy(learned), rank)
        factored = subspace_recovery(torch.from_numpy(planted), (torch.from_numpy(left), torch.from_numpy(right)),
                                     rank)
        assert dense == pytest.approx(expected, abs=1e-9) and factored == pytest.approx(expected, abs=1e-9), trial
        values.append(expected)
    assert min(values) < 0.5 < max(values) < 1.0  # the cases span the range


# -- the learned update of a real PEFT AdaLoRA model ---------------------------------------------------------------
def randomise_adapters(pm, seed=0):
    """Non-zero E (PEFT starts it at 0), a few triplets masked, one module's ranknum changed: every part of the
    formula matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, layer in enumerate(m for m in pm.modules() if isinstance(m, AdaLoraLayer)):
            for part in (layer.lora_A, layer.lora_B, layer.lora_E):
                part["default"].copy_(torch.randn(part["default"].shape, generator=generator))
            layer.lora_E["default"][::3] = 0.0  # masked, as the allocator leaves them
            if i == 0:
                layer.ranknum["default"].fill_(4.0)


def test_learned_update_is_peft_s_delta_weight_and_the_merged_weight_change():
    pm = tiny_adalora()
    randomise_adapters(pm)
    updates = learned_updates(pm)
    layers = {short_module_name(n): m for n, m in pm.named_modules() if isinstance(m, AdaLoraLayer)}
    assert set(updates) == set(layers) and len(updates) == 12
    for name, layer in layers.items():
        x = torch.randn(5, layer.in_features)
        delta = layer.get_delta_weight("default").detach()
        assert updates[name].shape == layer.get_base_layer().weight.shape  # out x in, like nn.Linear.weight
        torch.testing.assert_close(updates[name], delta.double(), rtol=1e-6, atol=1e-6)
        # the adapter's contribution to the module's output is x @ ΔWᵀ
        with torch.no_grad():
            added = layer(x) - layer.get_base_layer()(x)
        torch.testing.assert_close(added.double(), x.double() @ updates[name].T, rtol=1e-5, atol=1e-5)
    before = {n: m.get_base_layer().weight.detach().clone() for n, m in layers.items()}
    pm.base_model.merge_adapter()
    try:
        for name, layer in layers.items():
            merged = layer.get_base_layer().weight.detach() - before[name]
            torch.testing.assert_close(merged.double(), updates[name], rtol=1e-5, atol=1e-5)
    finally:
        pm.base_model.unmerge_adapter()
    # only the requested modules; factors multiply to the same update
    some = sorted(layers)[:2]
    factors = learned_factors(pm, set(some))
    assert sorted(factors) == some
    for name, (left, right) in factors.items():
        torch.testing.assert_close(left @ right, updates[name])


def test_a_conv1d_module_s_update_is_out_x_in_too():
    """GPT-2's Conv1D stores its weight in x out and PEFT adapts it with fan_in_fan_out: ΔW is still out x in."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=16,
                                                        vocab_size=50))
    pm = get_peft_model(model, AdaLoraConfig(target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, init_r=4,
                                             target_r=2, total_step=20, tinit=2, tfinal=2))
    randomise_adapters(pm)
    updates = learned_updates(pm)
    assert set(updates) == {"h.0.attn.c_attn", "h.0.mlp.c_fc"}
    for name, layer in ((short_module_name(n), m) for n, m in pm.named_modules() if isinstance(m, AdaLoraLayer)):
        x = torch.randn(3, layer.in_features)
        assert updates[name].shape == layer.get_base_layer().weight.T.shape  # (out, in)
        torch.testing.assert_close(updates[name], layer.get_delta_weight("default").detach().T.double(),
                                   rtol=1e-6, atol=1e-6)
        with torch.no_grad():
            added = layer(x) - layer.get_base_layer()(x)
        torch.testing.assert_close(added.double(), x.double() @ updates[name].T, rtol=1e-5, atol=1e-5)


def test_fields_of_a_model_whose_adapters_hold_the_planted_updates():
    pm = tiny_adalora()
    randomise_adapters(pm)
    updates = learned_updates(pm)
    a, b, c = sorted(updates)[:3]
    rank_a = int(torch.linalg.matrix_rank(updates[a]))  # init_r less the masked triplets
    spec = {a: rank_a, b: 4, c: 1}
    # planted: a = the learned update itself (1.0), b = one orthogonal to its row space (0.0), c = a direction of
    # its own (its share, checked against the numpy computation)
    _, _, vt = torch.linalg.svd(updates[b])
    rank_b = int(torch.linalg.matrix_rank(updates[b]))
    orthogonal_rows = torch.randn(updates[b].shape[0], 4, dtype=torch.float64) @ vt[rank_b:rank_b + 4]
    planted_c = torch.outer(torch.randn(updates[c].shape[0]), torch.randn(updates[c].shape[1])).double()
    deltas = {a: updates[a].float(), b: orthogonal_rows.float(), c: planted_c.float()}
    x = {n: torch.randn(40, updates[n].shape[1], dtype=torch.float64) for n in spec}  # any inputs: weight space
    fields = recovery_fields(pm, PlantedAnswer(deltas, {n: InputMoments(v.T @ v, v.sum(0), 40) for n, v in x.items()}),
                             spec)
    by_module = fields["planted_subspace_by_module"]
    assert set(by_module) == set(spec)
    assert by_module[a] == pytest.approx(1.0, abs=1e-6) and by_module[b] == pytest.approx(0.0, abs=1e-6)
    assert by_module[c] == pytest.approx(numpy_recovery(planted_c.numpy(), updates[c].numpy(), 1), abs=1e-6)
    assert fields["planted_subspace"] == pytest.approx((rank_a + by_module[c]) / (rank_a + 5), abs=1e-6)
