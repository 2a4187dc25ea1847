"""WordPiece tokenisation from a BERT ``vocab.txt`` through the ``tokenizers`` library.

Gives the same ids as the reference BERT tokenizer (basic tokenizer: clean text, split
punctuation and CJK characters, optional lower-casing with accent stripping; then greedy
longest-match WordPiece with ``##`` continuations, ``[UNK]`` for words over 100 characters).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from .checkpoints import CheckpointError, read_vocab

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_tokenizer(vocab_file: str | Path, lowercase: bool = True, max_length: int | None = None) -> Tokenizer:
    """A fast WordPiece tokenizer that adds ``[CLS] a [SEP] (b [SEP])`` like BERT.

    ``lowercase`` also strips accents, as BERT's uncased models do. ``max_length`` enables
    truncation (longest-first) to that many tokens including the special ones.
    """
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise CheckpointError(f"{vocab_file}: missing; point the config at the model's vocab.txt")
    tokens = read_vocab(vocab_file)
    vocab = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)  # first occurrence wins, as in the reference loader
    missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in vocab]
    if missing:
        raise CheckpointError(f"{vocab_file}: not a BERT vocab, it lacks {', '.join(missing)}")
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    special = [t for t in SPECIAL_TOKENS if t in vocab]
    tok.add_special_tokens(special)
    if max_length is not None:
        tok.enable_truncation(max_length=max_length)
    return tok
