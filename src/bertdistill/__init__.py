"""bert-distill: distil a BERT teacher into a small, fast student (TinyBERT / NVIDIA style)."""

__version__ = "0.1.0"
