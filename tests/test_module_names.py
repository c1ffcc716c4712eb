"""Module names: PEFT keys to short names, and a short name's layer and matrix type."""

import pytest

from adalora_ablation.module_names import (
    layer_index, module_type, ordered_types, ranks_by_layer_and_type, short_module_name,
)


@pytest.mark.parametrize("key, short", [
    ("base_model.model.deberta.encoder.layer.0.attention.self.query_proj.%s.default",
     "layer.0.attention.self.query_proj"),
    ("base_model.model.bert.encoder.layer.11.output.dense.lora_A.default", "layer.11.output.dense"),
    ("model.layers.3.mlp.up_proj.%s.default", "layers.3.mlp.up_proj"),
    ("classifier.dense.%s.default", "classifier.dense"),  # no layer: the name as it is
])
def test_short_module_name(key, short):
    assert short_module_name(key) == short


def test_layer_and_type():
    assert layer_index("layer.10.attention.output.dense") == 10 and layer_index("pooler.dense") is None
    assert module_type("layer.10.attention.output.dense") == "O"
    assert module_type("layers.2.mlp.gate_proj") == "gate_proj"
    assert ordered_types(["layer.0.output.dense", "layer.0.attention.self.query", "layers.0.mlp.gate_proj"]) == [
        "Q", "FFN-out", "gate_proj"]
    # Decoder-only families: Llama/Qwen2/Mistral, OPT and GPT-2 (whose fused c_attn keeps its own type).
    assert [module_type(f"layers.0.{n}") for n in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj",
                                                   "mlp.down_proj", "self_attn.out_proj", "fc1", "fc2")] == [
        "Q", "O", "FFN-in", "FFN-out", "O", "FFN-in", "FFN-out"]
    assert [module_type(f"h.3.{n}") for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")] == [
        "c_attn", "O", "FFN-in", "FFN-out"]
    assert layer_index("h.3.mlp.c_fc") == 3 and short_module_name("base_model.model.transformer.h.3.mlp.c_fc") == \
        "h.3.mlp.c_fc"


def test_ranks_by_layer_and_type():
    ranks = {"layer.1.attention.self.query_proj": 3, "layer.0.attention.self.query_proj": 5,
             "layer.0.output.dense": 2, "layer.10.intermediate.dense": 1, "pooler.dense": 4}
    per_layer, per_type = ranks_by_layer_and_type(ranks)
    assert per_layer == {0: 7, 1: 3, 10: 1} and list(per_layer) == [0, 1, 10]
    assert per_type == {"Q": 8, "FFN-in": 1, "FFN-out": 2, "dense": 4}
