"""How the benchmark scripts hand over their result: one JSON object on stdout, and the same in a
file where ``--output`` names one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], output: Path | None) -> None:
    """Print ``result`` as indented JSON; also write it to ``output`` (folders made) if given."""
    text = json.dumps(result, indent=1)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    print(text)
