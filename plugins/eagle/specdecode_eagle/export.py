"""Write an EAGLE head in another format.

    specdecode export-eagle --head DIR --out DIR --format speculators [--verifier NAME]

``--format speculators`` writes the format vLLM loads for ``method="eagle3"`` (see eagle3_checkpoint.py) from an
EAGLE-3 head in the EAGLE authors' or the speculators format. EAGLE-1/2 heads are refused: speculators has no
EAGLE-1/2 type any more (its ``eagle`` type was removed in #672, June 2026) and vLLM's speculators reader registers
no ``eagle`` type; vLLM loads EAGLE-1/2 heads in the EAGLE authors' format directly."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = ("speculators",)
DTYPES = ("float16", "bfloat16", "float32")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--head", required=True, help="head directory (speculators or EAGLE authors' EAGLE-3 format)")
    parser.add_argument("--out", required=True, help="output directory (new or empty)")
    parser.add_argument("--format", default="speculators", help="output format: speculators (default)")
    parser.add_argument("--verifier", default=None,
                        help="the target model's name or path, recorded as speculators_config.verifier.name_or_path")
    parser.add_argument("--speculative-tokens", type=int, default=3,
                        help="draft tokens per step recorded for vLLM's default (default 3)")
    parser.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: as stored)")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad flags before reading any weights, naming the flag, the value and what is allowed."""
    from specdecode.toolkit import invalid

    if args.format not in FORMATS:
        raise invalid("--format", args.format, f"one of: {', '.join(FORMATS)}")
    if args.dtype is not None and args.dtype not in DTYPES:
        raise invalid("--dtype", args.dtype, f"one of: {', '.join(DTYPES)}")
    if args.speculative_tokens < 1:
        raise invalid("--speculative-tokens", args.speculative_tokens, "an integer >= 1")
    if not Path(args.head).is_dir():
        raise invalid("--head", args.head, "an existing head directory")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise invalid("--out", args.out, "a new or empty directory")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    import torch
    from specdecode.toolkit import invalid

    from .checkpoint import EAGLE12_FORMATS, head_format
    from .eagle3_checkpoint import load_eagle3_head, save_speculators

    found = head_format(args.head)
    if found in EAGLE12_FORMATS:
        raise invalid("--head", args.head, f"an EAGLE-3 head for --format {args.format} (this is an EAGLE-1/2 head, "
                      f"{found} format; speculators has no EAGLE-1/2 type)")
    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    checkpoint = load_eagle3_head(args.head, dtype=None)
    kept = (checkpoint.raw.get("speculators_config") or {}).get("verifier") or {}  # what a speculators file said
    verifier = args.verifier if args.verifier is not None else kept.get("name_or_path")
    architectures = kept.get("architectures") or [] if args.verifier is None else []
    out = save_speculators(checkpoint.head, args.out, verifier=verifier, verifier_architectures=architectures,
                           speculative_tokens=args.speculative_tokens, dtype=dtype)
    config = checkpoint.head.config
    print(f"export-eagle: wrote {out} (speculators eagle3; {found} head with draft vocabulary "
          f"{config.draft_vocab_size}, aux layers {list(config.aux_layer_ids or []) or 'default'})", file=sys.stderr)
    return 0
