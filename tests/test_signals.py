"""Each signal's formula against numbers computed independently here, on small tensors."""

import math
import sys
from pathlib import Path

import pytest
import torch
from scipy.stats import rankdata

from adalora_ablation.signals.layout import LoraLayout
from adalora_ablation.signals import SIGNALS, SignalConfig, build_signal
from adalora_ablation.signals.base import normalize


class TwoModules(torch.nn.Module):
    """Two fake adapted modules with PEFT's parameter naming (A: r x in, E: r x 1, B: out x r)."""

    def __init__(self, r=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        for name, (din, dout) in {"q": (4, 5), "ffn": (6, 2)}.items():
            mod = torch.nn.Module()
            mod.lora_A = torch.nn.ParameterDict({"default": torch.nn.Parameter(torch.randn(r, din, generator=g))})
            mod.lora_E = torch.nn.ParameterDict({"default": torch.nn.Parameter(torch.randn(r, 1, generator=g))})
            mod.lora_B = torch.nn.ParameterDict({"default": torch.nn.Parameter(torch.randn(dout, r, generator=g))})
            self.add_module(name, mod)

    def set_grads(self, seed):
        g = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            p.grad = torch.randn(p.shape, generator=g)


def step_all(signal, model, layout, seeds):
    for s in seeds:
        model.set_grads(s)
        signal.update(layout.flat_weights(), layout.flat_grads(), torch.tensor(True))


def per_module(model):
    """(A, E, B) parameters per module in the layout's (sorted) order: ffn before q."""
    return [(m.lora_A["default"], m.lora_E["default"], m.lora_B["default"]) for m in (model.ffn, model.q)]


def test_layout_orders_modules_like_peft_and_shortens_names():
    layout = LoraLayout(TwoModules())
    assert layout.keys == ["ffn.%s.default", "q.%s.default"]
    assert layout.num_triplets == 6 and layout.r == 3


def test_triplet_part_sums_are_a_row_e_entry_and_b_column_per_triplet():
    layout = LoraLayout(TwoModules())
    flat = torch.arange(layout.numel, dtype=torch.float32)
    parts = layout.triplet_part_sums(flat)
    expected = torch.stack([torch.stack([a.sum(1), e.view(-1), b.sum(0)]) for a, e, b in layout.split(flat)], dim=1)
    assert torch.equal(parts, expected)
    assert torch.equal(layout.triplet_sums(flat), parts[1] + parts[0] + parts[2])


@pytest.mark.parametrize("decay", [0.9, 0.5])
def test_importance_only_is_ema_of_abs_w_times_grad_combined_like_peft(decay):
    model, seeds = TwoModules(), [1, 2, 3]
    layout = LoraLayout(model)
    signal = build_signal("importance_only", layout, SignalConfig(ema_decay=decay))
    step_all(signal, model, layout, seeds)
    expected = []
    for a, e, b in per_module(model):
        ema = {k: torch.zeros_like(p) for k, p in (("a", a), ("e", e), ("b", b))}
        for s in seeds:
            model.set_grads(s)  # the same gradients as the signal saw at that step
            for k, p in (("a", a), ("e", e), ("b", b)):
                ema[k] = decay * ema[k] + (1 - decay) * (p * p.grad).abs()
        expected.append(ema["e"].view(-1) + ema["a"].mean(1) + ema["b"].mean(0))
    torch.testing.assert_close(signal.scores(), torch.stack(expected))


def test_sensitivity_only_is_importance_only_at_peft_beta1():
    model, seeds = TwoModules(), [1, 2, 3]
    layout = LoraLayout(model)
    scores = {}
    for name, config in {"sensitivity_only": SignalConfig(beta1=0.85, ema_decay=0.9),
                         "importance_only@0.85": SignalConfig(ema_decay=0.85),
                         "importance_only@0.9": SignalConfig(ema_decay=0.9)}.items():
        signal = build_signal(name.split("@")[0], layout, config)
        step_all(signal, model, layout, seeds)
        scores[name] = signal.scores()
    assert torch.equal(scores["sensitivity_only"], scores["importance_only@0.85"])
    assert not torch.allclose(scores["sensitivity_only"], scores["importance_only@0.9"])


def test_plasticity_is_ema_of_triplet_gradient_norm():
    model, seeds, decay = TwoModules(), [4, 5], 0.9
    layout = LoraLayout(model)
    signal = build_signal("plasticity_only", layout, SignalConfig(ema_decay=decay))
    step_all(signal, model, layout, seeds)
    expected = []
    for a, e, b in per_module(model):
        ema = torch.zeros(3)
        for s in seeds:
            model.set_grads(s)
            norm = torch.sqrt(e.grad.view(-1) ** 2 + (a.grad ** 2).sum(1) + (b.grad ** 2).sum(0))
            ema = decay * ema + (1 - decay) * norm
        expected.append(ema)
    torch.testing.assert_close(signal.scores(), torch.stack(expected))


def test_baseline_is_peft_sensitivity_times_uncertainty():
    model, seeds, beta = TwoModules(), [6, 7, 8], 0.85
    layout = LoraLayout(model)
    signal = build_signal("baseline_adalora", layout, SignalConfig(beta1=beta, beta2=beta))
    step_all(signal, model, layout, seeds)
    expected = []
    for a, e, b in per_module(model):
        score = {}
        for k, p in (("a", a), ("e", e), ("b", b)):
            ipt_avg, unc_avg = torch.zeros_like(p), torch.zeros_like(p)
            for s in seeds:
                model.set_grads(s)
                ipt = (p * p.grad).abs()
                ipt_avg = beta * ipt_avg + (1 - beta) * ipt
                unc_avg = beta * unc_avg + (1 - beta) * (ipt - ipt_avg).abs()
            score[k] = ipt_avg * unc_avg
        expected.append(score["e"].view(-1) + score["a"].mean(1) + score["b"].mean(0))
    torch.testing.assert_close(signal.scores(), torch.stack(expected))


@pytest.mark.parametrize("method", ["zscore", "minmax", "rank"])
def test_combo_is_normalized_importance_plus_lambda_normalized_plasticity(method):
    model, seeds, lam = TwoModules(), [9, 10], 0.7
    layout = LoraLayout(model)
    config = SignalConfig(ema_decay=0.8, combo_lambda=lam, normalize_method=method)
    combo, imp, pla = (build_signal(n, layout, config) for n in ("combo", "importance_only", "plasticity_only"))
    for sig in (combo, imp, pla):
        step_all(sig, model, layout, seeds)

    def norm(x):
        x = x.flatten().double().numpy()
        if method == "zscore":
            return (x - x.mean()) / x.std()
        if method == "minmax":
            return (x - x.min()) / (x.max() - x.min())
        return (rankdata(x) - 1) / (len(x) - 1)

    expected = norm(imp.scores()) + lam * norm(pla.scores())
    torch.testing.assert_close(combo.scores().flatten().double(), torch.from_numpy(expected), rtol=1e-5, atol=1e-6)
    assert set(combo.parts()) == {"importance", "plasticity"}


@pytest.mark.parametrize("method", ["zscore", "rank"])
def test_combo_takes_the_rms_plasticity_by_flag(method):
    model, seeds, lam = TwoModules(), [11, 12], 0.6
    layout = LoraLayout(model)
    config = SignalConfig(combo_lambda=lam, normalize_method=method, plasticity_norm="rms")
    combo, imp, rms = (build_signal(n, layout, config) for n in ("combo", "importance_only", "plasticity_rms"))
    for sig in (combo, imp, rms):
        step_all(sig, model, layout, seeds)
    torch.testing.assert_close(combo.parts()["plasticity"], rms.scores())
    torch.testing.assert_close(combo.scores(), normalize(imp.scores(), method) + lam * normalize(rms.scores(), method))
    with pytest.raises(ValueError, match="unknown plasticity norm 'l1'"):
        build_signal("combo", layout, SignalConfig(plasticity_norm="l1"))


def test_rms_plasticity_is_size_fair_where_the_l2_norm_favours_the_larger_matrix():
    """Two module shapes (triplets of 4 + 5 + 1 and 40 + 30 + 1 elements), the same gradient on every element."""

    class TwoShapes(TwoModules):
        def __init__(self):
            torch.nn.Module.__init__(self)
            for name, (din, dout) in {"small": (4, 5), "large": (40, 30)}.items():
                mod = torch.nn.Module()
                for part, shape in (("lora_A", (3, din)), ("lora_E", (3, 1)), ("lora_B", (dout, 3))):
                    setattr(mod, part, torch.nn.ParameterDict({"default": torch.nn.Parameter(torch.ones(shape))}))
                self.add_module(name, mod)

    model = TwoShapes()
    layout = LoraLayout(model)
    for p in model.parameters():
        p.grad = torch.full(p.shape, 0.3)
    g = layout.flat_grads()
    scores = {}
    for name in ("plasticity_only", "plasticity_rms"):
        signal = build_signal(name, layout, SignalConfig(ema_decay=0.9))
        signal.update(None, g, True)
        scores[name] = signal.scores()  # rows: large, small (sorted module order)
    torch.testing.assert_close(scores["plasticity_rms"], torch.full((2, 3), 0.1 * 0.3))
    large, small = scores["plasticity_only"]
    torch.testing.assert_close(large / small, torch.full((3,), math.sqrt(71 / 10)))


def test_plasticity_rms_is_the_l2_plasticity_per_element_under_checkpoint_names_of_before():
    """plasticity_rms derives from plasticity_only (one formula): on random gradients its EMA is
    EMA(sqrt(sum g^2 / n)) exactly as it was computed before, and its state keeps the buffer names that earlier
    checkpoints hold, so that they still resume (combo's parts too)."""
    model, seeds = TwoModules(), [5, 6, 7]
    layout = LoraLayout(model)
    config = SignalConfig(ema_decay=0.8)
    rms = build_signal("plasticity_rms", layout, config)
    step_all(rms, model, layout, seeds)
    sizes = torch.tensor([din + dout + 1 for din, dout in zip(layout.in_features, layout.out_features)],
                         dtype=torch.float32).view(-1, 1)
    expected = torch.zeros(layout.num_modules, layout.r)
    for seed in seeds:
        model.set_grads(seed)
        g = layout.flat_grads()
        expected = 0.8 * expected + (1 - 0.8) * layout.triplet_sums(g * g).div(sizes).sqrt()
    torch.testing.assert_close(rms.scores(), expected)
    assert set(rms.state_dict()) == {"exp_avg_rms"}
    assert set(build_signal("plasticity_only", layout, config).state_dict()) == {"exp_avg_norm"}
    combo = build_signal("combo", layout, SignalConfig(plasticity_norm="rms"))
    assert set(combo.state_dict()) == {"importance.exp_avg_ipt", "plasticity.exp_avg_rms"}
    restored = build_signal("plasticity_rms", layout, config)
    restored.load_state_dict({"exp_avg_rms": expected.view(-1).clone()})
    torch.testing.assert_close(restored.scores(), expected)



def test_rank_normalization_averages_ties_and_constant_scores_normalize_to_zero():
    x = torch.tensor([3.0, 1.0, 3.0, 2.0])
    torch.testing.assert_close(normalize(x, "rank"), torch.tensor([(2.5) / 3, 0.0, 2.5 / 3, 1 / 3]))
    for method in ("zscore", "minmax"):
        assert torch.equal(normalize(torch.ones(5), method), torch.zeros(5))


@pytest.mark.parametrize("accelerator_path", [False, True])
@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_nonfinite_gradients_leave_every_ema_unchanged(name, accelerator_path):
    model = TwoModules()
    layout = LoraLayout(model)
    layout.accelerator_path = accelerator_path  # True: the flag stays a tensor, as on a GPU
    signal = build_signal(name, layout, SignalConfig())
    step_all(signal, model, layout, [1, 2])
    before = signal.state_dict()
    model.set_grads(3)
    model.q.lora_A["default"].grad[0, 0] = float("nan")
    g = layout.flat_grads()
    finite = layout.check_finite_(g)  # what the allocator does: the flag, and g zeroed on a bad step
    assert isinstance(finite, torch.Tensor) == accelerator_path and not bool(finite) and not g.any()
    signal.update(layout.flat_weights(), g, finite)
    after = signal.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    model.set_grads(4)  # and the next finite step moves them again (when the signal tracks anything)
    g = layout.flat_grads()
    signal.update(layout.flat_weights(), g, layout.check_finite_(g))
    assert not signal.buffers or any(not torch.equal(before[k], v) for k, v in signal.state_dict().items())


def test_registry_roles_and_duplicate_names(monkeypatch):
    from adalora_ablation import signals
    from adalora_ablation.signals import Signal, register_signal, signal_class, signal_names

    assert signal_names("baseline") == ["baseline_adalora"]
    assert signal_names("signal") == ["importance_only", "plasticity_only", "plasticity_rms", "combo",
                                      "singular_value", "sensitivity_only", "sensitivity_snr", "fisher",
                                      "component_norm"]
    assert signal_names("control") == ["random", "uniform", "oracle", "oracle_fixed"]
    assert all(info.description and signal_class(name).name == name for name, info in SIGNALS.items())
    monkeypatch.setattr(signals, "SIGNALS", dict(signals.SIGNALS))
    monkeypatch.setattr(signals, "_CLASSES", dict(signals._CLASSES))

    class Again(Signal):
        name = "combo"

    with pytest.raises(ValueError, match="'combo' is already registered .*: baseline_adalora, importance_only"):
        register_signal(Again)
    assert signals.SIGNALS["combo"] is SIGNALS["combo"]

    class NoRole(Signal):
        name = "no_role"
        role = "main"

    with pytest.raises(ValueError, match="role in"):
        register_signal(NoRole)


def test_every_signal_class_of_the_package_has_a_registry_entry():
    """A class in signals/ without its entry could never be chosen; an entry without its class fails at build."""
    import importlib
    import inspect

    from adalora_ablation import signals
    from adalora_ablation.signals.base import Signal

    folder = Path(signals.__file__).parent
    classes = set()
    for path in folder.glob("*.py"):
        module = importlib.import_module(f"adalora_ablation.signals.{path.stem}")
        classes |= {cls for _, cls in inspect.getmembers(module, inspect.isclass)
                    if issubclass(cls, Signal) and cls is not Signal and cls.__module__ == module.__name__}
    assert {cls.name for cls in classes} == set(SIGNALS)
    assert all(signals.signal_class(cls.name) is cls for cls in classes)


# -- signals of other code: --include MODULE and the adalora_ablation.signals entry point group ------------------
OWN_SIGNAL = '''
from adalora_ablation.signals import Signal, ema_, register_signal


@register_signal
class {cls}(Signal):
    name = "{name}"
    description = "EMA of |w|"
    role = "{role}"

    def __init__(self, layout, config):
        super().__init__(layout, config)
        self.avg = self._buffer("avg", layout.numel)

    def update(self, w, g, finite):
        ema_(self.avg, w.abs(), self.config.ema_decay, finite)

    def scores(self):
        return self.layout.combine_elements(self.avg)
'''


def write_signal_module(folder, module, name, cls="OwnSignal", role="signal", decorate=True):
    text = OWN_SIGNAL.format(cls=cls, name=name, role=role)
    (folder / f"{module}.py").write_text(text if decorate else text.replace("@register_signal\n", ""))


def write_entry_point(folder, name, target):
    """What pip installs for a package that declares [project.entry-points."adalora_ablation.signals"]."""
    info = folder / "own_signals-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: own-signals\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[adalora_ablation.signals]\n{name} = {target}\n")


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """The real registry, put back as it was afterwards (with the modules these tests import forgotten)."""
    from adalora_ablation import signals

    saved, classes, modules = dict(signals.SIGNALS), dict(signals._CLASSES), set(sys.modules)
    monkeypatch.syspath_prepend(tmp_path)
    yield signals
    signals.SIGNALS.clear()
    signals.SIGNALS.update(saved)
    signals._CLASSES.clear()
    signals._CLASSES.update(classes)
    for name in set(sys.modules) - modules:
        if getattr(sys.modules[name], "__file__", "") and str(tmp_path) in sys.modules[name].__file__:
            del sys.modules[name]
    signals._entry_points_read_for = None  # read them again without tmp_path


def test_include_imports_a_module_whose_signals_register_themselves(registry, tmp_path, capsys):
    from adalora_ablation.cli import main

    write_signal_module(tmp_path, "own_signals_a", "own_magnitude", role="control")
    write_signal_module(tmp_path, "own_signals_b", "own_other")
    argv = ["--task", "rte", "--include", "own_signals_a", "--signals", "x", "--include", "own_signals_b"]
    assert registry.included_modules(argv) == ["own_signals_a", "own_signals_b"]
    assert registry.included_modules(["--task", "rte", "--include"]) == []
    assert main(["report", "--task", "rte", "--include"]) == 2
    assert capsys.readouterr().err == ("adalora-ablation: error: argument --include: expected at least one argument "
                                       "(see 'adalora-ablation report --help')\n")
    registry.load_signals(registry.included_modules(argv))
    registry.load_signals(["own_signals_a"])  # again (every command and each run's parser do): nothing twice
    assert registry.SIGNALS["own_magnitude"].where == "own_signals_a:OwnSignal"
    assert registry.signal_names("control")[-1] == "own_magnitude" and "own_other" in registry.signal_names()
    assert registry.signal_class("own_magnitude").__module__ == "own_signals_a"
    # The commands' name checks see them (report: past --signals to "no runs"; ablate: a dry run plans them).
    assert main(["report", "--task", "rte", "--include", "own_signals_a", "--signals", "own_magnitude",
                 "--output-root", str(tmp_path / "none")]) == 2
    assert "error: no runs for task 'rte'" in capsys.readouterr().err
    assert main(["ablate", "--task", "rte", "--include", "own_signals_b", "--signals", "own_other", "--seeds", "1",
                 "--output-root", str(tmp_path / "grid"), "--dry-run"]) == 0
    assert "| rte | own_other | 1 | would run |" in capsys.readouterr().out

    assert main(["report", "--include", "no_such_module", "--task", "rte"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("adalora-ablation: error: cannot import --include no_such_module (No module named "
                   "'no_such_module'); put the folder that holds it on PYTHONPATH (every run of a grid imports it "
                   "too), or install it")
    write_signal_module(tmp_path, "own_signals_c", "combo")
    assert main(["ablate", "--include", "own_signals_c", "--dry-run"]) == 2
    assert "error: --include own_signals_c: a signal named 'combo' is already registered" in capsys.readouterr().err


def test_an_installed_entry_point_registers_its_signal(registry, tmp_path):
    write_signal_module(tmp_path, "own_entry", "own_entry_signal", decorate=False)  # the entry point names the class
    write_entry_point(tmp_path, "own_entry_signal", "own_entry:OwnSignal")
    registry.load_signals()
    assert registry.SIGNALS["own_entry_signal"].where == "own_entry:OwnSignal"
    registry.load_signals()
    registry._entry_points_read_for = None
    registry.load_signals()  # read again: the class is registered already, nothing twice
    assert registry.signal_names().count("own_entry_signal") == 1
