"""Ink-only text encoding vs. the dense tower: texts/s of B/16 on rendered captions.

Run: `python benchmarks/ink_only.py [--batch 32] [--repeats 5]`. The dense path is what
big_vision does (every text costs 196 tokens at 224 px); the ink-only path drops blank patches,
so a ~50-character caption costs its ~20 inked patches. Both run in the same process,
interleaved, median of repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clippo.model.one_tower import CLIPPO
from clippo.render import UnifontRenderer

CAPTIONS = [
    "a photo of a dog playing with a ball in the park",
    "two people riding bicycles down a busy city street",
    "a bowl of fresh fruit on a wooden kitchen table",
    "an aeroplane flying over snowy mountains at dawn",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CLIPPO.from_variant(args.variant, image_size=224).eval().to(args.device)
    texts = (CAPTIONS * (args.batch // len(CAPTIONS) + 1))[: args.batch]
    pixels, ink = UnifontRenderer().render_torch(texts, args.device, return_ink=True)
    print(
        f"{args.variant}, batch {args.batch}, {args.device}, "
        f"mean inked patches {ink.flatten(1).sum(1).float().mean():.1f} of {ink[0].numel()}"
    )
    rows = []
    for precision in ("fp32", "bf16"):
        ctx = torch.autocast(
            torch.device(args.device).type, torch.bfloat16, enabled=precision == "bf16"
        )
        runs: dict[str, list[float]] = {"dense": [], "ink-only": []}
        with torch.no_grad(), ctx:
            model.encode(pixels[:2], ink[:2])  # warm-up
            for _ in range(args.repeats):
                for name, mask in (("dense", None), ("ink-only", ink)):
                    start = time.perf_counter()
                    model.encode(pixels, mask)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    runs[name].append(args.batch / (time.perf_counter() - start))
        dense, sparse = statistics.median(runs["dense"]), statistics.median(runs["ink-only"])
        rows.append((precision, dense, sparse, sparse / dense))
    print(f"{'precision':10s}{'dense texts/s':>16s}{'ink-only texts/s':>19s}{'speed-up':>10s}")
    for precision, dense, sparse, ratio in rows:
        print(f"{precision:10s}{dense:16.1f}{sparse:19.1f}{ratio:9.1f}x")


if __name__ == "__main__":
    main()
