"""TinyBERT data augmentation (docs/reference.md#augmentation), exact in its candidates, batched for speed.

Per text: BERT's basic tokenizer gives the words; a word is eligible if it matches ``^[a-z]+$``,
is not a stop word and (SQuAD) is not part of an answer. A single-WordPiece word gets the top-M
masked-LM predictions for ``[CLS] masked-text [SEP] text [SEP]`` minus ``##`` pieces; a
multi-piece word gets its top-M word-vector neighbours among the first 100k words. N rounds then
replace each eligible word with probability p by a random candidate; duplicates are dropped.

What differs from the reference, on purpose:
- all masked copies (of one text and of many texts of the same length) go through the MLM in
  batches under ``inference_mode``, and the vocabulary projection runs only at masked positions;
- each text is WordPiece-tokenised once (the reference re-tokenises it per word);
- neighbour lists are computed once per distinct word with batched matrix products;
- texts over 400 words are processed in 400-word chunks as the reference does, but candidates
  are stored under the word's index in the whole text (the reference stores the chunk-local index
  and corrupts the first chunk);
- a word whose WordPieces start past the first 510 of its chunk gets no candidates and is never
  replaced. The reference does not skip it; what it does depends on the window's last word: if
  that word is one piece, the word is dropped; two pieces, it gets the masked-LM candidates for
  that word's second piece; three or more, it gets its own vector neighbours even if it is a
  single piece;
- the random generator is seeded per text from (seed, text index), so the output does not depend
  on how texts are split into shards or jobs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .logs import progress
from .settings import AugmentSettings

# TinyBERT's hard-coded list: NLTK's English stop words without what/which/who/whom/when/where/
# why/how, plus "'s" and "'re" (173 entries).
STOP_WORDS = frozenset(
    """
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his
himself she she's her hers herself it it's its itself they them their theirs themselves this that that'll these
those am is are was were be been being have has had having do does did doing a an the and but if or because as
until while of at by for with about against between into through during before after above below to from up down
in out on off over under again further then once here there all any both each few more most other some such no
nor not only own same so than too very s t can will just don don't should should've now d ll m o re ve y ain
aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn
mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn
wouldn't 's 're
""".split()
)
_VALID = re.compile(r"^[a-z]+$")
CHUNK_WORDS = 400  # the reference's chunk size: leaves room for WordPiece expansion within 512


@dataclass
class TextCandidates:
    words: list[str]
    candidates: dict[int, list[str]] = field(default_factory=dict)
    mlm_words: int = 0
    vector_words: int = 0


def is_eligible(word: str, protected: frozenset[str] | set[str] = frozenset()) -> bool:
    return bool(_VALID.match(word)) and word not in STOP_WORDS and word not in protected


class WordVectors:
    """Unit-normalised vectors of the first ``limit`` words (GloVe order = frequency order)."""

    def __init__(self, words: Sequence[str], vectors: np.ndarray, limit: int = 100_000) -> None:
        n = min(limit, len(words))
        self.words = list(words[:n])
        self.index = {w: i for i, w in enumerate(self.words)}
        v = torch.from_numpy(np.asarray(vectors[:n], dtype=np.float32))
        norms = v.norm(dim=1, keepdim=True)
        self.unit = torch.where(norms > 0, v / norms.clamp_min(1e-30), torch.zeros_like(v))

    @classmethod
    def load(cls, path: str | Path, limit: int = 100_000) -> WordVectors:
        """A gensim ``KeyedVectors`` file (``.kv``), or a GloVe/word2vec text file."""
        from gensim.models import KeyedVectors

        path = Path(path)
        if path.suffix == ".kv":
            kv = KeyedVectors.load(str(path), mmap="r")
        else:
            kv = load_text_vectors(path, limit)
        return cls(kv.index_to_key, kv.vectors, limit)

    def neighbours(self, words: Iterable[str], m: int, batch: int = 1024) -> dict[str, list[str]]:
        """Top-``m`` cosine neighbours (the word itself excluded) of every known word, batched."""
        known = [w for w in dict.fromkeys(words) if w in self.index]
        out: dict[str, list[str]] = {}
        for start in range(0, len(known), batch):
            part = known[start : start + batch]
            idx = torch.tensor([self.index[w] for w in part])
            sims = self.unit[idx] @ self.unit.T
            sims[torch.arange(len(part)), idx] = -float("inf")
            top = sims.topk(min(m, len(self.words) - 1), dim=1).indices
            for w, row in zip(part, top.tolist(), strict=True):
                out[w] = [self.words[j] for j in row]
        return out


def load_text_vectors(path: Path, limit: int | None = None):
    """GloVe text (no header) or word2vec text (header line) as gensim ``KeyedVectors``."""
    from gensim.models import KeyedVectors

    with open(path, encoding="utf-8") as f:
        first = f.readline().split()
    header = len(first) == 2 and all(t.isdigit() for t in first)
    try:
        return KeyedVectors.load_word2vec_format(str(path), binary=False, no_header=not header, limit=limit)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a GloVe or word2vec text file ({e})") from None


def convert_vectors(source: str | Path, output: str | Path, fmt: str = "auto") -> int:
    """Convert word vectors once into gensim's ``KeyedVectors`` format; returns the word count.

    ``fmt``: ``glove``/``word2vec`` text, ``npy`` (a folder with an ``.npy`` matrix and a
    ``.parquet``/``.txt`` word list in row order), or ``auto``.
    """
    import os

    from gensim.models import KeyedVectors

    source, output = Path(source), Path(output)
    if fmt == "npy" or (fmt == "auto" and source.is_dir()):
        mats = sorted(source.glob("*.npy"))
        lists = sorted(source.glob("*.parquet")) + sorted(source.glob("*.txt"))
        if not mats or not lists:
            raise ValueError(f"{source}: expected an .npy matrix and a .parquet/.txt word list")
        vectors = np.load(mats[0], mmap_mode="r")
        if lists[0].suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(lists[0])
            words = [str(w) for w in table.column(0).to_pylist()]
        else:
            words = lists[0].read_text(encoding="utf-8").split("\n")[: len(vectors)]
        if len(words) != len(vectors):
            raise ValueError(f"{source}: {len(words)} words for {len(vectors)} vectors")
        kv = KeyedVectors(vector_size=vectors.shape[1])
        kv.add_vectors(words, np.asarray(vectors, dtype=np.float32))
    else:
        kv = load_text_vectors(source)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    kv.save(str(tmp))
    for extra in tmp.parent.glob(f"{tmp.name}.*"):  # gensim may write side files for big arrays
        os.replace(extra, output.with_name(output.name + extra.name[len(tmp.name) :]))
    os.replace(tmp, output)
    return len(kv.index_to_key)


class Augmentor:
    """Candidate generation for many texts with one batched MLM pass."""

    def __init__(
        self,
        mlm,
        tokenizer,
        vocab: Sequence[str],
        vectors: WordVectors,
        settings: AugmentSettings,
        device: str | torch.device = "cpu",
        lowercase: bool = True,
    ) -> None:
        self.mlm = mlm.eval().to(device)
        self.tok = tokenizer
        self.tok.no_truncation()
        self.vocab = list(vocab)
        self.vectors = vectors
        self.s = settings
        self.device = torch.device(device)
        self.lowercase = lowercase
        self.cls, self.sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        self.mask = tokenizer.token_to_id("[MASK]")
        # The reference's 512 (510 pieces + [CLS]/[SEP]), or less for an MLM with fewer positions.
        self.max_len = min(512, mlm.config.max_position_embeddings)

    def words(self, text: str) -> list[str]:
        from .data.squad import basic_tokenize

        return basic_tokenize(text, self.lowercase)

    def candidates(
        self, texts: Sequence[str], protected: Sequence[Iterable[str]] | None = None
    ) -> list[TextCandidates]:
        """Candidate lists for every eligible word of every text (keys: word index in the text)."""
        results = [TextCandidates(self.words(t)) for t in texts]
        jobs: dict[int, list[tuple[int, int, list[int], int, int]]] = {}  # length -> (text, word, ids, n_first, pos)
        vector_words: list[tuple[int, int, str]] = []
        chunk_texts, chunk_refs = [], []
        for ti, res in enumerate(results):
            prot = set(protected[ti]) if protected is not None else set()
            for start in range(0, len(res.words), CHUNK_WORDS):
                chunk = res.words[start : start + CHUNK_WORDS]
                eligible = [i for i, w in enumerate(chunk) if is_eligible(w, prot)]
                if eligible:
                    chunk_texts.append(chunk)
                    chunk_refs.append((ti, start, eligible))
        # One WordPiece pass for all chunks (words are already basic-tokenised).
        encs = self.tok.encode_batch(chunk_texts, is_pretokenized=True, add_special_tokens=False) if chunk_texts else []
        for (ti, start, eligible), chunk, enc in zip(chunk_refs, chunk_texts, encs, strict=True):
            pieces = enc.ids[: self.max_len - 2]
            word_ids = enc.word_ids[: self.max_len - 2]
            first_of_word: dict[int, int] = {}
            count: dict[int, int] = {}
            for j, w in enumerate(word_ids):
                first_of_word.setdefault(w, j)
                count[w] = count.get(w, 0) + 1
            second = [*pieces, self.sep][: self.max_len - len(pieces) - 2]
            for i in eligible:
                if i not in count:
                    # Its pieces start past the window (510 pieces at 512 positions): no
                    # candidates. The reference does not skip such a word; its piece search ends
                    # on the window's last word and gives it wrong candidates
                    # (docs/reference.md#differences-from-the-reference).
                    continue
                if count[i] == 1:
                    j = first_of_word[i]
                    ids = [self.cls, *pieces, self.sep, *second]
                    ids[1 + j] = self.mask
                    jobs.setdefault(len(ids), []).append((ti, start + i, ids, len(pieces) + 2, 1 + j))
                else:
                    vector_words.append((ti, start + i, chunk[i]))
        self._run_mlm(jobs, results)
        neighbours = self.vectors.neighbours((w for _, _, w in vector_words), self.s.m)
        for ti, gi, w in vector_words:
            results[ti].candidates[gi] = list(neighbours.get(w, [])) or [w]
            results[ti].vector_words += 1
        return results

    @torch.inference_mode()
    def _run_mlm(self, jobs, results: list[TextCandidates]) -> None:
        bar = progress(sum(len(items) for items in jobs.values()), "MLM candidates", "word")
        for length, items in jobs.items():
            per_batch = max(1, self.s.max_batch_tokens // length)
            for b in range(0, len(items), per_batch):
                part = items[b : b + per_batch]
                ids = torch.tensor([it[2] for it in part], device=self.device)
                types = torch.zeros_like(ids)
                for r, it in enumerate(part):
                    types[r, it[3] :] = 1
                where = torch.zeros_like(ids, dtype=torch.bool)
                where[torch.arange(len(part)), torch.tensor([it[4] for it in part])] = True
                logits = self.mlm(ids, None, types, masked_positions=where).logits  # [len(part), V]
                # NVIDIA pads the vocabulary to a multiple of 8; padded rows are not tokens.
                top = logits[:, : len(self.vocab)].float().topk(self.s.m, dim=1).indices.tolist()
                for it, row in zip(part, top, strict=True):
                    words = [self.vocab[k] for k in row if not self.vocab[k].startswith("##")]
                    ti, gi = it[0], it[1]
                    results[ti].candidates[gi] = words or [results[ti].words[gi]]
                    results[ti].mlm_words += 1
                if bar:
                    bar.update(len(part))
        if bar:
            bar.close()


def generate(text: str, cand: TextCandidates, settings: AugmentSettings, text_index: int) -> list[str]:
    """The original text plus up to N distinct variants (TinyBERT's sampling loop)."""
    rng = random.Random(f"bertdistill-augment-{settings.seed}-{text_index}")
    out = [text]
    seen = {text}
    for _ in range(settings.n):
        new = list(cand.words)
        for idx in sorted(cand.candidates):
            choice = rng.choice(cand.candidates[idx])
            if rng.random() < settings.p:
                new[idx] = choice
        joined = " ".join(new)
        if joined not in seen:
            seen.add(joined)
            out.append(joined)
    return out


# ----------------------------------------------------------------------------------------------
# Task-level augmentation


@dataclass
class AugmentStats:
    texts: int = 0
    eligible_words: int = 0
    mlm_words: int = 0
    vector_words: int = 0
    augmented_examples: int = 0
    dropped_contexts: int = 0

    def add(self, other: AugmentStats) -> None:
        for k in self.__dict__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


def augment_classification(
    augmentor: Augmentor, texts: Sequence[Sequence[str]], indices: Sequence[int], settings: AugmentSettings
) -> tuple[list[tuple[int, list[list[str]]]], AugmentStats, list[dict[str, Any]]]:
    """Per example ``i`` of ``indices``: (i, [original row, variant rows...]); each row holds one
    string per text column and every variant keeps the example's label.

    Each text column is augmented on its own, the other columns kept original (TinyBERT augments
    every text column of a pair task in turn). Text ``(i, column c)`` is seeded from
    ``i * columns + c``, so single-sentence tasks seed text ``i`` from ``i``."""
    ncols = len(texts[indices[0]]) if len(indices) else 1
    flat = [texts[i][c] for i in indices for c in range(ncols)]
    cands = augmentor.candidates(flat)
    groups, samples, stats = [], [], AugmentStats(texts=len(flat))
    for k, i in enumerate(indices):
        original = list(texts[i])
        rows, seen = [original], {tuple(original)}
        for c in range(ncols):
            cand = cands[k * ncols + c]
            variants = generate(original[c], cand, settings, i * ncols + c)
            stats.eligible_words += len(cand.candidates)
            stats.mlm_words += cand.mlm_words
            stats.vector_words += cand.vector_words
            for v in variants[1:]:
                row = [*original[:c], v, *original[c + 1 :]]
                if tuple(row) not in seen:
                    seen.add(tuple(row))
                    rows.append(row)
            if len(samples) < 5 and len(variants) > 1:
                samples.append({"original": original[c], "augmented": variants[1:3]})
        stats.augmented_examples += len(rows) - 1
        groups.append((i, rows))
    return groups, stats, samples


def _answer_offsets(words: list[str], answer_words: list[str], expected_word: int) -> int | None:
    """Char offset (in ' '.join(words)) of the occurrence of answer_words nearest expected_word."""
    n = len(answer_words)
    if n == 0:
        return None
    best, best_d = None, None
    for k in range(len(words) - n + 1):
        if words[k : k + n] == answer_words:
            d = abs(k - expected_word)
            if best_d is None or d < best_d:
                best, best_d = k, d
    if best is None:
        return None
    return sum(len(w) + 1 for w in words[:best])


def augment_squad_paragraphs(
    augmentor: Augmentor, paragraphs: Sequence[Mapping[str, Any]], indices: Sequence[int], settings: AugmentSettings
) -> tuple[list[dict[str, Any]], AugmentStats, list[dict[str, Any]]]:
    """Augmented copies of SQuAD paragraphs (contexts only; every answer word protected; answer
    offsets re-found at the occurrence nearest the original; ids made unique). Returns the new
    paragraphs (originals not included) in order."""
    paras = [paragraphs[i] for i in indices]
    protected = [{w for qa in p["qas"] for a in qa["answers"] for w in augmentor.words(a["text"])} for p in paras]
    cands = augmentor.candidates([p["context"] for p in paras], protected)
    out, samples, stats = [], [], AugmentStats(texts=len(paras))
    for i, p, cand in zip(indices, paras, cands, strict=True):
        stats.eligible_words += len(cand.candidates)
        stats.mlm_words += cand.mlm_words
        stats.vector_words += cand.vector_words
        # Where each answer starts, in basic-token positions of the original context.
        positions = []
        for qa in p["qas"]:
            a = qa["answers"][0]
            positions.append((augmentor.words(a["text"]), len(augmentor.words(p["context"][: a["answer_start"]]))))
        for j, variant in enumerate(generate(p["context"], cand, settings, i)[1:]):
            words = variant.split(" ")
            qas, ok = [], True
            for qa, (ans_words, expected) in zip(p["qas"], positions, strict=True):
                offset = _answer_offsets(words, ans_words, expected)
                if offset is None:
                    ok = False
                    break
                text = " ".join(ans_words)
                qas.append({**qa, "id": f"{qa['id']}_aug{j}", "answers": [{"text": text, "answer_start": offset}]})
            if not ok:
                stats.dropped_contexts += 1
                continue
            out.append({"context": variant, "qas": qas, "augmented_from": i})
            stats.augmented_examples += len(qas)
            if len(samples) < 5 and j == 0:
                samples.append({"original": p["context"], "augmented": [variant]})
    return out, stats, samples
