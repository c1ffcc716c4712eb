"""Loading (a DeBERTa-v3 folder in the hub's layout, tiny-deberta, errors), target-module and head detection."""

import csv
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import re
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import sentencepiece as spm
import torch
from glue_copies import shared_rows, write_glue_tsv, write_hub_snapshot
from transformers import (
    AutoModelForSequenceClassification, AutoTokenizer, BertConfig, DebertaV2Config, DebertaV2ForMaskedLM,
    PreTrainedTokenizerFast,
)

from adalora_ablation.data.loading import SYNTHETIC_WORDS
from adalora_ablation.errors import UsageError
from adalora_ablation.adalora.model import (
    TINY_DEBERTA, TINY_TOKENIZER_DIR, check_tokenizer, detect_head_modules, detect_target_modules,
    load_model_and_tokenizer, tiny_deberta_config, tiny_tokenizer,
)
from adalora_ablation.data.tasks import TASKS
from adalora_ablation.train import train

ROOT = Path(__file__).resolve().parents[1]
HUB_TOKENIZER_CONFIG = {"do_lower_case": False, "vocab_type": "spm"}  # all that microsoft/deberta-v3-base has
RTE = ("entailment", "not_entailment")

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
    assert model.config.vocab_size == len(tok)
    enc = tok("red cat", "Anything, even unseen words!")
    assert enc["input_ids"][0] == tok.cls_token_id and tok.unk_token_id not in enc["input_ids"]
    out = model(**tok(["red cat"], ["dog"], return_tensors="pt"))
    assert out.logits.shape == (1, 3)


def test_tiny_deberta_tokenizer_is_a_sentencepiece_model_in_the_hub_layout():
    assert sorted(p.name for p in TINY_TOKENIZER_DIR.iterdir()) == ["spm.model", "tokenizer_config.json"]
    assert json.loads((TINY_TOKENIZER_DIR / "tokenizer_config.json").read_text()) == HUB_TOKENIZER_CONFIG
    tok, sp = tiny_tokenizer(), spm.SentencePieceProcessor(model_file=str(TINY_TOKENIZER_DIR / "spm.model"))
    assert type(tok).__name__ in ("DebertaV2Tokenizer", "DebertaV2TokenizerFast")
    # DeBERTa-v3's special ids: [PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3.
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    for word in SYNTHETIC_WORDS:  # the demo task sees whole words
        assert tok.convert_ids_to_tokens(tok(word, add_special_tokens=False)["input_ids"]) == [f"\u2581{word}"]
    text = "Anything, even unseen words!"
    assert tok(text)["input_ids"] == [1, *sp.encode(text), 2]


def test_the_script_reproduces_the_shipped_tiny_tokenizer(tmp_path):
    spec = importlib.util.spec_from_file_location("make_tiny", ROOT / "scripts" / "make_tiny_deberta_tokenizer.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.build(tmp_path)
    assert spm_pieces(tmp_path / "spm.model") == spm_pieces(TINY_TOKENIZER_DIR / "spm.model")
    shipped = (TINY_TOKENIZER_DIR / "tokenizer_config.json").read_text()
    assert (tmp_path / "tokenizer_config.json").read_text() == shipped


def spm_pieces(path):
    sp = spm.SentencePieceProcessor(model_file=str(path))
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def test_missing_local_model_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_model_and_tokenizer(str(tmp_path / "nope"), ("a", "b"))


def test_real_minilm_loads_from_its_folder(minilm_path):
    model, tok = load_model_and_tokenizer(minilm_path, ("entailment", "not_entailment"))
    names = detect_target_modules(model)
    check_six_per_layer(names, layers=6)
    assert model.config.id2label == {0: "entailment", 1: "not_entailment"}


# -- a DeBERTa-v3 folder exactly as the hub ships microsoft/deberta-v3-base, small ---------------------------------
def hub_config_json(vocab_size: int) -> dict:
    """microsoft/deberta-v3-base's config.json (its keys and spellings, pos_att_type as a string), sized down."""
    return {"model_type": "deberta-v2", "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
            "max_position_embeddings": 512, "relative_attention": True, "position_buckets": 64,
            "norm_rel_ebd": "layer_norm", "share_att_key": True, "pos_att_type": "p2c|c2p", "layer_norm_eps": 1e-7,
            "max_relative_positions": -1, "position_biased_input": False, "num_attention_heads": 2,
            "num_hidden_layers": 2, "type_vocab_size": 0, "vocab_size": vocab_size}


@pytest.fixture(scope="module")
def deberta_v3_folder(tmp_path_factory, glue_dir):
    """config.json, pytorch_model.bin (a torch.save'd state dict), spm.model (SentencePiece trained on real RTE
    text, DeBERTa-v3's special ids) and the two-key tokenizer_config.json; no tokenizer.json."""
    folder = tmp_path_factory.mktemp("deberta-v3-small")
    with open(glue_dir / "RTE" / "train.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:800]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([r[k] for r in rows for k in ("sentence1", "sentence2")]),
        model_prefix=str(folder / "spm"), model_type="unigram", vocab_size=1000, pad_id=0, pad_piece="[PAD]",
        bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]", num_threads=1,
        minloglevel=2,
    )
    (folder / "spm.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(HUB_TOKENIZER_CONFIG))
    config = hub_config_json(vocab_size=1100)  # like the hub's 128100 for 128000 pieces: room beyond [MASK]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(0)
    torch.save(DebertaV2ForMaskedLM(DebertaV2Config(**config)).state_dict(), folder / "pytorch_model.bin")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin", "spm.model",
                                                       "tokenizer_config.json"]
    return folder


@pytest.mark.slow
def test_deberta_v3_hub_folder_loads_its_sentencepiece_tokenizer_and_weights(deberta_v3_folder, glue_dir):
    model, tok = load_model_and_tokenizer(str(deberta_v3_folder), RTE)
    assert type(tok).__name__ in ("DebertaV2Tokenizer", "DebertaV2TokenizerFast")
    sp = spm.SentencePieceProcessor(model_file=str(deberta_v3_folder / "spm.model"))
    assert len(tok) == sp.get_piece_size() + 1 and tok.mask_token == "[MASK]"  # [MASK] is added, as on the hub
    with open(glue_dir / "RTE" / "dev.tsv", newline="", encoding="utf-8") as f:
        dev = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    for row in dev:  # every real dev pair: the ids SentencePiece itself gives, in DeBERTa's [CLS] a [SEP] b [SEP]
        a, b = row["sentence1"], row["sentence2"]
        assert tok(a, b)["input_ids"] == [1, *sp.encode(a), 2, *sp.encode(b), 2]
    saved = torch.load(deberta_v3_folder / "pytorch_model.bin", weights_only=True)
    for name in ("deberta.embeddings.word_embeddings.weight",
                 "deberta.encoder.layer.1.attention.self.query_proj.weight",
                 "deberta.encoder.rel_embeddings.weight"):
        assert torch.equal(model.state_dict()[name], saved[name]), name  # the pretrained weights, not a fresh init
    assert model.config.id2label == {0: "entailment", 1: "not_entailment"}
    check_six_per_layer(detect_target_modules(model), layers=2)


@pytest.mark.slow
def test_deberta_v3_hub_folder_trains_end_to_end_through_the_cli(deberta_v3_folder, glue_dir, tmp_path):
    """A fresh process, offline: RTE from a hub snapshot, the way a user with their own copies runs it."""
    rte = TASKS["rte"]
    write_hub_snapshot(tmp_path / "glue", rte, shared_rows(glue_dir, rte, {"train": 64, "validation": 32}))
    result = subprocess.run(
        [sys.executable, "-m", "adalora_ablation", "train", "--model", str(deberta_v3_folder), "--task", "rte",
         "--data-dir", str(tmp_path / "glue"), "--output-root", str(tmp_path / "out"), "--max-steps", "8",
         "--tinit", "2", "--tfinal", "2", "--deltaT", "2", "--init-r", "4", "--target-r", "2",
         "--per-device-train-batch-size", "8", "--max-seq-length", "64", "--eval-strategy", "no",
         "--save-strategy", "no", "--learning-rate", "1e-3"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "out" / "rte" / "baseline_adalora" / "42"
    summary = json.loads((run_dir / "final_summary.json").read_text())
    assert summary["model"] == str(deberta_v3_folder) and summary["budget_check_passed"]
    assert summary["total_rank"] == summary["target_budget"] == 2 * 12 and summary["total_step"] == 8
    assert 0 <= summary["eval_accuracy"] <= 1
    assert "(hub dataset snapshot): train 64, validation 32 rows" in result.stdout
    # The exported adapter's tokenizer gives the same ids as the folder's.
    pair = ("A cat sat on the mat.", "A cat is on a mat.")
    exported, original = (AutoTokenizer.from_pretrained(f) for f in (run_dir / "final_adapter", deberta_v3_folder))
    assert exported(*pair)["input_ids"] == original(*pair)["input_ids"]


@pytest.mark.slow
def test_deberta_v3_hub_folder_trains_mnli_from_the_glue_download_layout(deberta_v3_folder, glue_dir, tmp_path,
                                                                     caplog):
    mnli = TASKS["mnli"]
    sizes = {"train": 80, "validation_matched": 24, "validation_mismatched": 24}
    write_glue_tsv(tmp_path / "glue", mnli, shared_rows(glue_dir, mnli, sizes))
    package_logger = logging.getLogger("adalora_ablation")  # its own handlers may not propagate to caplog's
    package_logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="adalora_ablation")
    summary = train(["--task", "mnli", "--model", str(deberta_v3_folder), "--data-dir", str(tmp_path / "glue"),
                     "--output-root", str(tmp_path / "out"), "--max-steps", "6", "--tinit", "1", "--tfinal", "2",
                     "--deltaT", "1", "--init-r", "4", "--target-r", "2", "--per-device-train-batch-size", "8",
                     "--max-seq-length", "64", "--eval-strategy", "no", "--save-strategy", "no"])
    package_logger.removeHandler(caplog.handler)
    messages = caplog.messages
    assert summary["budget_check_passed"] and {"eval_accuracy", "eval_accuracy_mm"} <= set(summary)
    assert any("(GLUE TSV files): train 80, validation_matched 24, validation_mismatched 24 rows; skipped 2 rows "
               "without a gold label" in m for m in messages), messages


@pytest.mark.slow
def test_without_protobuf_the_error_names_it_not_tiktoken_or_offline(deberta_v3_folder, tmp_path):
    """What a fresh install lacking protobuf met: transformers falls back to a tiktoken reader and fails."""
    block_protobuf = ("import sys; sys.modules['google.protobuf'] = None; from adalora_ablation.cli import main; "
                      "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run(
        [sys.executable, "-c", block_protobuf, "train", "--model", str(deberta_v3_folder), "--task", "synthetic",
         "--output-root", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("adalora-ablation: error: cannot load the tokenizer of model") and "Traceback" not in \
        result.stderr
    assert last.endswith("reading its SentencePiece model (spm.model) needs protobuf, which is not installed; "
                         "pip install protobuf")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_folder_without_spm_model_is_refused_instead_of_training_on_unk(deberta_v3_folder, tmp_path):
    folder = tmp_path / "no-spm"
    shutil.copytree(deberta_v3_folder, folder)
    (folder / "spm.model").unlink()
    # (transformers 5 builds a tokenizer of special tokens only, which we refuse; transformers 4 fails to load.)
    with pytest.raises(UsageError, match=r"the folder holds no tokenizer vocabulary \(DeBERTa-v3 needs spm\.model "
                                         r"beside tokenizer_config\.json"):
        load_model_and_tokenizer(str(folder), RTE)


def test_a_tokenizer_that_knows_no_word_is_refused():
    """What transformers 5 builds for a DeBERTa-v3 folder without spm.model: a Unigram model of the specials only."""
    from tokenizers import Tokenizer, models

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.Unigram([(t, 0.0) for t in specials], unk_id=1))
    specials_only = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    with pytest.raises(UsageError, match=r"turns every word into \[UNK\]: its vocabulary is missing or broken"):
        check_tokenizer(specials_only, "some/model")


def test_a_tokenizer_that_encodes_a_pair_without_its_separators_is_refused(minilm_path, tmp_path):
    """As transformers 5.0-5.3 read DeBERTa's spm.model: a pair without [CLS] and [SEP]. Here MiniLM's tokenizer
    saved without its post-processor (what adds them) and read as it is saved (the generic fast tokenizer; BERT's
    own class would build the post-processor anew); refused before the model loads."""
    folder = tmp_path / "no-post-processor"
    folder.mkdir()
    for path in Path(minilm_path).iterdir():
        if "tokenizer" in path.name or path.name in ("vocab.txt", "special_tokens_map.json", "config.json"):
            shutil.copy(path, folder / path.name)
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    assert tokenizer_json["post_processor"] is not None
    load_model_and_tokenizer(minilm_path, RTE)  # as shipped: [CLS] a [SEP] b [SEP]
    tokenizer_json["post_processor"] = None
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config,
                                                              "tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(UsageError, match=r"the tokenizer of model '.*no-post-processor' encodes a sentence pair "
                                         r"without its separator \[SEP\] \(transformers .*\); transformers 5\.0-5\.3 "
                                         r"do so for DeBERTa's spm\.model: pip install"):
        load_model_and_tokenizer(str(folder), RTE)


@pytest.mark.slow
def test_folder_without_weights_names_the_file_and_no_offline_hint(deberta_v3_folder, tmp_path):
    folder = tmp_path / "no-weights"
    shutil.copytree(deberta_v3_folder, folder)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(UsageError, match=r"cannot load model .*no-weights.*pytorch_model\.bin") as info:
        load_model_and_tokenizer(str(folder), RTE)
    assert "offline" not in str(info.value)


def test_hub_id_that_cannot_be_fetched_suggests_a_local_folder(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UsageError, match=r"cannot load the tokenizer of model 'adalora-ablation-tests/not-cached' "
                                         r"\(.*\); offline, pass --model /path/to/local/folder or set "
                                         r"ADALORA_MODEL_PATH"):
        load_model_and_tokenizer("adalora-ablation-tests/not-cached", RTE)


def test_packages_for_reading_spm_model_are_dependencies():
    """The suite's environment has them either way; a fresh install gets only what pyproject.toml declares."""
    block = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M).group(1)
    declared = set(re.findall(r'^\s*"([A-Za-z0-9_.-]+)', block, re.M))
    assert {"sentencepiece", "protobuf", "transformers"} <= declared
