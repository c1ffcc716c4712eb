"""Model side: load (hub, local folder or the built-in tiny-deberta), find the modules to adapt, wrap with AdaLoRA."""

from __future__ import annotations

import os
import re

import torch
from peft import AdaLoraConfig, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DebertaV2Config,
    PreTrainedTokenizerFast,
)

from .errors import UsageError

TINY_DEBERTA = "tiny-deberta"

# Linear leaf names of the six adapted matrices per encoder layer, per architecture (Q, K, V, attention output,
# FFN in, FFN out; the last three are all called "dense"). Unknown architectures fall back to every Linear of
# every encoder layer except relative-position projections.
TARGET_MODULES_MAP = {
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "deberta": ["in_proj", "dense"],
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
}
_HEAD_NAMES = ("pooler", "classifier", "score")
_POSITION_PROJ = re.compile(r"(^|\.)pos_\w*proj$")


# -- tiny-deberta ----------------------------------------------------------------------------------------------
def tiny_deberta_config(num_labels: int = 2, num_layers: int = 2, hidden: int = 64, vocab_size: int = 512):
    """A DeBERTa-v3-shaped config (relative attention, shared attention key, no absolute positions), tiny."""
    return DebertaV2Config(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=4,
        intermediate_size=hidden * 2, max_position_embeddings=512, relative_attention=True, position_buckets=64,
        norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
        position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7, num_labels=num_labels,
        pooler_hidden_size=hidden, pooler_hidden_act="gelu", pooler_dropout=0.0, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        # Wider than BERT's 0.02 so that a frozen random encoder still mixes tokens enough for the adapters
        # to learn the synthetic task in a few hundred steps.
        initializer_range=0.1,
    )


def tiny_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A local WordPiece tokenizer: whole words for the synthetic vocabulary, characters for anything else."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    from .data import SYNTHETIC_WORDS

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127)]
    vocab_list = specials + list(words or SYNTHETIC_WORDS) + chars + [f"##{c}" for c in chars]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]",
        mask_token="[MASK]", model_max_length=512,
    )


# -- loading ---------------------------------------------------------------------------------------------------
def load_model_and_tokenizer(model_name: str, labels: tuple[str, ...]):
    label_maps = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    if model_name == TINY_DEBERTA:
        tokenizer = tiny_tokenizer()
        config = tiny_deberta_config(num_labels=len(labels), vocab_size=len(tokenizer))
        config.update(label_maps)
        return AutoModelForSequenceClassification.from_config(config), tokenizer
    # A path-like name that is not a folder is a typo, not a hub id: say so instead of asking the hub.
    looks_local = model_name.startswith((".", "/", "~")) or os.path.exists(model_name)
    if looks_local and not os.path.isdir(os.path.expanduser(model_name)):
        raise UsageError(f"model folder {model_name!r} does not exist (or is not a folder); pass --model with a hub id "
                         f"or an existing model folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        model = AutoModelForSequenceClassification.from_pretrained(model_name, num_labels=len(labels), **label_maps)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"cannot load model {model_name!r} ({first}); offline, pass --model /path/to/local/folder "
            f"or set ADALORA_MODEL_PATH"
        ) from None
    return model, tokenizer


# -- what to adapt, what to train in full ----------------------------------------------------------------------
def encoder_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every encoder layer: the children of the longest ModuleList named *layer/*layers."""
    best: tuple[str, torch.nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in ("layer", "layers"):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        return []
    return [(f"{best[0]}.{i}", layer) for i, layer in enumerate(best[1])]


def detect_target_modules(model: torch.nn.Module, suffixes: list[str] | None = None) -> list[str]:
    """Full names of the Linear modules to adapt: by default, per encoder layer, Q/K/V, attention output dense,
    FFN intermediate dense and FFN output dense; never the pooler, the classifier or DeBERTa's pos_*_proj."""
    if suffixes is None:
        suffixes = TARGET_MODULES_MAP.get(getattr(model.config, "model_type", None))
    found = []
    for layer_name, layer in encoder_layers(model):
        for name, module in layer.named_modules():
            if not isinstance(module, torch.nn.Linear) or _POSITION_PROJ.search(name):
                continue
            if suffixes is None or name.split(".")[-1] in suffixes:
                found.append(f"{layer_name}.{name}")
    if not found:
        linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        wanted = f"names ending in {suffixes}" if suffixes else "Linear layers inside encoder layers"
        raise UsageError(
            f"no target modules found ({wanted}); pass --target-modules with some of the model's Linear modules: "
            f"{', '.join(linears[:40])}{' ...' if len(linears) > 40 else ''}"
        )
    return found


def detect_head_modules(model: torch.nn.Module) -> list[str]:
    """The classification head (pooler, classifier): trained in full, as the original AdaLoRA GLUE code does."""
    heads = []
    for name, module in model.named_modules():
        leaf = name.split(".")[-1]
        if leaf in _HEAD_NAMES and any(True for _ in module.parameters()) and leaf not in heads:
            heads.append(leaf)
    return heads


def wrap_with_adalora(model, target_modules: list[str], modules_to_save: list[str], adalora_args, total_step: int):
    config = AdaLoraConfig(
        # copies: PEFT appends its own defaults to modules_to_save in place
        task_type="SEQ_CLS", target_modules=list(target_modules), modules_to_save=list(modules_to_save),
        init_r=adalora_args.init_r, target_r=adalora_args.target_r, lora_alpha=adalora_args.lora_alpha,
        lora_dropout=adalora_args.lora_dropout, tinit=adalora_args.tinit, tfinal=adalora_args.tfinal,
        deltaT=adalora_args.deltaT, beta1=adalora_args.beta1, beta2=adalora_args.beta2,
        orth_reg_weight=adalora_args.orth_reg_weight, total_step=total_step,
    )
    return get_peft_model(model, config)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}
