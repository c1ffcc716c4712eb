"""Model side: load (hub, local folder or the built-in tiny-deberta), find the modules to adapt, wrap with AdaLoRA."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import torch
from peft import AdaLoraConfig, get_peft_model
from transformers import (
    AutoModelForSequenceClassification, AutoTokenizer, Conv1D, DebertaV2Config, DebertaV2TokenizerFast,
)

from ..errors import UsageError, first_line

TINY_DEBERTA = "tiny-deberta"
TINY_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "tiny_deberta"

# Linear leaf names of the six adapted matrices per encoder layer, per architecture (Q, K, V, attention output,
# FFN in, FFN out; the last three are all called "dense"). Unknown architectures fall back to every Linear of
# every encoder layer except relative-position projections.
TARGET_MODULES_MAP = {
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "deberta": ["in_proj", "dense"],
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    # Decoder-only models, per layer: attention Q, K, V, output and the MLP's matrices.
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    # GPT-2's fused Q/K/V (c_attn), attention output (attn.c_proj), MLP in (c_fc) and out (mlp.c_proj): Conv1D
    # layers (weight stored in x out), which PEFT's AdaLoRA adapts with fan_in_fan_out.
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
# Decoder-only models pool the last non-padding token; they need a padding token, and right padding.
DECODER_TYPES = ("llama", "qwen2", "mistral", "opt", "gpt2")
ADAPTABLE = (torch.nn.Linear, Conv1D)
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


def tiny_tokenizer():
    """tiny-deberta's tokenizer: a small SentencePiece model in DeBERTa-v3-base's hub layout (package data written by
    scripts/make_tiny_deberta_tokenizer.py), loaded by the class that AutoTokenizer picks for DeBERTa-v3."""
    return DebertaV2TokenizerFast.from_pretrained(str(TINY_TOKENIZER_DIR))


# -- loading ---------------------------------------------------------------------------------------------------
def load_model_and_tokenizer(model_name: str, labels: tuple[str, ...]):
    """No labels means a regression task (STS-B): one output trained with MSE."""
    if labels:
        head = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {n: i for i, n in enumerate(labels)}}
    else:
        head = {"num_labels": 1, "problem_type": "regression"}
    if model_name != TINY_DEBERTA:
        # A path-like name that is not a folder is a typo, not a hub id: say so instead of asking the hub.
        looks_local = model_name.startswith((".", "/", "~")) or os.path.exists(model_name)
        if looks_local and not os.path.isdir(os.path.expanduser(model_name)):
            raise UsageError(f"model folder {model_name!r} does not exist (or is not a folder); pass --model with a "
                             f"hub id or an existing model folder")
    try:
        tokenizer = tiny_tokenizer() if model_name == TINY_DEBERTA else AutoTokenizer.from_pretrained(model_name)
    except Exception as exc:  # hub, file and conversion errors come in many types; each names its cause
        raise UsageError(cannot_load_message(model_name, "tokenizer", exc)) from None
    check_tokenizer(tokenizer, model_name)
    if model_name == TINY_DEBERTA:
        config = tiny_deberta_config(vocab_size=len(tokenizer))
        config.update(head)
        return AutoModelForSequenceClassification.from_config(config), tokenizer
    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_name, **head)
    except Exception as exc:
        raise UsageError(cannot_load_message(model_name, "model", exc)) from None
    prepare_padding(model, tokenizer)
    return model, tokenizer


def prepare_padding(model, tokenizer) -> None:
    """Decoder-only classifiers (Llama, Qwen2, Mistral, OPT, GPT-2) read the logits at the last token that is not
    padding, found through config.pad_token_id: give a tokenizer without a padding token its end-of-text token as
    one (as the Llama/GPT-2 fine-tuning recipes do), tell the model, and pad on the right so that the real tokens
    come first. Encoders are left as they are."""
    if getattr(model.config, "model_type", None) not in DECODER_TYPES:
        return
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id


def spm_reader_problem() -> str | None:
    """Why transformers cannot read a SentencePiece model (DeBERTa-v3's spm.model) here, or None.

    It needs sentencepiece and protobuf, and protobuf must be at least as new as the code sentencepiece generated for
    it. Without them transformers silently falls back to a tiktoken reader, which then fails with a misleading error.
    """
    for module, package in (("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")):
        try:
            importlib.import_module(module)
        except ImportError:
            return f"needs {package}, which is not installed; pip install {package}"
    try:
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401  what transformers reads spm.model with
    except Exception as exc:
        import google.protobuf

        return (f"needs protobuf to load sentencepiece's model format, which fails with protobuf "
                f"{google.protobuf.__version__} ({first_line(exc)}); pip install -U protobuf")
    return None


def cannot_load_message(model_name: str, part: str, exc: Exception) -> str:
    """One line with the real cause; the offline hint only when the hub could not be reached or had no such model."""
    what = f"the tokenizer of model {model_name!r}" if part == "tokenizer" else f"model {model_name!r}"
    problem = spm_reader_problem() if part == "tokenizer" else None
    if problem:
        return f"cannot load {what}: reading its SentencePiece model (spm.model) {problem}"
    if part == "tokenizer" and (no_file := no_tokenizer_file(model_name)):
        return f"cannot load {what}: {no_file}"
    message = f"cannot load {what} ({first_line(exc)})"
    if is_hub_failure(exc) and not os.path.isdir(os.path.expanduser(model_name)):
        message += "; offline, pass --model /path/to/local/folder or set ADALORA_MODEL_PATH"
    return message


def is_hub_failure(exc: BaseException | None) -> bool:
    """Whether the hub was unreachable, is switched off (HF_HUB_OFFLINE) or answered with an error."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    hub_errors = (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, hub_errors):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


# A tokenizer's vocabulary: SentencePiece (DeBERTa-v3's spm.model and other *.model), tokenizers' JSON, WordPiece, BPE.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


def no_tokenizer_file(model_name: str) -> str | None:
    """For a local folder without any tokenizer vocabulary, the line that says so; otherwise None."""
    folder = Path(model_name).expanduser()
    if not folder.is_dir() or any((folder / f).is_file() for f in TOKENIZER_FILES) or any(folder.glob("*.model")):
        return None
    return (f"the folder holds no tokenizer vocabulary (DeBERTa-v3 needs spm.model beside tokenizer_config.json; "
            f"other models have one of {', '.join(TOKENIZER_FILES)})")


# Plain English that every real tokenizer maps to something other than [UNK].
_PROBE = "The cat sat on the mat."


def check_tokenizer(tokenizer, model_name: str) -> None:
    """Refuse a tokenizer that would train on something else than the text:

    - transformers 5 builds a DeBERTa-v2/v3 tokenizer from its special tokens alone when spm.model is missing, and
      that turns every word into [UNK]: a run on it would train on nothing;
    - a tokenizer that has a separator token but leaves it out of a sentence pair (transformers 5.0-5.3 do so for
      DeBERTa's spm.model, and so does one saved without its post-processor) runs the two sentences together: the
      model never sees where one ends, and the results differ from the same model's elsewhere."""
    ids = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    if ids and tokenizer.unk_token_id is not None and all(i == tokenizer.unk_token_id for i in ids):
        cause = no_tokenizer_file(model_name) or "its vocabulary is missing or broken"
        raise UsageError(f"the tokenizer of model {model_name!r} has {len(tokenizer)} tokens and turns every word "
                         f"into {tokenizer.unk_token}: {cause}")
    sep = tokenizer.sep_token_id
    if sep is not None and sep not in tokenizer(_PROBE, _PROBE)["input_ids"]:
        import transformers

        raise UsageError(f"the tokenizer of model {model_name!r} encodes a sentence pair without its separator "
                         f"{tokenizer.sep_token} (transformers {transformers.__version__}); transformers 5.0-5.3 "
                         f"do so for DeBERTa's spm.model: pip install 'transformers>=4.57,!=5.0.*,!=5.1.*,!=5.2.*,"
                         f"!=5.3.*', or give the tokenizer its post-processor back")


# -- what to adapt, what to train in full ----------------------------------------------------------------------
def encoder_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every encoder (or decoder) layer: the children of the longest ModuleList named *layer,
    *layers or GPT-2's *h."""
    best: tuple[str, torch.nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in ("layer", "layers", "h"):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        return []
    return [(f"{best[0]}.{i}", layer) for i, layer in enumerate(best[1])]


def detect_target_modules(model: torch.nn.Module, suffixes: list[str] | None = None) -> list[str]:
    """Full names of the Linear (or GPT-2 Conv1D) modules to adapt: by default, per encoder layer, Q/K/V, attention
    output dense, FFN intermediate dense and FFN output dense (decoders: TARGET_MODULES_MAP's names per layer);
    never the pooler, the classifier or score head, or DeBERTa's pos_*_proj."""
    if suffixes is None:
        suffixes = TARGET_MODULES_MAP.get(getattr(model.config, "model_type", None))
    found = []
    for layer_name, layer in encoder_layers(model):
        for name, module in layer.named_modules():
            if not isinstance(module, ADAPTABLE) or _POSITION_PROJ.search(name):
                continue
            if suffixes is None or name.split(".")[-1] in suffixes:
                found.append(f"{layer_name}.{name}")
    if not found:
        linears = [n for n, m in model.named_modules() if isinstance(m, ADAPTABLE)]
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
    # GPT-2's Conv1D stores its weight as (in, out); PEFT adapts it with fan_in_fan_out (and warns unless it is set)
    modules = dict(model.named_modules())
    fan_in_fan_out = any(isinstance(modules.get(name), Conv1D) for name in target_modules)
    config = AdaLoraConfig(
        fan_in_fan_out=fan_in_fan_out,
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
