"""What is planted where, in plain numbers (no torch): the --planted-modules spec, its default, its checks, and how
much of it a rank pattern recovers. The report and the logs read these without loading a model."""

from __future__ import annotations

import math
import random

from ..errors import UsageError
from ..module_names import layer_index, module_type

# The default spec spreads the planted rank over layers and matrix types: the last layer's attention output and the
# first layer's FFN input, each at half the final budget (at most --init-r). A uniform spread gives each of them
# --target-r, far below that; the oracle holds both. One spec says little on its own: --planted-suite draws many
# (docs/planted.md); this one is the demo's.
DEFAULT_PLANTED_PLACES = (("last", "O"), ("first", "FFN-in"))  # (layer, matrix type); other models: the nearest


def default_rule() -> str:
    """The default spec's rule in words, recorded in a planted run's settings when --planted-modules is not given:
    the modules it picks depend on the model, so this text is what tells a run made with another default apart."""
    places = ", ".join(f"{where} layer {kind}" for where, kind in DEFAULT_PLANTED_PLACES)
    return f"{places}; each 1/{len(DEFAULT_PLANTED_PLACES)} of the final budget, at most init_r"


# A benchmark over specs (--planted-draw K, ablate --planted-suite N) draws them by this rule. Its version is recorded
# in a drawn run's settings (planted_draw_rule): a changed rule gives other specs for the same K, so it must never
# match a run made under the old one. Raise the version whenever draw_planted_spec changes what it returns.
DRAW_VERSION = 1
DRAW_MAX_MODULES = 4  # modules of a draw that does not fill the budget (one that fills it may need more)


def draw_rule() -> str:
    """The drawing rule in words, with its version: what a drawn run records beside --planted-draw."""
    return (f"draw v{DRAW_VERSION}: 1..{DRAW_MAX_MODULES} modules spread over layers and matrix types (more when "
            f"needed to fill the budget), ranks in 1..init_r, about half the draws filling the final budget "
            f"(where init_r allows); from (planted_seed, planted_draw)")


# How a planted update is built (data/planted.py). Its version is recorded in every planted run's settings
# (planted_construction) and in the summary's planted record: a run made under another construction is another task
# and must never pass for this one. Raise the version whenever planted_updates or the strength rule change what they
# build. v1 (no field recorded): V uniformly random over the whole input space. v2: V within the inputs' principal
# subspace, so that the data excite every planted direction.
CONSTRUCTION_VERSION = 2
PRINCIPAL_SHARE = 0.9  # the principal subspace: the leading directions holding this share of the inputs' variance
# --planted-strength auto: the rungs tried (a factor sqrt(2) apart) and the base model's agreement with the teacher
# to get down to. Half the inputs: the updates decide the answer on most rows, and the smallest strength that does
# it keeps the update as easy to learn as the spec allows. Updates the inputs excite move the outputs at a much
# smaller strength than random ones, hence rungs down to 1/16.
STRENGTH_LADDER = tuple(round(2 ** (k / 2), 4) for k in range(-8, 9))  # 0.0625 .. 16
BASE_AGREEMENT = 0.5


def construction_rule() -> str:
    """How the planted updates are built, in words, with the version: what a planted run records as
    planted_construction (its settings) and construction (the summary's planted record)."""
    return (f"construction v{CONSTRUCTION_VERSION}: per planted module, V (in x r) a random orthonormal basis of "
            f"an r-dimensional subspace of the principal subspace of the module's inputs on the calibration rows "
            f"(the leading eigenvectors of their centred covariance holding {PRINCIPAL_SHARE:.0%} of the variance, "
            f"at least r of them), U random orthonormal, every singular value = strength x the module's largest; "
            f"auto strength: the smallest rung of {STRENGTH_LADDER[0]}..{STRENGTH_LADDER[-1]} (factor sqrt 2) at "
            f"which the base model agrees with the teacher on at most {BASE_AGREEMENT:.0%} of the calibration rows "
            f"(a bisection)")


def student_rule() -> str:
    """How the planted student computes, in words: what a planted run records as planted_student (its settings)."""
    return ("student v2: the base model's dropout off (every torch.nn.Dropout at p=0), as the teacher computes; "
            "the adapters' own lora_dropout as set")


def draw_planted_spec(names: list[str], init_r: int, target_r: int, seed: int, index: int) -> dict[str, int]:
    """Spec number ``index`` of the suite drawn from ``seed`` for these adapted modules: a function of (the set of
    names, init_r, target_r, seed, index) only, so draws do not depend on each other or on the order they are made
    in.

    Half the draws fill the final budget (target_r x modules) with planted rank, which takes at least
    ceil(budget / init_r) modules; the others plant less than the budget in 1..DRAW_MAX_MODULES modules. Modules are
    picked one by one from the layer and the matrix type picked least so far (ties at random), so that a draw
    spreads over layers and types; each rank is drawn in 1..init_r, then moved one step at a time (a random module
    each time, within 1..init_r) until the total is what the draw asks for. Every draw passes check_planted_spec."""
    rng = random.Random(f"planted-draw:{seed}:{index}")
    budget = target_r * len(names)
    most = min(len(names), budget)
    fewest_to_fill = math.ceil(budget / init_r)
    fill = rng.random() < 0.5 and fewest_to_fill <= most
    if fill:
        count = rng.randint(fewest_to_fill, min(most, max(fewest_to_fill, DRAW_MAX_MODULES)))
        total = budget
    else:
        count = rng.randint(1, min(most, DRAW_MAX_MODULES))
        # below the budget where a rank of at least 1 per module leaves room (a budget of 1 is always filled)
        total = rng.randint(count, max(count, min(budget - 1, count * init_r)))
    picks = _spread_picks(names, count, rng)
    ranks = {name: rng.randint(1, init_r) for name in picks}
    while sum(ranks.values()) != total:
        step = 1 if sum(ranks.values()) < total else -1
        movable = [n for n in picks if 1 <= ranks[n] + step <= init_r]
        ranks[rng.choice(movable)] += step
    return {name: ranks[name] for name in names if name in ranks}  # in the model's module order


def _spread_picks(names: list[str], count: int, rng: random.Random) -> list[str]:
    """``count`` modules, each from the layer and matrix type used least by the ones picked before it."""
    pool = sorted(names)  # the set of names decides, not the order they come in
    rng.shuffle(pool)  # ties go to the first in this random order
    layers: dict = {}
    types: dict = {}
    picks = []
    for _ in range(count):
        pick = min(pool, key=lambda n: layers.get(layer_index(n), 0) + types.get(module_type(n), 0))
        pool.remove(pick)
        picks.append(pick)
        layers[layer_index(pick)] = layers.get(layer_index(pick), 0) + 1
        types[module_type(pick)] = types.get(module_type(pick), 0) + 1
    return picks


def spec_text(spec: dict[str, int]) -> str:
    """A spec as --planted-modules writes it: NAME=RANK,NAME=RANK."""
    return ",".join(f"{name}={rank}" for name, rank in spec.items())


def parse_planted_spec(text: str) -> dict[str, int]:
    """``NAME=RANK,NAME=RANK`` -> {NAME: RANK}; a malformed entry is a UsageError naming it."""
    spec: dict[str, int] = {}
    for entry in (e.strip() for e in text.split(",")):
        name, _, rank = entry.partition("=")
        if not name or not rank.strip().isdigit() or int(rank) < 1:
            raise UsageError(f"--planted-modules entry {entry!r} is not NAME=RANK with a rank >= 1; write e.g. "
                             f"layer.1.attention.self.value_proj=4,layer.0.intermediate.dense=4")
        if name.strip() in spec:
            raise UsageError(f"--planted-modules names {name.strip()} twice; give each module once")
        spec[name.strip()] = int(rank)
    return spec


def default_planted_spec(names: list[str], init_r: int, target_r: int) -> dict[str, int]:
    """The modules of DEFAULT_PLANTED_PLACES (a missing matrix type: the first unpicked module of that layer), with
    equal ranks that share the final budget (at most ``init_r``); each above ``target_r``, which is what a uniform
    spread of the budget gives a module."""
    layers = sorted({layer_index(n) for n in names if layer_index(n) is not None})
    picks: list[str] = []
    for where, kind in DEFAULT_PLANTED_PLACES[:len(names)]:
        layer = (layers[-1] if where == "last" else layers[0]) if layers else None
        candidates = [n for n in names if layer_index(n) == layer and n not in picks] or \
            [n for n in names if n not in picks]
        picks.append(next((n for n in candidates if module_type(n) == kind), candidates[0]))
    budget = target_r * len(names)
    rank = min(init_r, max(target_r + 1, budget // len(picks)))
    return {name: rank for name in picks}


def check_planted_spec(spec: dict[str, int], names: list[str], init_r: int, target_r: int) -> None:
    """Every name an adapted module, every rank within --init-r, all ranks within the final budget."""
    unknown = [n for n in spec if n not in names]
    if unknown:
        raise UsageError(f"--planted-modules names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} "
                         f"not adapted; choose from: {', '.join(names)}")
    too_high = {n: r for n, r in spec.items() if r > init_r}
    if too_high:
        raise UsageError(f"--planted-modules rank {', '.join(f'{n}={r}' for n, r in too_high.items())} is above "
                         f"--init-r {init_r}: no adapter can hold it; lower the rank or raise --init-r")
    budget = target_r * len(names)
    if sum(spec.values()) > budget:
        raise UsageError(f"--planted-modules ranks sum to {sum(spec.values())}, above the final budget of {budget} "
                         f"triplets (--target-r {target_r} x {len(names)} modules) that the schedule keeps; lower "
                         f"the ranks or raise --target-r")


def planted_recall(ranks: dict[str, int], spec: dict[str, int]) -> float:
    """Sum over planted modules of min(rank held, planted rank) / sum of planted ranks: 1.0 when every planted
    module holds at least its planted rank."""
    return sum(min(ranks.get(n, 0), r) for n, r in spec.items()) / sum(spec.values())


def planted_share(ranks: dict[str, int], spec: dict[str, int]) -> float:
    """The share of the total rank held by planted modules (0.0 when no rank is held at all)."""
    total = sum(ranks.values())
    return sum(ranks.get(n, 0) for n in spec) / total if total else 0.0


def planted_recovery(ranks: dict[str, int], spec: dict[str, int]) -> dict:
    """The summary's recovery fields."""
    return {"planted_recall": planted_recall(ranks, spec), "planted_share": planted_share(ranks, spec)}
