"""Corpus preparation: text files or a Wikipedia XML dump -> text shards of one sentence per
line, documents separated by a blank line (the input format of Google's ``create_pretraining_data``).

Streaming: documents are read and written one at a time, so memory does not grow with the corpus
(a Wikipedia dump is ~20 GB of text). Document ``k`` goes to text shard ``k mod N`` (round robin),
so pre-training shard job ``i`` reads text shard ``i`` only.

Sentences are split with nltk's Punkt. Its English model cannot be downloaded here, so an
unsupervised ``PunktSentenceTokenizer`` is trained on a bounded prefix of the corpus itself
(``punkt_train_chars``); nltk data is never fetched.
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

_HEADING = re.compile(r"^\s*=+[^=]+=+\s*$")
_MARKUP = re.compile(r"'{2,}")


class CorpusError(ValueError):
    """Unusable corpus input; the message names the file and the fix."""


def _text_lines(path: Path) -> Iterator[str]:
    """Lines of a UTF-8 file, read one at a time; a non-UTF-8 byte is a one-line error with its
    offset in the file."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{path}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {offset + e.start}); "
                    "convert it first, e.g. `iconv -f latin1 -t utf-8`"
                ) from None
            offset += len(raw)


def text_documents(path: str | Path) -> Iterator[str]:
    """Documents of a plain-text file: blocks separated by blank lines (a file without blank
    lines is one document), read line by line. Line breaks inside a block are treated as
    wrapping, not as sentence ends; Punkt finds the sentences."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file (corpus source)")
    block: list[str] = []
    for line in _text_lines(path):
        if line.strip():
            block.extend(line.split())
        elif block:
            yield " ".join(block)
            block = []
    if block:
        yield " ".join(block)


def wiki_documents(path: str | Path, min_chars: int = 200) -> Iterator[str]:
    """Articles of a Wikipedia XML dump (``.xml`` or ``.xml.bz2``) via gensim's wiki tools.

    Main-namespace pages only; redirects, section headings and bold/italic quotes removed;
    articles shorter than ``min_chars`` skipped.
    """
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file (Wikipedia dump)")
    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rb") as f:
            for _title, text, _pageid in extract_pages(f, filter_namespaces=("0",)):
                clean = filter_wiki(text)
                if clean.lstrip().lower().startswith("#redirect"):
                    continue
                lines = [_MARKUP.sub("", ln).strip() for ln in clean.split("\n")]
                lines = [ln for ln in lines if ln and not _HEADING.match(ln)]
                doc = "\n".join(lines)
                if len(doc) >= min_chars:
                    yield doc
    except (OSError, EOFError) as e:
        raise CorpusError(f"{path}: not a readable Wikipedia XML dump ({e})") from None


def iter_documents(sources: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """Documents from every source ``{"path": ..., "format": "text" | "wiki"}``, in order.
    A folder source contributes its ``*.txt`` files in name order.

    A source that yields no document is a :class:`CorpusError` naming it: with other sources
    around it would otherwise vanish from the corpus unnoticed (a wrong path or format)."""
    for src in sources:
        path = Path(src["path"])
        fmt = src.get("format", "text")
        min_chars = src.get("min_chars", 200)
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        if not files:
            raise CorpusError(f"{path}: no *.txt files in this corpus source folder; add them or fix the path")
        n = 0
        for f in files:
            for doc in wiki_documents(f, min_chars) if fmt == "wiki" else text_documents(f):
                n += 1
                yield doc
        if n == 0:
            why = f"no main-namespace article of {min_chars}+ characters" if fmt == "wiki" else "empty or blank"
            raise CorpusError(f"{path}: no documents in this corpus source ({why}); fix the path or drop the source")


def train_punkt(text: str):
    """An unsupervised Punkt sentence splitter trained on ``text`` (no nltk data needed)."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTrainer

    trainer = PunktTrainer()
    trainer.train(text, finalize=True)
    return PunktSentenceTokenizer(trainer.get_params())


_SPLITTER = None  # the Punkt model; each sentence-splitting process receives a copy at start


def _set_splitter(splitter) -> None:
    global _SPLITTER
    _SPLITTER = splitter


def _sentences(args: tuple[str, int]) -> list[str]:
    doc, min_chars = args
    return [
        " ".join(s.split()) for para in doc.split("\n") for s in _SPLITTER.tokenize(para) if len(s.strip()) >= min_chars
    ]


def _batches(docs: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(itertools.islice(docs, size)):
        yield batch


def prepare_corpus(
    sources: Iterable[Mapping[str, Any]],
    output: str | Path | Sequence[str | Path],
    stats_output: str | Path | None = None,
    punkt_train_chars: int = 5_000_000,
    min_sentence_chars: int = 2,
    processes: int = 1,
    exclude: Iterable[str | Path] = (),
) -> dict[str, int]:
    """Write the corpus as text shards (one file, or a list of files: document ``k`` goes to
    ``output[k mod N]``), one sentence per line with blank lines between documents; return counts.

    Documents are streamed: only Punkt's training prefix (``punkt_train_chars``) and one batch of
    documents per process are held in memory. Sentence splitting (pure-Python Punkt, ~0.5 MB of
    text per second per process) runs in ``processes`` spawned processes; the output does not
    depend on their number. The files appear only when all are complete. An empty corpus, or
    fewer documents than shards, is an error naming the sources.

    ``exclude``: files listing documents to leave out, by the sha256 of their text, one per line
    (the held-out articles of task data built from the same sources), so that nothing trained on
    the corpus has seen a dev or test context.
    """
    global _SPLITTER
    from .builders import document_digest

    sources = list(sources)
    outputs = [Path(output)] if isinstance(output, (str, Path)) else [Path(o) for o in output]
    names = ", ".join(str(s["path"]) for s in sources) or "(no sources configured)"
    excluded = read_digests(exclude)
    n_excluded = 0

    def kept(doc: str) -> bool:
        nonlocal n_excluded
        if excluded and document_digest(doc) in excluded:
            n_excluded += 1
            return False
        return bool(doc.strip())

    docs = (d for d in iter_documents(sources) if kept(d))
    prefix, size = [], 0
    for d in docs:
        prefix.append(d)
        size += len(d)
        if size >= punkt_train_chars:
            break
    if not prefix:
        raise CorpusError(f"{names}: the corpus has no text; point config corpus.sources at non-empty files")
    _SPLITTER = train_punkt("\n\n".join(prefix))
    n_sent = n_words = n_docs = 0
    tmps: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            files = []
            for out in outputs:
                out.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
                tmps.append(tmp)
                files.append(stack.enter_context(os.fdopen(fd, "w", encoding="utf-8")))
            split: Any = map
            if processes > 1:
                import multiprocessing

                # Spawned, not forked: a fork of a process whose threads (torch, ONNX Runtime,
                # Inductor's compile workers) hold locks can hang the child for ever.
                ctx = multiprocessing.get_context("spawn")
                pool = stack.enter_context(ctx.Pool(processes, initializer=_set_splitter, initargs=(_SPLITTER,)))
                split = functools.partial(pool.map, chunksize=8)
            for batch in _batches(itertools.chain(prefix, docs), 64 * max(1, processes)):
                for sentences in split(_sentences, [(d, min_sentence_chars) for d in batch]):
                    if not sentences:
                        continue
                    files[n_docs % len(files)].write("\n".join(sentences) + "\n\n")
                    n_docs += 1
                    n_sent += len(sentences)
                    n_words += sum(len(s.split()) for s in sentences)
        if n_docs < len(outputs):
            raise CorpusError(
                f"{names}: {n_docs} documents are fewer than the {len(outputs)} shards; "
                "lower shards.num_shards or add text"
            )
        for tmp, out in zip(tmps, outputs, strict=True):
            os.replace(tmp, out)
    except BaseException:
        for tmp in tmps:
            Path(tmp).unlink(missing_ok=True)
        raise
    stats = {
        "documents": n_docs,
        "sentences": n_sent,
        "words": n_words,
        "text_shards": len(outputs),
        "excluded_documents": n_excluded,
    }
    if stats_output is not None:
        Path(stats_output).write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def read_digests(paths: Iterable[str | Path]) -> set[str]:
    """Document digests (64 hex digits, one per line) from each file; anything else is a one-line
    error naming the file."""
    digests: set[str] = set()
    for path in map(Path, paths):
        if not path.is_file():
            raise CorpusError(f"{path}: no such file (corpus.exclude: a list of document sha256 digests)")
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            if not re.fullmatch(r"[0-9a-f]{64}", line):
                raise CorpusError(
                    f"{path}:{i}: not a sha256 digest; corpus.exclude files list one document sha256 per line"
                )
            digests.add(line)
    return digests


def read_sentence_documents(path: str | Path) -> list[list[str]]:
    """Documents of a text shard (one sentence per line, blank line between documents)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file (text shard of the corpus stage)")
    docs, current = [], []
    for line in _text_lines(path):
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            docs.append(current)
            current = []
    if current:
        docs.append(current)
    return docs
