"""The planted task on the data: updates planted where the inputs look (construction v2), recovery measured on the
module inputs (data recovery), the construction in a run's identity, and a suite that pools only like with like."""

import copy

import numpy as np
import pytest
import torch
from transformers import set_seed

from adalora_ablation.adalora.model import detect_target_modules, load_model_and_tokenizer
from adalora_ablation.adalora.recovery import data_recovery, learned_updates, rank_weighted, recovery_fields
from adalora_ablation.data import planted
from adalora_ablation.data.planted_spec import PRINCIPAL_SHARE, construction_rule
from adalora_ablation.data.tasks import TASKS
from adalora_ablation.errors import UsageError
from adalora_ablation.module_names import short_module_name
from adalora_ablation.run.folder import accuracies, write_summary
from conftest import tiny_adalora
from test_recovery import randomise_adapters

TASK = TASKS["planted"]
MAIN = accuracies("planted")[0].field


def excited(rank_of_inputs=3, in_f=10, out_f=7, tokens=200, seed=0):
    """Inputs X (tokens x in) that span only ``rank_of_inputs`` directions, their mean square, and an orthonormal
    basis of the directions they take (in x k) and of the ones they never take (in x in-k)."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(in_f, in_f, generator=generator, dtype=torch.float64)).Q
    taken, never = basis[:, :rank_of_inputs], basis[:, rank_of_inputs:]
    x = torch.randn(tokens, rank_of_inputs, generator=generator, dtype=torch.float64) @ taken.T
    return x, x.T @ x / tokens, taken, never, generator


# -- data recovery: crafted cases ------------------------------------------------------------------------------------
def test_learned_equal_to_planted_recovers_all_and_what_the_inputs_never_excite_counts_zero():
    x, mean_square, taken, never, g = excited()
    planted_update = torch.randn(7, 3, generator=g, dtype=torch.float64) @ taken.T  # along the inputs
    assert data_recovery(planted_update, planted_update, mean_square) == pytest.approx(1.0, abs=1e-12)
    # the same update as thin factors, as the adapters hold it
    left, right = torch.randn(7, 3, generator=g, dtype=torch.float64), taken.T
    assert data_recovery(left @ right, (left, right), mean_square) == pytest.approx(1.0, abs=1e-12)
    # anything added along directions the inputs never take changes nothing
    unseen = 5 * torch.randn(7, 7, generator=g, dtype=torch.float64) @ never.T
    assert data_recovery(planted_update, planted_update + unseen, mean_square) == pytest.approx(1.0, abs=1e-12)
    # a learned update only along those directions does no better than no update: 0
    assert data_recovery(planted_update, unseen, mean_square) == pytest.approx(0.0, abs=1e-12)
    assert data_recovery(planted_update, torch.zeros_like(planted_update), mean_square) == 0.0
    # half of it: 1 - 1/4; twice or minus it: as far off as no update or further, clipped at 0
    assert data_recovery(planted_update, 0.5 * planted_update, mean_square) == pytest.approx(0.75, abs=1e-12)
    assert data_recovery(planted_update, 2 * planted_update, mean_square) == pytest.approx(0.0, abs=1e-12)
    assert data_recovery(planted_update, -planted_update, mean_square) == 0.0
    # a planted update the inputs do not excite at all has no effect to recover
    with pytest.raises(ValueError, match="do not excite"):
        data_recovery(unseen, planted_update, mean_square)
    assert np.isnan(data_recovery(planted_update, planted_update * float("nan"), mean_square))


def test_the_part_of_a_planted_update_the_inputs_do_not_excite_is_not_counted():
    """Planted = a part along the inputs + a part they never take: learning the first part alone is all of it,
    whatever the second part's size (weight-space subspace recovery would count it)."""
    _, mean_square, taken, never, g = excited()
    seen = torch.randn(7, 3, generator=g, dtype=torch.float64) @ taken.T
    for size in (0.1, 10.0):
        unseen = size * torch.randn(7, 7, generator=g, dtype=torch.float64) @ never.T
        assert data_recovery(seen + unseen, seen, mean_square) == pytest.approx(1.0, abs=1e-12)


def test_rank_weighted_mean():
    assert rank_weighted({"a": 1.0, "b": 0.0}, {"a": 4, "b": 2}) == pytest.approx(4 / 6)
    assert rank_weighted({"a": 0.3}, {"a": 6}) == pytest.approx(0.3)


# -- against an independent computation: the real module's outputs on real inputs ----------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    set_seed(0)
    model, tokenizer = load_model_and_tokenizer("tiny-deberta", TASK.labels)
    return model, tokenizer, [short_module_name(n) for n in detect_target_modules(model)]


def test_data_recovery_is_what_the_module_outputs_say_on_the_real_tokens(tiny_model):
    """input_moments + data_recovery against the definition: the module's outputs with W + ΔW_l and with W + ΔW_p
    on every real token (padding cut off by hand, one row at a time)."""
    model, tokenizer, names = tiny_model
    pairs = [("the cat sat on the mat today", "a dog"), ("one", "two three four five six seven eight"),
             ("red green", "blue")] * 5
    batch = planted._encode(tokenizer, TASK, pairs, 24)
    assert (batch["attention_mask"] == 0).any()  # some padding, which must not count
    name = "layer.1.attention.output.dense"
    moments = planted.input_moments(model, [name], [batch])[name]
    module = planted._adapted(model)[name]
    captured = []
    handle = module.register_forward_hook(lambda m, args, out: captured.append(args[0].detach().double()))
    for i in range(len(pairs)):  # one row at a time, no padding at all
        one = planted._encode(tokenizer, TASK, pairs[i:i + 1], 24)
        planted._logits(model, one)
    handle.remove()
    x = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured])
    assert moments.tokens == x.shape[0] == int(batch["attention_mask"].sum())
    weight = module.weight.detach().double()
    generator = torch.Generator().manual_seed(1)
    planted_update = torch.randn(weight.shape[0], 3, generator=generator, dtype=torch.float64) @ \
        torch.randn(3, weight.shape[1], generator=generator, dtype=torch.float64)
    values = []
    for noise in (0.0, 0.3, 1.0, 3.0):
        learned = planted_update + noise * torch.randn(weight.shape, generator=generator, dtype=torch.float64)
        with_planted = torch.nn.functional.linear(x, weight + planted_update)
        with_learned = torch.nn.functional.linear(x, weight + learned)
        without = torch.nn.functional.linear(x, weight)
        expected = max(0.0, 1 - float(((with_learned - with_planted) ** 2).sum())
                       / float(((with_planted - without) ** 2).sum()))
        ours = data_recovery(planted_update, learned, moments.mean_square())
        assert ours == pytest.approx(expected, rel=1e-6, abs=1e-9), noise
        values.append(ours)
    assert values[0] == pytest.approx(1.0) and 0.0 < values[1] < 1.0 and values[-1] == 0.0  # spans the range


def test_recovery_fields_of_a_peft_model_whose_adapters_hold_the_planted_updates():
    pm = tiny_adalora()
    randomise_adapters(pm)
    updates = learned_updates(pm)
    a, b = sorted(updates)[:2]
    spec = {a: 3, b: 2}
    in_a, in_b = updates[a].shape[1], updates[b].shape[1]
    # module a: planted = its learned update (1.0); module b: inputs that never excite its learned update (0.0)
    generator = torch.Generator().manual_seed(3)
    x_a = torch.randn(50, in_a, generator=generator, dtype=torch.float64)
    _, _, vt = torch.linalg.svd(updates[b])
    rank_b = int(torch.linalg.matrix_rank(updates[b]))
    x_b = torch.randn(50, in_b - rank_b, generator=generator, dtype=torch.float64) @ vt[rank_b:]
    planted_b = torch.randn(updates[b].shape[0], in_b, generator=generator, dtype=torch.float64)
    moments = {n: planted.InputMoments(x.T @ x, x.sum(0), x.shape[0]) for n, x in ((a, x_a), (b, x_b))}
    answer = planted.PlantedAnswer({a: updates[a].float(), b: planted_b.float()}, moments)
    fields = recovery_fields(pm, answer, spec)
    assert fields["planted_data_recovery_by_module"][a] == pytest.approx(1.0, abs=1e-5)
    assert fields["planted_data_recovery_by_module"][b] == pytest.approx(0.0, abs=1e-6)
    assert fields["planted_data_recovery"] == pytest.approx(3 / 5, abs=1e-5)
    assert set(fields["planted_subspace_by_module"]) == set(spec)  # weight space, kept beside it


# -- construction v2: where the inputs look ----------------------------------------------------------------------
def test_planted_directions_lie_in_the_principal_subspace_of_the_inputs(tiny_model):
    model, tokenizer, names = tiny_model
    model = copy.deepcopy(model)
    spec = {"layer.0.attention.self.query_proj": 2, "layer.1.intermediate.dense": 3, "layer.1.output.dense": 1}
    setup = planted.PlantedSetup(spec=spec, seed=4, strength="auto", train_rows=64, eval_rows=32,
                                 classes=len(TASK.labels))
    teacher, pairs, record, updates = planted.prepare_teacher(model, tokenizer, TASK, setup, None, 24,
                                                              log=lambda _: None)
    assert record["construction"] == construction_rule() and "v2" in record["construction"]
    calibration = [planted._encode(tokenizer, TASK, chunk, 24)  # as prepare_teacher batches them
                   for chunk in planted._chunks(pairs[:planted.CALIBRATION_ROWS])]
    inputs = planted.input_moments(model, sorted(spec), calibration)
    for name, update in updates.items():
        # the principal subspace, from numpy: the leading eigenvectors holding PRINCIPAL_SHARE of the variance
        values, vectors = np.linalg.eigh(inputs[name].covariance().numpy())
        values, vectors = values[::-1].clip(0), vectors[:, ::-1]
        d = max(spec[name], int(np.searchsorted(np.cumsum(values) / values.sum(), PRINCIPAL_SHARE)) + 1)
        assert record["principal_dims"][name] == d < update.shape[1]  # a part of the input space only
        outside = update.double().numpy() @ (np.eye(update.shape[1]) - vectors[:, :d] @ vectors[:, :d].T)
        assert np.linalg.norm(outside) < 1e-4 * np.linalg.norm(update.double().numpy()), name
        # so the inputs excite every planted direction at least as much as the weakest principal one: ||ΔW·Xᵀ||² /
        # (tokens ||ΔW||²) >= the d-th eigenvalue of the covariance (the mean adds to it, never takes away)
        mean_square = inputs[name].mean_square()
        update = update.double()
        excitation = float(((update @ mean_square) * update).sum()) / float(torch.linalg.matrix_norm(update) ** 2)
        assert excitation >= values[d - 1] * (1 - 1e-6), name


def test_eval_inputs_are_the_teachers_on_the_validation_rows(tiny_model):
    from types import SimpleNamespace

    model, tokenizer, names = tiny_model
    model = copy.deepcopy(model)
    spec = {"layer.0.attention.self.value_proj": 2, "layer.1.attention.output.dense": 2}
    setup = planted.PlantedSetup(spec=spec, seed=5, strength="auto", train_rows=48, eval_rows=24,
                                 classes=len(TASK.labels))
    args = SimpleNamespace(data_dir=None, max_seq_length=24)
    record, build, key, answer, hidden = planted.prepare_planted_data(model, tokenizer, TASK, setup, args,
                                                                      "tiny-deberta", log=lambda _: None)
    assert hidden is None and "hidden_scale" not in record  # targets logits: no hidden-state term
    assert key["construction"] == construction_rule()  # cached rows of another construction are not reused
    assert set(answer.deltas) == set(answer.eval_inputs) == set(spec)
    rows = build()["validation"]
    assert answer.eval_inputs["layer.0.attention.self.value_proj"].tokens == sum(sum(m) for m in
                                                                                 rows["attention_mask"])
    # the layer-1 module's inputs in the teacher differ from the base model's: the layer-0 update acts upstream
    pairs = planted.candidate_pairs(setup, None)[0][:setup.eval_rows]
    base = planted.input_moments(model, ["layer.1.attention.output.dense"],
                                 [planted._encode(tokenizer, TASK, pairs, 24)])["layer.1.attention.output.dense"]
    assert not torch.allclose(base.second, answer.eval_inputs["layer.1.attention.output.dense"].second)


def test_a_cached_calibration_gives_the_same_teacher_record_and_head(tiny_model, tmp_path):
    model, tokenizer, names = tiny_model
    spec = {"layer.0.attention.self.value_proj": 2, "layer.1.attention.output.dense": 3}
    setup = planted.PlantedSetup(spec=spec, seed=5, strength="auto", train_rows=48, eval_rows=24,
                                 classes=len(TASK.labels), targets="hidden")

    def prepare(setup, log):
        base = copy.deepcopy(model)  # the head is centred and scaled in place
        teacher, pairs, record, updates = planted.prepare_teacher(base, tokenizer, TASK, setup, None, 24,
                                                                  log=log.append, cache_root=tmp_path,
                                                                  model_id="tiny-deberta")
        batch = planted._encode(tokenizer, TASK, pairs[:32], 24)
        return record, updates, planted._logits(teacher, batch), planted._logits(base, batch)

    first_log, second_log = [], []
    first, second = prepare(setup, first_log), prepare(setup, second_log)
    assert not any("from cache" in line for line in first_log)
    assert any("calibration loaded from cache" in line for line in second_log)
    assert first[0] == second[0] and first[0]["hidden_scale"] > 0  # the record: strength, agreement, shift, scales
    assert all(torch.equal(first[1][n], second[1][n]) for n in spec)  # the updates
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])  # the teacher's and base's logits
    # another setting is another calibration: a fixed strength is calibrated (not read) and gives other updates
    other_log = []
    other = prepare(planted.PlantedSetup(**{**setup.record(), "strength": 0.5}), other_log)
    assert not any("from cache" in line for line in other_log) and other[0]["strength_used"] == 0.5
    # a damaged cache file is calibrated again, to the same result
    for path in (tmp_path / "planted_teacher").glob("*.pt"):
        path.write_bytes(b"not a torch file")
    damaged_log = []
    again = prepare(setup, damaged_log)
    assert any("could not read the cached calibration" in line for line in damaged_log)
    assert again[0] == first[0] and torch.equal(again[2], first[2])


# -- the construction is part of a run's identity ------------------------------------------------------------------
def test_a_run_whose_student_kept_its_dropout_is_another_run():
    from adalora_ablation.args import parse_train_args, run_config
    from adalora_ablation.data.planted_spec import student_rule
    from adalora_ablation.run.identity import difference, identity, summary_settings

    asked = identity(run_config(*parse_train_args(["--task", "planted"])))["settings"]
    assert asked["planted_student"] == student_rule() and student_rule().startswith("student v2")
    old = {k: v for k, v in asked.items() if k != "planted_student"}  # made before the student lost its dropout
    assert summary_settings({"settings": old})["planted_student"] == "student v1"
    assert difference(summary_settings({"settings": old}), asked).startswith("planted_student: student v1 in the")


def test_the_minilm_preset_distils_hidden_states_on_a_real_encoder():
    from adalora_ablation.args import parse_train_args

    run, model, data, ada, training = parse_train_args(["--task", "planted", "--preset", "minilm"])
    assert model.model == "sentence-transformers/all-MiniLM-L6-v2" and data.planted_targets == "hidden"
    assert data.planted_strength == "auto" and data.planted_max_strength == 0.5
    assert (training.max_steps, ada.tinit, ada.tfinal, ada.init_r, ada.target_r) == (400, 50, 200, 8, 1)
    # a flag still wins over the preset (offline: the model's folder)
    assert parse_train_args(["--task", "planted", "--preset", "minilm", "--model", "/m"])[1].model == "/m"


def test_a_run_made_with_the_old_construction_is_another_run(tmp_path):
    from adalora_ablation.args import parse_train_args, run_config
    from adalora_ablation.run.identity import difference, identity, summary_settings
    from adalora_ablation.run.life import refuse_finished_run

    asked = identity(run_config(*parse_train_args(["--task", "planted", "--planted-draw", "1"])))
    assert asked["settings"]["planted_construction"] == construction_rule()
    assert "planted_construction" not in identity(run_config(*parse_train_args(["--task", "rte"])))["settings"]
    # a run made before the construction was recorded: its settings lack the field, and it is read as v1
    old = {k: v for k, v in asked["settings"].items() if k != "planted_construction"}
    assert summary_settings({"settings": old})["planted_construction"] == "construction v1"
    line = difference(summary_settings({"settings": old}), asked["settings"])
    assert line.startswith("planted_construction: construction v1 in the folder, construction v2")
    write_summary(tmp_path, {"settings": old, MAIN: 0.5})
    with pytest.raises(UsageError, match="holds a finished run with other settings \\(planted_construction"):
        refuse_finished_run(tmp_path, asked, overwrite=False)
    # the same run recorded with the field is this run (only "already holds a finished run")
    write_summary(tmp_path, {"settings": asked["settings"], MAIN: 0.5})
    with pytest.raises(UsageError, match="already holds a finished run; pass --overwrite"):
        refuse_finished_run(tmp_path, asked, overwrite=False)


# -- a suite pools only like with like -------------------------------------------------------------------------------
def suite_run(root, signal, draw, seed, value, data=None, **settings):
    run_dir = root / "planted" / signal / f"planted_draw={draw}" / str(seed)
    run_dir.mkdir(parents=True)
    base = {"task": "planted", "signal": signal, "seed": seed, "planted_draw": draw, "max_steps": 300,
            "learning_rate": 0.01}
    summary = {MAIN: value, "total_rank": 4, "target_budget": 4, "budget_check_passed": True,
               "final_ranks": {"layer.0.a": 4}, "planted_recall": 1.0, "planted": {"spec": {"layer.0.a": 2}},
               "settings": {**base, **settings}}
    if data is not None:
        summary["planted_data_recovery"] = data
    write_summary(run_dir, summary)


def test_a_suite_refuses_runs_whose_settings_differ_beyond_draw_signal_and_seed(tmp_path):
    from adalora_ablation.analysis.suite import build_suites
    from adalora_ablation.analysis.variants import report_main

    for draw in (0, 1):
        for seed in (1, 2):
            suite_run(tmp_path, "oracle", draw, seed, 0.9, data=0.8 - 0.1 * draw)
            suite_run(tmp_path, "uniform", draw, seed, 0.7, data=0.5 - 0.1 * draw)
    (suite,) = build_suites(tmp_path)  # draws, signals and seeds differ: one suite
    rows = {row["signal"]: row for row in suite["signals"]}
    assert rows["uniform"]["planted_data_recovery"]["mean"] == pytest.approx(0.45)
    assert rows["uniform"]["regret"]["planted_data_recovery"]["mean"] == pytest.approx(0.3)
    from adalora_ablation.analysis.suite import suite_markdown
    markdown = suite_markdown(suite)
    assert "| draw | uniform | oracle |" in markdown and "| 1 | 0.4000 | 0.7000 |" in markdown  # per spec
    # one draw rerun with more steps (as --overwrite --max-steps 400 leaves it): refused, naming it
    import shutil
    for signal in ("oracle", "uniform"):
        for seed in (1, 2):
            shutil.rmtree(tmp_path / "planted" / signal / "planted_draw=1" / str(seed))
            suite_run(tmp_path, signal, 1, seed, 0.95, max_steps=400)
    with pytest.raises(UsageError, match="max_steps: 300 in .*planted_draw=0.*, 400 in .*planted_draw=1") as error:
        build_suites(tmp_path)
    assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="a planted suite pools only runs that differ in the draw"):
        report_main(["--task", "planted", "--output-root", str(tmp_path)])


@pytest.mark.slow
def test_a_drawn_spec_builds_on_minilm_and_glue_sentences(minilm_path, glue_head, monkeypatch):
    """The real pretrained encoder and real sentence pairs: a drawn spec builds, its updates lie where the inputs
    look (the teacher moves away from the base model at a strength of the ladder) and its rows are labelled.
    One spec, calibrated on 128 rows, not 512: every forward pass of MiniLM over the calibration rows costs seconds
    on 2 cores and "auto" makes about 7; the draws themselves are tested on every spec of a tiny-deberta suite, and
    the calibration on 512 rows by tiny-deberta's specs."""
    from adalora_ablation.data.planted_spec import draw_planted_spec

    monkeypatch.setattr(planted, "CALIBRATION_ROWS", 128)
    set_seed(0)
    model, tokenizer = load_model_and_tokenizer(minilm_path, TASK.labels)
    names = [short_module_name(n) for n in detect_target_modules(model)]
    assert len(names) == 36
    spec = draw_planted_spec(names, 8, 1, 0, 0)
    setup = planted.PlantedSetup(spec=spec, seed=0, strength="auto", train_rows=32, eval_rows=16,
                                 classes=len(TASK.labels))
    logged = []
    teacher, pairs, record, updates = planted.prepare_teacher(copy.deepcopy(model), tokenizer, TASK, setup,
                                                              str(glue_head), 32, log=logged.append)
    assert any("GLUE mnli" in line for line in logged) and any("of 128 calibration inputs" in line for line in logged)
    rows = planted.label_rows(teacher, tokenizer, TASK, setup, pairs, 32)
    assert len(rows["train"]) == 32 and set(updates) == set(spec)
    assert record["base_agreement"] <= planted.BASE_AGREEMENT
    assert all(spec[n] <= record["principal_dims"][n] < updates[n].shape[1] for n in spec)
