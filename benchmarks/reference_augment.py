"""A straightforward implementation of docs/reference.md#augmentation (TinyBERT/NVIDIA data_augmentation.py):
per eligible word, re-tokenise the chunk, run one masked-LM forward with batch 1 (no
``no_grad``, as the reference: every forward builds its autograd graph), or search all word
vectors with numpy. ``no_grad=True`` wraps the forward in ``torch.no_grad()``, the one-line fix a
user of the reference would make: benchmarks/augment.py reports that baseline too, so the speed-up
is not only over the graph-building cost. Candidates are keyed by the word's index in the whole
text (the reference's chunk-index bug fixed), so they compare one to one with
``bertdistill.augment``. Used by tests/test_augment.py and benchmarks/augment.py.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

from bertdistill.augment import STOP_WORDS


class NaiveReference:
    """docs/reference.md#augmentation as written: per word, re-tokenise, one MLM forward with batch 1, numpy
    neighbours; candidates keyed by the word's index in the whole text (chunk bug fixed)."""

    def __init__(self, hf_mlm, vocab_file, words, vectors, m=15, max_len=512, device="cpu", no_grad=False):
        self.no_grad = no_grad
        self.tok = BertTokenizerLegacy(str(vocab_file), do_lower_case=True)
        self.device = torch.device(device)
        self.mlm = hf_mlm.eval().to(self.device)
        self.m = m
        self.max_len = max_len
        self.words = words[:100000]
        self.index = {w: i for i, w in enumerate(self.words)}
        v = np.asarray(vectors[:100000], dtype=np.float64)
        self.emb = v / np.linalg.norm(v, axis=1, keepdims=True)

    def word_distance(self, word):
        if word not in self.index:
            return []
        dist = self.emb @ self.emb[self.index[word]]
        dist[self.index[word]] = -np.inf
        return [self.words[i] for i in np.argsort(-dist, kind="stable")[: self.m]]

    def masked_lm(self, sent, word_pieces, mask_id):
        tokenized = ["[CLS]"] + self.tok.tokenize(sent)[: self.max_len - 2]
        n = len(tokenized)
        text = (word_pieces + ["[SEP]"] + tokenized[1:] + ["[SEP]"])[: self.max_len]
        ids = self.tok.convert_tokens_to_ids(text)
        segments = [0] * (n + 1) + [1] * (len(text) - n - 1)
        with torch.no_grad() if self.no_grad else contextlib.nullcontext():
            logits = self.mlm(
                torch.tensor([ids], device=self.device), token_type_ids=torch.tensor([segments], device=self.device)
            ).logits[0, mask_id]
        top = torch.argsort(logits, descending=True)[: self.m].tolist()
        return [t for t in self.tok.convert_ids_to_tokens(top) if not t.startswith("##")]

    def word_augment(self, sentence, mask_idx, word):
        pieces = ["[CLS]"] + self.tok.tokenize(sentence)[: self.max_len - 2]
        token_idx, ids = -1, []
        for i in range(1, len(pieces)):
            if "##" not in pieces[i]:
                token_idx += 1
                if token_idx < mask_idx:
                    ids = []
                elif token_idx == mask_idx:
                    ids = [i]
                else:
                    break
            else:
                ids.append(i)
        if len(ids) == 1:
            pieces[ids[0]] = "[MASK]"
            cands = self.masked_lm(sentence, pieces, ids[0])
        elif len(ids) > 1:
            cands = self.word_distance(word)
        else:
            return None
        return cands or [word]

    def candidates(self, text, blacklist=""):
        tokens = self.tok.basic_tokenizer.tokenize(text)
        black = self.tok.basic_tokenizer.tokenize(blacklist) if blacklist else []
        out = {}
        for ptr in range(0, len(tokens), 400):
            chunk = tokens[ptr : ptr + 400]
            for idx, word in enumerate(chunk):
                if (
                    word.isascii()
                    and word.isalpha()
                    and word.islower()
                    and word not in STOP_WORDS
                    and word not in black
                ):
                    c = self.word_augment(" ".join(chunk), idx, word)
                    if c is not None:
                        out[ptr + idx] = c
        return out
