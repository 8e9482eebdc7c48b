"""Ink-only text encoding vs. the dense tower: tokens per text, forward and forward+backward time.

Run: `python benchmarks/ink_only.py [--variant B/16] [--batch 32] [--repeats 5]`. The dense path
is what big_vision does (every text costs 196 tokens at 224 px); the ink-only path
(`ModelConfig.ink_only_text`, `CLIPPO.encode(pixels, ink)`) drops blank patches, so a
~50-character caption costs its ~20 inked patches, while a paragraph that fills the canvas keeps
all of them and must cost what dense costs. Both run in the same process on the same rendered
batch, interleaved, median of repeats: forward (inference, no grad) and forward+backward (the
text side of a training step: the gradient of a fixed projection of the embeddings).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from clippo.model.one_tower import CLIPPO

CAPTIONS = [
    "a photo of a dog playing with a ball in the park",
    "two people riding bicycles down a busy city street",
    "a bowl of fresh fruit on a wooden kitchen table",
    "an aeroplane flying over snowy mountains at dawn",
]
PARAGRAPH = (
    "Pixels only: the text is rendered as an image and read by the same tower as the photos, "
    "with no tokenizer and no vocabulary. "
) * 8  # fills the 224 px canvas: every patch is inked


def timed(fn: Callable[[], torch.Tensor], device: str) -> float:
    """Seconds for one call of `fn` (completion forced)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    fn().float().sum().item()
    sync()
    return time.perf_counter() - start


def measure(
    model: CLIPPO, texts: list[str], device: str, bf16: bool, repeats: int
) -> dict[str, float]:
    """Dense vs ink-only on one batch of `texts`: tokens per text and median seconds."""
    pixels = model.render_texts(texts)
    ink = model.ink_of(pixels)
    probe = torch.randn(model.config.out_dim, device=device)
    ctx = torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16)

    def forward(mask: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad(), ctx:
            return model.encode(pixels, mask)

    def backward(mask: torch.Tensor | None) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with ctx:
            loss = (model.encode(pixels, mask).float() @ probe).sum()
        loss.backward()
        return loss.detach()

    runs: dict[str, list[float]] = {}
    for kind, fn in (("fwd", forward), ("fwd+bwd", backward)):
        fn(None), fn(ink)  # warm-up
        for rep in range(repeats):
            order = [("dense", None), ("ink", ink)]
            for name, mask in order if rep % 2 == 0 else order[::-1]:
                runs.setdefault(f"{kind} {name}", []).append(
                    timed(lambda fn=fn, mask=mask: fn(mask), device)
                )
    out = {k: statistics.median(v) for k, v in runs.items()}
    out["tokens dense"] = float(ink[0].numel())
    out["tokens ink"] = float(ink.flatten(1).sum(1).clamp(min=1).float().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CLIPPO.from_variant(args.variant, image_size=224).to(args.device)
    batches = {
        "~50-char captions": (CAPTIONS * (args.batch // len(CAPTIONS) + 1))[: args.batch],
        "full-canvas paragraph": [PARAGRAPH] * args.batch,
    }
    print(
        f"{args.variant} @ 224, batch {args.batch}, {args.device}, {args.repeats} repeats, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )
    head = (
        "texts | precision | tokens/text dense | tokens/text ink-only | fewer tokens "
        "| fwd texts/s dense | fwd texts/s ink-only | fwd speed-up "
        "| fwd+bwd ms dense | fwd+bwd ms ink-only | fwd+bwd speed-up"
    )
    rows = []
    for precision in args.precisions.split(","):
        for label, texts in batches.items():
            r = measure(model, texts, args.device, precision == "bf16", args.repeats)
            rows.append((label, precision, r))
            print(f"  done: {label} {precision}", flush=True)
    print(f"\n| {head} |\n|" + "---|" * (head.count("|") + 1))
    for label, precision, r in rows:
        n = len(batches[label])
        cells = (
            label,
            precision,
            f"{r['tokens dense']:.0f}",
            f"{r['tokens ink']:.1f}",
            f"{r['tokens dense'] / r['tokens ink']:.1f}x",
            f"{n / r['fwd dense']:.1f}",
            f"{n / r['fwd ink']:.1f}",
            f"{r['fwd dense'] / r['fwd ink']:.2f}x",
            f"{1e3 * r['fwd+bwd dense']:.0f}",
            f"{1e3 * r['fwd+bwd ink']:.0f}",
            f"{r['fwd+bwd dense'] / r['fwd+bwd ink']:.2f}x",
        )
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
