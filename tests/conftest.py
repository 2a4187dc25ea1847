"""Shared fixtures: tiny random BERTs, vocab files, a local HTTP server."""

from __future__ import annotations

import http.server
import socketserver
import threading
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="parity tests need transformers (pip install -e .[test])")

TINY = dict(
    vocab_size=99,
    hidden_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=80,
    max_position_embeddings=64,
    type_vocab_size=2,
)


def hf_config(**overrides):
    """A tiny transformers BertConfig with eager attention (so output_attentions works)."""
    cfg = transformers.BertConfig(**{**TINY, **overrides})
    cfg._attn_implementation = "eager"
    return cfg


def write_vocab(path: Path, size: int) -> Path:
    """A BERT-style vocab with the special tokens first and ``size`` lines in all."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = special + [f"w{i}" for i in range(size - len(special))]
    path.write_text("\n".join(words) + "\n")
    return path


def random_batch(vocab_size: int, batch: int = 3, length: int = 13, seed: int = 0):
    """Random ids, token types and an attention mask with padding in rows 1 and 2."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (batch, length), generator=g)
    types = torch.zeros_like(ids)
    types[:, length // 2 :] = 1
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        mask[1, length - 4 :] = 0
    if batch > 2:
        mask[2, 5:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, types, mask


@pytest.fixture
def http_server(tmp_path):
    """Serve ``tmp_path / 'www'`` on 127.0.0.1; yields (root_dir, base_url)."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):  # keep pytest output clean
            pass

    server = socketserver.TCPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
