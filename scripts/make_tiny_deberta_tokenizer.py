"""Write tiny-deberta's tokenizer: a small SentencePiece model saved as the hub saves DeBERTa-v3-base's.

    python scripts/make_tiny_deberta_tokenizer.py [OUT_DIR]     (default: src/adalora_ablation/tiny_deberta)

The output (spm.model and the two-key tokenizer_config.json) is package data, so tiny-deberta loads through the same
transformers code path as DeBERTa-v3 (spm.model -> DebertaV2Tokenizer). Training is deterministic (fixed corpus,
one thread, no sampling); tests/test_model.py checks that this script reproduces the shipped model.
"""

from __future__ import annotations

import json
import random
import string
import sys
from pathlib import Path

import sentencepiece as spm

from adalora_ablation.data.loading import SYNTHETIC_WORDS

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "adalora_ablation" / "tiny_deberta"
# DeBERTa-v3-base's tokenizer_config.json on the hub holds exactly these two keys.
TOKENIZER_CONFIG = {"do_lower_case": False, "vocab_type": "spm"}


def corpus() -> list[str]:
    """Sentences of the synthetic words (each becomes one piece, so the demo task sees whole words) and one line with
    every printable ASCII character (so that no ASCII text becomes [UNK])."""
    rng = random.Random(0)
    lines = [" ".join(rng.sample(SYNTHETIC_WORDS, 8)) for _ in range(500)]
    return [*lines, " ".join(string.printable[:94])]


def build(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "spm.model", "wb") as model_file:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus()), model_writer=model_file, model_type="unigram",
            vocab_size=256, hard_vocab_limit=False,  # an upper bound: this corpus yields about 150 pieces
            # DeBERTa-v3's ids for its special pieces; [MASK] is not a piece there either (an added token).
            pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]", unk_id=3,
            unk_piece="[UNK]", character_coverage=1.0,
            normalization_rule_name="identity",  # no precompiled NFKC table: keeps the file at about 2 KB
            num_threads=1, shuffle_input_sentence=False, minloglevel=2,
        )
    (out_dir / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG) + "\n")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
