"""Adapted-module names: PEFT's parameter key -> the short name every log uses, and a short name's layer and
matrix type (for per-layer and per-type ranks in the logs and the figures)."""

from __future__ import annotations

import re

MODULE_TYPES = ("Q", "K", "V", "O", "FFN-in", "FFN-out")
# Checked in order: "attention.output.dense" must win over "output.dense".
_TYPE_SUFFIXES = (
    ("attention.output.dense", "O"), ("intermediate.dense", "FFN-in"), ("output.dense", "FFN-out"),
    ("query_proj", "Q"), ("query", "Q"), ("key_proj", "K"), ("key", "K"), ("value_proj", "V"), ("value", "V"),
    # decoder-only models: Llama, Qwen2, Mistral (q/k/v/o_proj, gate/up/down_proj), OPT (out_proj, fc1, fc2),
    # GPT-2 (fused c_attn for Q, K and V; attn.c_proj; mlp.c_fc and mlp.c_proj). gate_proj keeps its own type.
    ("q_proj", "Q"), ("k_proj", "K"), ("v_proj", "V"), ("o_proj", "O"), ("out_proj", "O"), ("attn.c_proj", "O"),
    ("up_proj", "FFN-in"), ("fc1", "FFN-in"), ("c_fc", "FFN-in"),
    ("down_proj", "FFN-out"), ("fc2", "FFN-out"), ("mlp.c_proj", "FFN-out"),
)
# Layer lists: layer.N (BERT-style encoders), layers.N (Llama, Qwen2, Mistral, OPT), h.N (GPT-2)
_FROM_LAYER = re.compile(r"(?:^|\.)((?:layers?|h)\.\d+\..*)$")
_LAYER = re.compile(r"(?:^|\.)(?:layers?|h)\.(\d+)\.")


def short_module_name(peft_key: str) -> str:
    """``deberta.encoder.layer.0.attention.self.query_proj.%s.default`` -> ``layer.0.attention.self.query_proj``.

    Short names are the same for every signal and every model wrapper, so logs from different runs line up.
    """
    name = peft_key.split(".%s")[0].split(".lora_")[0]
    match = _FROM_LAYER.search(name)
    return match.group(1) if match else name


def layer_index(name: str) -> int | None:
    """The encoder layer number in a module name (``layer.N.`` or ``layers.N.``), None if it has none."""
    match = _LAYER.search(name)
    return None if match is None else int(match.group(1))


def module_type(name: str) -> str:
    """Q, K, V, O, FFN-in or FFN-out; any other target module keeps its leaf name as its type."""
    for suffix, kind in _TYPE_SUFFIXES:
        if name == suffix or name.endswith("." + suffix):
            return kind
    return name.rsplit(".", 1)[-1]


def ordered_types(names) -> list[str]:
    """The matrix types among ``names``: Q, K, V, O, FFN-in, FFN-out first, any others alphabetically."""
    types = {module_type(n) for n in names}
    return [t for t in MODULE_TYPES if t in types] + sorted(types - set(MODULE_TYPES))


def ranks_by_layer_and_type(ranks: dict[str, int]) -> tuple[dict[int, int], dict[str, int]]:
    """Total rank per layer (modules without a layer number are left out) and per matrix type."""
    per_layer: dict[int, int] = {}
    per_type = dict.fromkeys(ordered_types(ranks), 0)
    for name, rank in ranks.items():
        layer = layer_index(name)
        if layer is not None:
            per_layer[layer] = per_layer.get(layer, 0) + rank
        per_type[module_type(name)] += rank
    return dict(sorted(per_layer.items())), per_type
