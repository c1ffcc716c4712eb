"""Target-module detection, head detection and the built-in tiny-deberta."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, DebertaV2Config

from adalora_ablation.errors import UsageError
from adalora_ablation.model import (
    TINY_DEBERTA, detect_head_modules, detect_target_modules, load_model_and_tokenizer, tiny_deberta_config,
)

LEAVES = {"query_proj", "key_proj", "value_proj", "dense", "query", "key", "value"}


def small(config_cls, **kw):
    base = dict(vocab_size=50, hidden_size=16, num_hidden_layers=12, num_attention_heads=2, intermediate_size=32)
    return AutoModelForSequenceClassification.from_config(config_cls(**{**base, **kw}))


def check_six_per_layer(names, layers=12):
    assert len(names) == 6 * layers
    for i in range(layers):
        in_layer = [n for n in names if f".layer.{i}." in n]
        assert len(in_layer) == 6
    assert not any("pooler" in n or "classifier" in n or ".pos_" in n for n in names)


def test_deberta_v3_shape_gives_72_modules():
    model = AutoModelForSequenceClassification.from_config(tiny_deberta_config(num_layers=12, hidden=16))
    names = detect_target_modules(model)
    check_six_per_layer(names)
    assert {n.split(".")[-1] for n in names} == {"query_proj", "key_proj", "value_proj", "dense"}
    assert "deberta.encoder.layer.0.attention.output.dense" in names
    assert "deberta.encoder.layer.11.output.dense" in names


def test_deberta_v2_without_shared_key_skips_position_projections():
    model = small(DebertaV2Config, relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=False)
    linear_names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert any(".pos_key_proj" in n for n in linear_names)  # they exist ...
    check_six_per_layer(detect_target_modules(model))  # ... and are not adapted


def test_bert_names():
    model = small(BertConfig)
    names = detect_target_modules(model)
    check_six_per_layer(names)
    assert "bert.encoder.layer.3.attention.self.query" in names
    assert "bert.pooler.dense" not in names


def test_explicit_suffixes_and_helpful_error():
    model = small(BertConfig, num_hidden_layers=2)
    assert detect_target_modules(model, ["query", "value"]) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value",
    ]
    with pytest.raises(UsageError, match=r"no target modules found.*bert\.encoder\.layer\.0\.attention\.self\.query"):
        detect_target_modules(model, ["q_proj"])


def test_heads_are_pooler_and_classifier():
    assert detect_head_modules(small(BertConfig, num_hidden_layers=1)) == ["pooler", "classifier"]
    assert detect_head_modules(small(DebertaV2Config, num_hidden_layers=1)) == ["pooler", "classifier"]


def test_tiny_deberta_builds_offline_with_a_working_tokenizer():
    model, tok = load_model_and_tokenizer(TINY_DEBERTA, ("a", "b", "c"))
    assert model.config.model_type == "deberta-v2" and model.config.num_labels == 3
    assert model.config.relative_attention and model.config.share_att_key
    enc = tok("red cat", "Anything, even unseen words!")
    assert enc["input_ids"][0] == tok.cls_token_id and tok.unk_token_id not in enc["input_ids"]
    out = model(**tok(["red cat"], ["dog"], return_tensors="pt"))
    assert out.logits.shape == (1, 3)


def test_missing_local_model_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_model_and_tokenizer(str(tmp_path / "nope"), ("a", "b"))


def test_real_minilm_loads_from_its_folder(minilm_path):
    model, tok = load_model_and_tokenizer(minilm_path, ("entailment", "not_entailment"))
    names = detect_target_modules(model)
    check_six_per_layer(names, layers=6)
    assert model.config.id2label == {0: "entailment", 1: "not_entailment"}
