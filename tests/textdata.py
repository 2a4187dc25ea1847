"""A few KB of real-looking English text and a WordPiece vocab that covers it (for tiny runs)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from bertdistill.checkpoints import save_model
from bertdistill.model import BertConfig, BertModel

DOCUMENTS = [
    """The river rises in the northern hills and flows south through a wide valley. Farmers have
grown wheat and barley along its banks for centuries. In spring the water is high and fast.
By late summer it becomes slow and shallow, and children swim near the old stone bridge.
The town council built a new weir in 1998 to control the floods.""",
    """Dr. Smith arrived at the station at 5 p.m. on Monday. She carried a small leather bag and a map
of the city. The train to the coast was late, so she waited in the cafe and read the newspaper.
A man at the next table asked her about the weather. They talked about books, music and travel
until the train finally came.""",
    """Bees collect nectar from many kinds of flowers. The nectar is stored in the hive and slowly
turns into honey. A healthy colony can hold tens of thousands of workers. The queen lays eggs
throughout the warm months. In winter the bees cluster together to keep the queen warm.""",
    """The museum opened its doors to the public in the autumn. Its collection includes paintings,
maps and old scientific instruments. Visitors can see a telescope that was used to study the
moons of Jupiter. The museum also runs lessons for schools every week.""",
    """Chess is played on a board of sixty four squares. Each player begins with sixteen pieces.
The aim is to trap the opposing king so that it cannot escape. Many players study famous games
to learn new ideas. Short games can last a few minutes, while long games can take hours.""",
    """The bakery on the corner opens before sunrise. Fresh bread, rolls and cakes fill the shelves by
seven o'clock. On weekends there is a long queue outside the door. The baker says the secret is
patience and good flour.""",
]


def write_corpus(folder: Path, copies: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(DOCUMENTS * copies) + "\n")
    return path


def write_vocab(path: Path) -> Path:
    """Specials, every word of the corpus, punctuation, digits and single letters (with ## forms)."""
    words = sorted({w for d in DOCUMENTS for w in re.findall(r"[a-z]+", d.lower())})
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789"))
    punct = list(".,;:'\"!?()-")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + chars + [f"##{c}" for c in chars] + punct
    seen, unique = set(), []
    for t in tokens:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    path.write_text("\n".join(unique) + "\n")
    return path


def tiny_teacher(folder: Path, heads: int = 4, seed: int = 0) -> Path:
    """A random tiny BERT teacher in HF layout whose vocab covers DOCUMENTS."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(folder.parent / f"{folder.name}-vocab.txt")
    n = len(vocab.read_text().split("\n")) - 1
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=heads,
                                 intermediate_size=48, max_position_embeddings=128))
    return save_model(model, folder, vocab=vocab, overwrite=True)
