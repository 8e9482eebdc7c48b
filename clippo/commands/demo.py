"""`clippo demo`: train a small CLIPPO on the built-in synthetic corpus (CPU, minutes) and
evaluate it on unseen colour/shape combinations; writes results.json and two PNGs to --out."""

from __future__ import annotations

import argparse
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from clippo.demo import run_demo

    run_demo(
        args.out,
        quick=args.quick,
        steps=args.steps,
        precision=args.precision,
        threads=args.threads,
    )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train and evaluate a small CLIPPO on synthetic scenes (CPU, minutes)",
        description=__doc__,
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny model)")
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 only if a quick probe finds it faster on this CPU (default: %(default)s)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: one per core)"
    )
    p.set_defaults(func=_run)
