"""Logging set-up shared by the stage entry points."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def log_to(path: str | Path | None) -> Iterator[logging.Logger]:
    """Send the package's log records and stderr to ``path`` (a rule's ``log:``) for the block.

    An exception is written to the log before it propagates, so Snakemake's
    ``--show-failed-logs`` shows the one-line cause.
    """
    logger = logging.getLogger("bertdistill")
    logger.setLevel(logging.INFO)
    if path is None:
        yield logger
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        old_stderr, sys.stderr = sys.stderr, f
        try:
            yield logger
        except Exception as e:
            logger.error("%s: %s", type(e).__name__, e)
            raise
        finally:
            sys.stderr = old_stderr
            logger.removeHandler(handler)


def progress(total: int, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True) -> Any:
    """A progress bar on stderr (the rule's log): rate and ETA, refreshed at most every 5 s so a
    log stays readable. ``None`` when disabled (ranks other than 0) or tqdm is missing; callers
    write ``if bar: bar.update(n)``."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, mininterval=5)
