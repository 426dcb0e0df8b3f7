"""``amulet-lab synth``: render the synthetic stand-in dataset (and optional 'not an amulet' negatives)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def _synth(args: argparse.Namespace, settings: Any) -> int:
    from amulet_lab.data import load_labels, synthesize, synthesize_unknowns

    out = synthesize(args.out, args.per_class, args.seed, args.size, progress=not args.quiet,
                     overwrite=args.overwrite)
    if args.unknowns:
        synthesize_unknowns(out / "_unknown", args.unknowns, args.seed, args.size, overwrite=args.overwrite)
    written = args.per_class * len(load_labels())
    print(f"wrote {written} synthetic images ({args.size} px, seed {args.seed}) to {out}"
          + (f" and {args.unknowns} unknowns to {out / '_unknown'}" if args.unknowns else ""))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` sub-command."""
    parser = subparsers.add_parser(
        "synth", help="render synthetic amulet photos (a stand-in dataset)",
        description="Render N synthetic photos per class into OUT/<class>/ with groups.json pairing front and back. "
                    "Synthetic stand-in data, not real photos; same arguments give the same bytes.")
    parser.add_argument("--out", required=True, help="output folder (class folders are created inside)")
    parser.add_argument("--per-class", type=int, required=True, help="images per class (front and back alternate)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--unknowns", type=int, default=0, metavar="N",
                        help="also write N 'not an amulet' images into OUT/_unknown/")
    parser.add_argument("--overwrite", action="store_true", help="replace synthetic images already in OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_synth)
