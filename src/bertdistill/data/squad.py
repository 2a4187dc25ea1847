"""SQuAD v1.1: reader, features (seq 384, stride 128, query 64), post-processing and the official
v1.1 EM/F1.

Features follow BERT's ``run_squad`` (as in transformers' SQuAD processor, which the reference
copies): whitespace-split context words, WordPiece per word, answer spans refined by
``_improve_answer_span``, overlapping document windows with ``token_is_max_context``. The
WordPiece work runs through the ``tokenizers`` batch API on pre-split words, so the whole set is
tokenised in a few Rust calls instead of one Python call per word.
"""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class SquadError(ValueError):
    """A SQuAD file that cannot be used; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------
# Official SQuAD v1.1 evaluation (evaluate-v1.1.py)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace."""
    s = s.lower()
    exclude = set(string.punctuation)
    s = "".join(ch for ch in s if ch not in exclude)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def squad_v11_metrics(dataset: Sequence[Mapping[str, Any]], predictions: Mapping[str, str]) -> dict[str, float]:
    """Exact match and F1 in percent over every question of ``dataset`` (the ``data`` list of a
    SQuAD v1.1 JSON); a question without a prediction scores 0, as in the official script."""
    em = f1 = 0.0
    total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                golds = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                em += max(float(exact_match_score(pred, g)) for g in golds)
                f1 += max(f1_score(pred, g) for g in golds)
    if total == 0:
        return {"exact_match": 0.0, "f1": 0.0}
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


# ----------------------------------------------------------------------------------------------
# Reading


def _is_whitespace(c: str) -> bool:
    return c in (" ", "\t", "\r", "\n") or ord(c) == 0x202F


@dataclass
class SquadExample:
    qas_id: str
    question: str
    doc_tokens: list[str]
    answer_text: str | None = None
    start_word: int | None = None
    end_word: int | None = None
    answers: list[str] = field(default_factory=list)


def split_context(context: str) -> tuple[list[str], list[int]]:
    """Whitespace-split words and, for every character, the index of its word."""
    words: list[str] = []
    char_to_word: list[int] = []
    prev_ws = True
    for c in context:
        if _is_whitespace(c):
            prev_ws = True
        else:
            if prev_ws:
                words.append(c)
            else:
                words[-1] += c
            prev_ws = False
        char_to_word.append(len(words) - 1)
    return words, char_to_word


def load_squad_json(path: str | Path) -> list[dict[str, Any]]:
    """The ``data`` list of a SQuAD v1.1 JSON file, checked to have the expected structure; a
    wrong record is a one-line :class:`SquadError` naming it (``data[3].paragraphs[0].qas[5]``)."""
    path = Path(path)
    try:
        # -sig: a byte order mark (some editors write one) is not malformed JSON
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise SquadError(f"{path}: no such file (SQuAD JSON)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SquadError(f"{path}: malformed JSON ({e}); is this a SQuAD v1.1 file?") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise SquadError(f"{path}: no 'data' list; not a SQuAD v1.1 file")
    _check_structure(path, data)
    return data


def _is_offset(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_structure(path: Path, data: list[Any]) -> None:
    """Explicit checks (not ``assert``, which ``python -O`` removes) that name the first bad record."""

    def fail(where: str, what: str) -> None:
        raise SquadError(f"{path}: {where}: {what}; not a SQuAD v1.1 file")

    for ai, article in enumerate(data):
        where = f"data[{ai}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            fail(where, "'paragraphs' must be a list of {context, qas}")
        for pi, p in enumerate(article["paragraphs"]):
            where = f"data[{ai}].paragraphs[{pi}]"
            if not isinstance(p, dict) or not isinstance(p.get("context"), str):
                fail(where, "'context' must be a string")
            if not isinstance(p.get("qas"), list):
                fail(where, "'qas' must be a list of {id, question, answers}")
            for qi, qa in enumerate(p["qas"]):
                where = f"data[{ai}].paragraphs[{pi}].qas[{qi}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("id"), str):
                    fail(where, "'id' must be a string")
                where += f" (id {qa['id']!r:.40})"
                if not isinstance(qa.get("question"), str):
                    fail(where, "'question' must be a string")
                answers = qa.get("answers")
                if not isinstance(answers, list):
                    fail(where, "'answers' must be a list of {text, answer_start}")
                for i, ans in enumerate(answers):
                    if not (
                        isinstance(ans, dict)
                        and isinstance(ans.get("text"), str)
                        and _is_offset(ans.get("answer_start"))
                    ):
                        fail(where, f"answers[{i}] must be {{text: string, answer_start: integer}}, got {ans!r:.60}")


def question_records(data: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(where, qa)`` for every question, ``where`` naming it as in error messages
    (``data[3].paragraphs[0].qas[5] (id 'abc')``)."""
    for ai, article in enumerate(data):
        for pi, p in enumerate(article["paragraphs"]):
            for qi, qa in enumerate(p["qas"]):
                yield f"data[{ai}].paragraphs[{pi}].qas[{qi}] (id {qa['id']!r:.40})", qa


# Why a training question is dropped (the keys read_squad_examples records), worded for messages
# about many questions at once.
DROP_REASONS = {
    "no_answer": "they have no answer",
    "empty_answer": "their answer text is empty",
    "outside": "their answer_start is outside the context",
    "misplaced": "their answer text is not at answer_start",
}


def read_squad_examples(
    data: Sequence[Mapping[str, Any]], training: bool, drops: list[tuple[str, str]] | None = None
) -> tuple[list[SquadExample], int]:
    """Examples of a SQuAD ``data`` list; training uses the first answer and drops questions
    whose answer text is not found at its offset (their count is the second value). ``drops``,
    if given, receives ``(question id, reason)`` per dropped question, reason a key of
    :data:`DROP_REASONS`."""
    examples: list[SquadExample] = []
    dropped = 0

    def drop(qa: Mapping[str, Any], reason: str) -> None:
        nonlocal dropped
        dropped += 1
        if drops is not None:
            drops.append((qa["id"], reason))

    for article in data:
        for paragraph in article["paragraphs"]:
            words, char_to_word = split_context(paragraph["context"])
            for qa in paragraph["qas"]:
                ex = SquadExample(qa["id"], qa["question"], words, answers=[a["text"] for a in qa["answers"]])
                if training:
                    if not qa["answers"]:
                        drop(qa, "no_answer")
                        continue
                    ans = qa["answers"][0]
                    text, offset = ans["text"], ans["answer_start"]
                    if not text:
                        drop(qa, "empty_answer")
                        continue
                    if offset < 0 or offset + len(text) > len(char_to_word):
                        drop(qa, "outside")
                        continue
                    start, end = char_to_word[offset], char_to_word[offset + len(text) - 1]
                    actual = " ".join(words[start : end + 1])
                    if actual.find(" ".join(text.split())) == -1:
                        drop(qa, "misplaced")
                        continue
                    ex.answer_text, ex.start_word, ex.end_word = text, start, end
                examples.append(ex)
    return examples, dropped


# ----------------------------------------------------------------------------------------------
# Features


@dataclass
class SquadFeatures:
    """Arrays of all features; ``token_to_orig`` is −1 outside the document part."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    example_index: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray
    token_to_orig: np.ndarray
    max_context: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.__dict__)


def _check_is_max_context(spans: Sequence[tuple[int, int]], cur: int, position: int) -> bool:
    """True if ``position`` has its best context (min(left, right) + 0.01·length) in span ``cur``."""
    best_score, best = None, None
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best = score, i
    return cur == best


def _improve_span(doc_ids: Sequence[int], start: int, end: int, answer_ids: Sequence[int]) -> tuple[int, int]:
    """The tightest sub-span of [start, end] whose WordPieces equal the tokenised answer."""
    target = list(answer_ids)
    for s in range(start, end + 1):
        for e in range(end, s - 1, -1):
            if list(doc_ids[s : e + 1]) == target:
                return s, e
    return start, end


def build_features(
    examples: Sequence[SquadExample],
    tokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    training: bool = False,
) -> SquadFeatures:
    """Features of all examples (one or more document windows per question)."""
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.no_truncation()
    q_enc = tokenizer.encode_batch([e.question for e in examples], add_special_tokens=False)
    # Each context is tokenised once per distinct paragraph (questions share paragraphs).
    doc_cache: dict[int, Any] = {}
    unique_docs = []
    for e in examples:
        key = id(e.doc_tokens)
        if key not in doc_cache:
            doc_cache[key] = len(unique_docs)
            unique_docs.append(e.doc_tokens)
    d_enc = tokenizer.encode_batch(unique_docs, is_pretokenized=True, add_special_tokens=False) if unique_docs else []
    a_enc = (
        tokenizer.encode_batch([e.answer_text or "" for e in examples], add_special_tokens=False) if training else None
    )

    rows: dict[str, list] = {k: [] for k in ("ids", "types", "ex", "start", "end", "t2o", "maxc")}
    for ex_i, ex in enumerate(examples):
        q = q_enc[ex_i].ids[:max_query_length]
        enc = d_enc[doc_cache[id(ex.doc_tokens)]]
        doc_ids = enc.ids
        tok_to_orig = np.asarray([w for w in enc.word_ids], dtype=np.int64)
        tok_start = tok_end = -1
        if training:
            orig_to_tok = np.searchsorted(tok_to_orig, np.arange(len(ex.doc_tokens) + 1), side="left")
            tok_start = int(orig_to_tok[ex.start_word])
            tok_end = (
                int(orig_to_tok[ex.end_word + 1]) - 1 if ex.end_word < len(ex.doc_tokens) - 1 else len(doc_ids) - 1
            )
            tok_start, tok_end = _improve_span(doc_ids, tok_start, tok_end, a_enc[ex_i].ids)
        max_doc = max_seq_length - len(q) - 3
        spans: list[tuple[int, int]] = []
        offset = 0
        while offset < len(doc_ids):
            length = min(len(doc_ids) - offset, max_doc)
            spans.append((offset, length))
            if offset + length == len(doc_ids):
                break
            offset += min(length, doc_stride)
        if not spans:  # an empty context still yields one window
            spans.append((0, 0))
        for si, (s0, length) in enumerate(spans):
            ids = [cls_id, *q, sep_id, *doc_ids[s0 : s0 + length], sep_id]
            doc_offset = len(q) + 2
            types = [0] * doc_offset + [1] * (length + 1)
            t2o = np.full(max_seq_length, -1, dtype=np.int32)
            maxc = np.zeros(max_seq_length, dtype=bool)
            for j in range(length):
                t2o[doc_offset + j] = tok_to_orig[s0 + j]
                maxc[doc_offset + j] = _check_is_max_context(spans, si, s0 + j)
            start = end = 0
            if training and s0 <= tok_start and tok_end <= s0 + length - 1:
                start, end = tok_start - s0 + doc_offset, tok_end - s0 + doc_offset
            rows["ids"].append(ids)
            rows["types"].append(types)
            rows["ex"].append(ex_i)
            rows["start"].append(start)
            rows["end"].append(end)
            rows["t2o"].append(t2o)
            rows["maxc"].append(maxc)
    n = len(rows["ids"])
    input_ids = np.zeros((n, max_seq_length), dtype=np.int32)
    types = np.zeros((n, max_seq_length), dtype=np.int8)
    mask = np.zeros((n, max_seq_length), dtype=np.int8)
    for r, (ids, ty) in enumerate(zip(rows["ids"], rows["types"], strict=True)):
        input_ids[r, : len(ids)] = ids
        types[r, : len(ty)] = ty
        mask[r, : len(ids)] = 1
    return SquadFeatures(
        input_ids,
        mask,
        types,
        np.asarray(rows["ex"], dtype=np.int32),
        np.asarray(rows["start"], dtype=np.int32),
        np.asarray(rows["end"], dtype=np.int32),
        np.stack(rows["t2o"]) if n else np.zeros((0, max_seq_length), np.int32),
        np.stack(rows["maxc"]) if n else np.zeros((0, max_seq_length), bool),
    )


# ----------------------------------------------------------------------------------------------
# Post-processing


def basic_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """BERT's BasicTokenizer (clean text, CJK split, lower-case + strip accents, punctuation split)."""
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    return [t for t, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(norm.normalize_str(text))]


def _strip_spaces(text: str) -> tuple[str, dict[int, int]]:
    chars, ns_to_s = [], {}
    for i, c in enumerate(text):
        if c == " ":
            continue
        ns_to_s[len(chars)] = i
        chars.append(c)
    return "".join(chars), ns_to_s


def get_final_text(pred_text: str, orig_text: str, lowercase: bool = True) -> str:
    """Project the normalised WordPiece prediction back onto the original text (BERT's
    character alignment); falls back to the original words when alignment fails."""
    tok_text = " ".join(basic_tokenize(orig_text, lowercase))
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text
    end = start + len(pred_text) - 1
    orig_ns, orig_map = _strip_spaces(orig_text)
    tok_ns, tok_map = _strip_spaces(tok_text)
    if len(orig_ns) != len(tok_ns):
        return orig_text
    tok_s_to_ns = {v: k for k, v in tok_map.items()}
    o_start = orig_map.get(tok_s_to_ns[start]) if start in tok_s_to_ns else None
    o_end = orig_map.get(tok_s_to_ns[end]) if end in tok_s_to_ns else None
    if o_start is None or o_end is None:
        return orig_text
    return orig_text[o_start : o_end + 1]


def candidate_spans(
    features: SquadFeatures,
    rows: Iterable[int],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> list[tuple[float, int, int, int]]:
    """Valid answer spans of one question's features ``rows``, best first, as
    ``(start logit + end logit, feature, start, end)`` (BERT's n-best search, as the reference).

    In each feature the ``n_best`` highest start positions are paired with the ``n_best`` highest
    end positions; a pair is dropped when its start or end lies outside the document part (the
    question, ``[CLS]``, ``[SEP]`` and padding have ``token_to_orig`` −1), when end < start, when
    it spans more than ``max_answer_length`` tokens, or when its start token does not have its
    maximal context in this feature (the end token is not checked). Scores are added in float64,
    as the reference's Python floats are (a float32 sum can tie, or swap, spans that differ in the
    last bits); equal scores keep feature order, then start rank, then end rank, as the
    reference's stable sorts do.
    """
    candidates = []
    for f in rows:
        t2o, maxc = features.token_to_orig[f], features.max_context[f]
        s_log = np.asarray(start_logits[f], dtype=np.float64)
        e_log = np.asarray(end_logits[f], dtype=np.float64)
        starts = np.argsort(-s_log, kind="stable")[:n_best]
        ends = np.argsort(-e_log, kind="stable")[:n_best]
        for s in starts:
            if t2o[s] < 0 or not maxc[s]:
                continue
            for e in ends:
                if t2o[e] < 0 or e < s or e - s + 1 > max_answer_length:
                    continue
                candidates.append((float(s_log[s] + e_log[e]), int(f), int(s), int(e)))
    candidates.sort(key=lambda c: -c[0])
    return candidates


def span_text(
    example: SquadExample, features: SquadFeatures, vocab: Sequence[str], f: int, s: int, e: int, lowercase: bool = True
) -> str:
    """The original-form text of tokens ``s..e`` of feature ``f``: the WordPieces joined (``##``
    removed), then projected onto the example's original words by :func:`get_final_text`."""
    pieces = [vocab[i] for i in features.input_ids[f, s : e + 1]]
    tok_text = " ".join(pieces).replace(" ##", "").replace("##", "")
    tok_text = " ".join(tok_text.strip().split())
    words = example.doc_tokens[features.token_to_orig[f, s] : features.token_to_orig[f, e] + 1]
    return get_final_text(tok_text, " ".join(words), lowercase)


def postprocess(
    examples: Sequence[SquadExample],
    features: SquadFeatures,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    vocab: Sequence[str],
    n_best: int = 20,
    max_answer_length: int = 30,
    lowercase: bool = True,
) -> dict[str, str]:
    """Best answer text per question id from per-feature start/end logits: the text of the
    highest-scoring span of :func:`candidate_spans`. A question without any valid span (or
    without features) gets ``""``, on purpose: the reference writes the placeholder text
    ``"empty"`` there, which reads like an answer (and matches a gold answer "empty")."""
    by_example: dict[int, list[int]] = collections.defaultdict(list)
    for f, e in enumerate(features.example_index):
        by_example[int(e)].append(f)
    predictions: dict[str, str] = {}
    for ex_i, ex in enumerate(examples):
        answer = ""
        spans = candidate_spans(features, by_example.get(ex_i, []), start_logits, end_logits, n_best, max_answer_length)
        for _, f, s, e in spans:
            answer = span_text(ex, features, vocab, f, s, e, lowercase)
            if answer:
                break
        predictions[ex.qas_id] = answer
    return predictions


def iter_questions(data: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    for article in data:
        for paragraph in article["paragraphs"]:
            yield from paragraph["qas"]
