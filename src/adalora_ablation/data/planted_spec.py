"""What is planted where, in plain numbers (no torch): the --planted-modules spec, its default, its checks, and how
much of it a rank pattern recovers. The report and the logs read these without loading a model."""

from __future__ import annotations

from ..errors import UsageError
from ..module_names import layer_index, module_type

# The default spec plants a rank as high as --init-r in ONE module (the last layer's attention output), up to this
# share of the final budget: far above what a uniform spread gives it (--target-r), so uniform holds a small fraction
# of it while the oracle holds all of it and keeps the rest of the budget for PEFT's score. Spreading the same budget
# over 2-3 modules of lower rank was measured first (README, "What the planted task shows"): there rank spread over
# all modules bought almost as much as rank in the right ones, and allocation hardly mattered.
DEFAULT_PLANTED_MODULES = 1
DEFAULT_PLANTED_BUDGET_SHARE = 0.75
DEFAULT_PLANTED_TYPES = ("O", "V", "FFN-in", "Q", "FFN-out", "K")


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
    """DEFAULT_PLANTED_MODULES modules, from the last layer towards the first and over matrix types (attention
    output first), with equal ranks that a uniform spread of the final budget cannot hold (each above
    ``target_r``) and that fit in the final budget together."""
    layers = sorted({layer_index(n) for n in names if layer_index(n) is not None})
    count = min(DEFAULT_PLANTED_MODULES, len(names))
    picks: list[str] = []
    for i in range(count):
        layer = layers[-1 - round(i * (len(layers) - 1) / max(count - 1, 1))] if layers else None
        in_layer = [n for n in names if layer_index(n) == layer and n not in picks] or \
            [n for n in names if n not in picks]
        preferred = DEFAULT_PLANTED_TYPES[i % len(DEFAULT_PLANTED_TYPES):] + DEFAULT_PLANTED_TYPES
        picks.append(min(in_layer, key=lambda n: preferred.index(module_type(n)) if module_type(n) in preferred
                         else len(preferred)))
    budget = target_r * len(names)
    rank = min(init_r, max(target_r + 1, int(DEFAULT_PLANTED_BUDGET_SHARE * budget) // count))
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
