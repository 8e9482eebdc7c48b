"""`clippo demo`: train a small CLIPPO on the built-in synthetic corpus (CPU, minutes) and
evaluate it on unseen colour/shape combinations; writes results.json and PNGs to --out."""

from __future__ import annotations

import argparse
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from clippo.demo import run_demo

    run_demo(args.out, quick=args.quick, steps=args.steps)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="train and evaluate a small CLIPPO on synthetic scenes",
                              description=__doc__)  # fmt: skip
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny model)")
    p.set_defaults(func=_run)
