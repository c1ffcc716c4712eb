"""Decoder-only models for sequence classification (Llama, Qwen2, Mistral, OPT, GPT-2), on tiny random configs
built here: the adapted modules per family, GPT-2's Conv1D read the right way round, the padding token and side
that last-token pooling needs, and real training runs with exact budgets."""

from __future__ import annotations

import csv

import pytest
import torch
from peft.tuners.adalora.layer import AdaLoraLayer
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForSequenceClassification, GPT2Config, LlamaConfig, MistralConfig, OPTConfig, PreTrainedTokenizerFast,
    Qwen2Config,
)

from adalora_ablation.adalora.model import (
    detect_head_modules, detect_target_modules, load_model_and_tokenizer, wrap_with_adalora,
)
from adalora_ablation.args import AdaLoraArguments
from adalora_ablation.module_names import MODULE_TYPES, layer_index, module_type, short_module_name
from adalora_ablation.signals.layout import LoraLayout
from adalora_ablation.train import train

HIDDEN, FFN, LAYERS = 32, 64, 2


def word_tokenizer(glue_dir) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over real RTE words, with an end-of-text token and no padding token (as Llama's and
    GPT-2's tokenizers come)."""
    with open(glue_dir / "RTE" / "train.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:200]
    words = sorted({w for r in rows for w in (r["sentence1"] + " " + r["sentence2"]).split()})
    vocab = {w: i for i, w in enumerate(["<unk>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


def config(family: str, vocab_size: int):
    common = dict(vocab_size=vocab_size, num_labels=2, bos_token_id=1, eos_token_id=1)
    if family == "gpt2":
        return GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=128, **common)
    if family == "opt":
        return OPTConfig(hidden_size=HIDDEN, ffn_dim=FFN, num_hidden_layers=LAYERS, num_attention_heads=4,
                         word_embed_proj_dim=HIDDEN, max_position_embeddings=128, **common)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family]
    return cls(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, **common)


# Per family: the adapted matrices of one layer (what docs/models-and-data.md promises) and their (in, out) shapes.
KV = HIDDEN // 2  # two key/value heads of four
EXPECTED = {
    "llama": {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, KV), "v_proj": (HIDDEN, KV), "o_proj": (HIDDEN, HIDDEN),
              "gate_proj": (HIDDEN, FFN), "up_proj": (HIDDEN, FFN), "down_proj": (FFN, HIDDEN)},
    "opt": {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, HIDDEN), "v_proj": (HIDDEN, HIDDEN),
            "out_proj": (HIDDEN, HIDDEN), "fc1": (HIDDEN, FFN), "fc2": (FFN, HIDDEN)},
    # Conv1D stores its weight as (in, out): the layout must still read c_fc as 32 -> 128, not 128 -> 32.
    "gpt2": {"attn.c_attn": (HIDDEN, 3 * HIDDEN), "attn.c_proj": (HIDDEN, HIDDEN), "mlp.c_fc": (HIDDEN, 4 * HIDDEN),
             "mlp.c_proj": (4 * HIDDEN, HIDDEN)},
}
EXPECTED["qwen2"] = EXPECTED["mistral"] = EXPECTED["llama"]


@pytest.mark.parametrize("family", list(EXPECTED))
def test_detection_adapts_each_layer_s_matrices_and_trains_the_score_head(family):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config(family, 100))
    targets = detect_target_modules(model)
    assert len(targets) == LAYERS * len(EXPECTED[family])
    assert detect_head_modules(model) == ["score"]
    peft_model = wrap_with_adalora(model, targets, ["score"], AdaLoraArguments(tinit=2, tfinal=2), 20)
    layout = LoraLayout(peft_model)
    modules = {short_module_name(k): m for k, m in peft_model.named_modules() if isinstance(m, AdaLoraLayer)}
    for name, din, dout in zip(layout.names, layout.in_features, layout.out_features):
        suffix = next(s for s in EXPECTED[family] if name.endswith(s))
        assert (din, dout) == EXPECTED[family][suffix], name
        assert layer_index(name) is not None  # per-layer ranks in the logs and figures
        assert module_type(name) in MODULE_TYPES or name.endswith(("gate_proj", "c_attn")), name  # own types
        # The adapted module maps `in` features to `out`, as the layout says.
        assert modules[name](torch.randn(3, din)).shape == (3, dout), name


@pytest.fixture(scope="module")
def decoder_folders(tmp_path_factory, glue_dir):
    """Tiny random Llama-style and GPT-2-style classifiers saved as model folders, with a pad-less tokenizer."""
    root, folders = tmp_path_factory.mktemp("decoders"), {}
    tokenizer = word_tokenizer(glue_dir)
    for family in ("llama", "gpt2"):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(config(family, len(tokenizer)))
        model.save_pretrained(root / family)
        tokenizer.save_pretrained(root / family)
        folders[family] = root / family
    return folders


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_padding_token_and_side_keep_last_token_pooling_exact(decoder_folders, family):
    model, tokenizer = load_model_and_tokenizer(str(decoder_folders[family]), ("entailment", "not_entailment"))
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>" and tokenizer.padding_side == "right"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    model.eval()
    texts = ["The cat sat .", "A man was killed in the attack on the city ."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, -1] == 0  # the short text is padded, on the right
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)  # pooled at each text's own last token


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_tiny_decoder_trains_with_an_exact_budget_over_the_detected_modules(tmp_path, glue_head, decoder_folders,
                                                                            family):
    summary = train(["--task", "rte", "--signal", "combo", "--model", str(decoder_folders[family]), "--data-dir",
                     str(glue_head), "--output-root", str(tmp_path), "--max-train-samples", "64",
                     "--max-eval-samples", "32", "--max-seq-length", "48", "--per-device-train-batch-size", "8",
                     "--max-steps", "16", "--tinit", "2", "--tfinal", "4", "--deltaT", "2", "--init-r", "6",
                     "--target-r", "2", "--eval-strategy", "no", "--save-strategy", "no", "--warmup-steps", "0"])
    modules = LAYERS * len(EXPECTED[family])
    assert len(summary["target_modules"]) == len(summary["final_ranks"]) == modules
    assert summary["total_rank"] == summary["target_budget"] == 2 * modules and summary["budget_check_passed"]
    assert summary["modules_to_save"] == ["score"]
    for name, (din, dout) in summary["module_shapes"].items():
        assert (din, dout) == EXPECTED[family][next(s for s in EXPECTED[family] if name.endswith(s))]
    assert 0 <= summary["eval_accuracy"] <= 1


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_planted_task_builds_on_a_decoder_with_rank_1_and_2_modules(tmp_path, glue_dir, family):
    """A bias-less score head (scaled, not centred) and GPT-2's Conv1D weights (in x out) take the planted
    updates the right way round: the teacher's weight is the base weight + ΔW in the module's own layout."""
    from adalora_ablation.data import planted
    from adalora_ablation.data.tasks import TASKS

    task = TASKS["planted"]
    tokenizer = word_tokenizer(glue_dir)
    torch.manual_seed(0)
    cfg = config(family, len(tokenizer))
    cfg.num_labels = len(task.labels)  # a base model whose (new) head has the planted task's classes
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tokenizer = load_model_and_tokenizer(str(tmp_path), task.labels)
    names = [short_module_name(n) for n in detect_target_modules(model)]
    spec = {names[0]: 1, names[-1]: 2}  # the first layer's attention input, the last layer's FFN output
    setup = planted.PlantedSetup(spec=spec, seed=0, strength="auto", train_rows=48, eval_rows=16,
                                 classes=len(task.labels))
    teacher, pairs, record, updates = planted.prepare_teacher(model, tokenizer, task, setup, None, 24,
                                                              log=lambda _: None)
    rows = planted.label_rows(teacher, tokenizer, task, setup, pairs, 24)
    assert len(rows["train"]) == 48 and len(torch.tensor(rows["validation"]["label"])[0]) == len(task.labels)
    modules, taught = dict(model.named_modules()), dict(teacher.named_modules())
    for full in detect_target_modules(model):
        name = short_module_name(full)
        difference = (taught[full].weight - modules[full].weight).detach()
        if family == "gpt2":
            difference = difference.T  # Conv1D: in x out
        expected = updates.get(name, torch.zeros_like(difference))
        torch.testing.assert_close(difference, expected, atol=1e-6, rtol=1e-5)
    assert record["base_agreement"] <= planted.BASE_AGREEMENT or record["strength_used"] == planted.STRENGTH_LADDER[-1]
