"""Training throughput: model-only steps vs the full data pipeline, and where loader time goes.

    python benchmarks/train.py                                   # Ti/16 + B/16, bf16, CPU (+ CUDA)
    python benchmarks/train.py --devices cuda --batch-sizes 256,256 --steps 20 --workers 12
    python benchmarks/train.py --tables token-drop --variants Ti/16 --batch-sizes 8 --precision fp32

For each variant and device, in the same run:
- model-only: optimiser steps (forward, backward, clipping, AdamW) on one pre-rendered batch that
  already sits on the device -- the baseline;
- pipeline: the same steps fed by `TrainData` (mixer -> DataLoader workers -> PairCollate ->
  device): JPEG files from a CSV (decode + resize) plus synthetic text/text pairs at 25%, texts
  rendered in the workers (or on the device with --render-on device);
- overhead: pipeline step time / model-only step time - 1 (the goal on a GPU: <= 5%);
- MFU (CUDA): analytic model FLOPs per step / step time / the GPU's peak bf16 dense FLOP/s.
A second table gives single-process CPU time per item of each loader stage: decode (JPEG ->
uint8 at the model size), render (one text), collate (stacking a batch, per pair).
A third table (`--tables token-drop`) times optimiser steps of the same model on one collated
batch of ~50-character captions (75% image/text, 25% text/text pairs, ink masks from the
workers), in the same run, interleaved: dense (every text patch), ink-only texts
(`ModelConfig.ink_only_text`) and patch dropout 0.5 on photos (`ModelConfig.patch_dropout`), with
the tokens per text and per photo each one encodes.
On a small CPU the workers compete with the model for cores (use --threads to leave them one),
so the GPU numbers are the ones the 5% goal is about.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clippo.data import synthetic
from clippo.data.collate import PairCollate
from clippo.data.images import decode_image
from clippo.data.sources import ImageTextPair, TextPair
from clippo.model.config import ModelConfig
from clippo.model.one_tower import CLIPPO
from clippo.preprocess import resize_uint8
from clippo.render import UnifontRenderer
from clippo.train import Trainer
from clippo.train.config import (
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    LoopConfig,
    ModelSection,
    OptimConfig,
    ScheduleConfig,
    SourceConfig,
    TrainConfig,
)
from clippo.train.data import TrainData

PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def forward_flops(cfg: ModelConfig) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass of one image through the tower + head."""
    v = cfg.vit
    n, w, m = v.num_tokens, v.width, v.mlp_dim
    macs = n * 3 * v.patch_size**2 * w  # patch embedding
    macs += v.depth * (n * (4 * w * w + 2 * w * m) + 2 * n * n * w)  # blocks: proj + mlp + attn
    if v.pool_type == "map":  # probe q, k/v over tokens, attention, out, mlp on one token
        macs += w * w + n * 2 * w * w + 2 * n * w + w * w + 2 * w * m
    macs += w * cfg.out_dim
    return 2.0 * macs


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if all(part in name for part in key.split()):
            return value
    return None


def make_jpeg_csv(root: Path, n: int, size: int) -> Path:
    """n synthetic scenes saved as 400x300 JPEGs (photo-like sizes) + pairs.csv."""
    ds = synthetic.SyntheticImageText(synthetic.SyntheticConfig(image_size=max(size, 128)))
    rows = []
    for i in range(n):
        image, text = ds[i]
        path = root / f"{i:05d}.jpg"
        Image.fromarray(image).resize((400, 300), Image.BILINEAR).save(path, quality=90)
        rows.append((path.name, text))
    out = root / "pairs.csv"
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    return out


def make_config(
    variant: str, batch: int, device: str, run_dir: Path, data: DataConfig, precision: str
) -> TrainConfig:
    return TrainConfig(
        data=data,
        model=ModelSection(variant=variant, image_size=224),
        optim=OptimConfig(name="adamw", lr=1e-4, wd=1e-4),
        schedule=ScheduleConfig(kind="constant"),
        loop=LoopConfig(steps=1000, batch_size=batch, precision=precision, device=device),
        checkpoint=CheckpointConfig(every_steps=0),
        logging=LoggingConfig(run_dir=str(run_dir), progress=False, tensorboard=False),
    )


def time_steps(trainer: Trainer, batches: Iterator[Any], warmup: int, steps: int) -> list[float]:
    """Seconds per optimiser step (data wait included), after `warmup` untimed steps."""
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        trainer.update(next(batches))  # returns after a host sync (loss .tolist())
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def bench_training(
    variant: str, batch: int, device: str, args: argparse.Namespace, csv_path: Path, tmp: Path
) -> dict:
    data = DataConfig(
        image_text=(SourceConfig(kind="csv", path=str(csv_path)),),
        text_pairs=(SourceConfig(kind="synthetic_paraphrase"),),
        text_pair_fraction=0.25,
        render_on=args.render_on,
        num_workers=args.workers if args.workers is not None else (1 if device == "cpu" else 8),
        prefetch_factor=4,
    )
    run_dir = tmp / f"{variant.replace('/', '_')}_{device}"
    cfg = make_config(variant, batch, device, run_dir, data, args.precision)
    torch.manual_seed(0)
    fixed = (torch.rand(batch, 3, 224, 224) * 2 - 1, torch.rand(batch, 3, 224, 224) * 2 - 1)
    trainer = Trainer(cfg, lambda start: iter(()), [], None)
    fixed = tuple(x.to(trainer.device) for x in fixed)

    def repeat() -> Iterator[tuple[torch.Tensor, ...]]:
        while True:
            yield fixed

    loader = TrainData(data, trainer.model.renderer, batch, pin_memory=device == "cuda")(0)
    # model-only, pipeline, model-only again: drift of a shared machine hits both alike
    model_times = time_steps(trainer, repeat(), args.warmup, args.steps)
    pipe_times = time_steps(trainer, loader, args.warmup, args.steps)
    model_times += time_steps(trainer, repeat(), 0, args.steps)
    model_only, pipeline = statistics.median(model_times), statistics.median(pipe_times)
    del loader
    flops = 2 * 3 * forward_flops(trainer.model.config) * batch  # 2 images/pair, fwd + 2x bwd
    peak = peak_tflops(trainer.device, args.peak_tflops)
    return {
        "device": device,
        "variant": variant,
        "batch": batch,
        "workers": data.num_workers,
        "model_step": model_only,
        "model_pps": batch / model_only,
        "pipe_step": pipeline,
        "pipe_pps": batch / pipeline,
        "overhead": pipeline / model_only - 1,
        "tflops": flops / model_only / 1e12,
        "mfu": flops / model_only / (peak * 1e12) if peak else None,
        "pipe_mfu": flops / pipeline / (peak * 1e12) if peak else None,
    }


CAPTIONS = [  # ~50 characters each, as benchmarks/ink_only.py
    "a photo of a dog playing with a ball in the park",
    "two people riding bicycles down a busy city street",
    "a bowl of fresh fruit on a wooden kitchen table",
    "an aeroplane flying over snowy mountains at dawn",
]
TOKEN_DROP = {  # row name -> ModelConfig options
    "dense": {},
    "ink-only text": {"ink_only_text": True},
    "patch dropout 0.5": {"patch_dropout": 0.5},
}


def bench_token_drop(
    variant: str, batch: int, device: str, args: argparse.Namespace, tmp: Path
) -> list[dict]:
    """Seconds per optimiser step of each `TOKEN_DROP` setting on the same collated batch."""
    renderer = UnifontRenderer()
    ds = synthetic.SyntheticImageText(synthetic.SyntheticConfig(image_size=224))
    n_text = batch // 4
    pairs: list = [ImageTextPair(ds[i][0], CAPTIONS[i % 4], f"i{i}") for i in range(batch - n_text)]
    pairs += [TextPair(CAPTIONS[i % 4], CAPTIONS[(i + 1) % 4], f"t{i}") for i in range(n_text)]
    collated = PairCollate(renderer, pixel_format="uint8", ink_patch_size=16)(pairs)
    trainers = {}
    for name, options in TOKEN_DROP.items():
        run_dir = tmp / f"drop_{len(trainers)}"
        cfg = make_config(variant, batch, device, run_dir, DataConfig(), args.precision)
        torch.manual_seed(0)
        model = CLIPPO(ModelConfig.from_variant(variant, image_size=224, **options))
        trainers[name] = Trainer(cfg, lambda start: iter(()), [], model)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for rep in range(args.warmup + args.steps):
        order = list(trainers) if rep % 2 == 0 else list(trainers)[::-1]
        for name in order:  # interleaved: drift of a shared machine hits every row alike
            step = time_steps(trainers[name], iter([collated]), 0, 1)
            if rep >= args.warmup:
                times[name] += step
    ink = collated["right_ink"].flatten(1).sum(1).float()
    full = float(collated["right_ink"][0].numel())
    rows = []
    for name, options in TOKEN_DROP.items():
        step = statistics.median(times[name])
        text_tokens = float(ink.mean()) if options.get("ink_only_text") else full
        photo_tokens = round(full * (1 - options.get("patch_dropout", 0.0)))
        rows.append(
            {
                "device": device,
                "variant": variant,
                "batch": batch,
                "setting": name,
                "text_tokens": text_tokens,
                "photo_tokens": photo_tokens,
                "step": step,
                "pps": batch / step,
            }
        )
    dense = rows[0]["step"]
    for r in rows:
        r["speedup"] = dense / r["step"]
    return rows


def bench_stages(csv_path: Path, n: int) -> dict[str, float]:
    """Single-process ms per item: decode (+ resize to 224), render one text, collate per pair."""
    files = sorted(csv_path.parent.glob("*.jpg"))[:n]
    blobs = [f.read_bytes() for f in files]
    t0 = time.perf_counter()
    images = [resize_uint8(decode_image(b), 224) for b in blobs]
    decode = (time.perf_counter() - t0) / len(blobs)

    texts = [synthetic.SyntheticTextPairs(synthetic.SyntheticConfig())[i][0] for i in range(n)]
    renderer = UnifontRenderer()
    renderer.render_batch(texts[:2])  # glyph table loaded outside the timing
    t0 = time.perf_counter()
    renderer.render_batch(texts)
    render = (time.perf_counter() - t0) / len(texts)

    pairs = [ImageTextPair(img, t, str(i)) for i, (img, t) in enumerate(zip(images, texts))]
    collate = PairCollate(renderer, render_on="device", pixel_format="uint8")  # no rendering
    mixed = pairs[: 3 * n // 4] + [TextPair(t, t, "t") for t in texts[: n // 4]]
    collate(mixed)
    t0 = time.perf_counter()
    collate(mixed)
    stack = (time.perf_counter() - t0) / len(mixed)
    return {"decode": decode * 1e3, "render": render * 1e3, "collate": stack * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="Ti/16,B/16")
    parser.add_argument(
        "--batch-sizes", default=None, help="per variant; default CPU 16,4 / GPU 256,256"
    )
    parser.add_argument("--devices", default=None, help="default: cpu, plus cuda when present")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers (CPU 1, GPU 8)"
    )
    parser.add_argument("--render-on", choices=("worker", "device"), default="worker")
    parser.add_argument("--images", type=int, default=64, help="JPEGs in the benchmark CSV")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="for MFU on unknown GPUs")
    parser.add_argument(
        "--tables", default="pipeline,token-drop", help="pipeline (and stages), token-drop"
    )
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args()
    tables = args.tables.split(",")
    unknown = sorted(set(tables) - {"pipeline", "token-drop"})
    if unknown:  # a misspelt table would otherwise print nothing at the end of a long run
        parser.error(f"--tables: unknown {unknown} (pipeline, token-drop)")
    if args.threads:
        torch.set_num_threads(args.threads)

    variants = args.variants.split(",")
    devices = (
        args.devices.split(",")
        if args.devices
        else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    rows, drop_rows = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "jpeg").mkdir()
        csv_path = make_jpeg_csv(tmp / "jpeg", args.images, 224)
        for device in devices:
            default = "16,4" if device == "cpu" else "256,256"
            batches = [int(b) for b in (args.batch_sizes or default).split(",")]
            for variant, batch in zip(variants, batches * len(variants)):
                if "pipeline" in tables:
                    rows.append(bench_training(variant, batch, device, args, csv_path, tmp))
                if "token-drop" in tables:
                    drop_rows += bench_token_drop(variant, batch, device, args, tmp)
                print(f"done {variant} on {device}", flush=True)
        stages = bench_stages(csv_path, min(args.images, 64)) if "pipeline" in tables else None
    if drop_rows:
        print_token_drop(drop_rows, args)
    if stages is not None:
        print_pipeline(rows, stages, args)


def print_table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A Markdown table: the header `head`, then one line per row of cells."""
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for cells in rows:
        print("| " + " | ".join(str(c) for c in cells) + " |")


def print_token_drop(rows: list[dict], args: argparse.Namespace) -> None:
    """The token-dropping table (Markdown) of `bench_token_drop` rows."""
    print(
        f"\ntoken dropping, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.precision}, AdamW, same batch of ~50-character captions (25% text/text), median of "
        f"{args.steps} interleaved steps"
    )
    head = (
        "device",
        "variant",
        "batch",
        "setting",
        "tokens/text",
        "tokens/photo",
        "s/step",
        "pairs/s",
        "vs dense",
    )
    print_table(
        head,
        [
            (
                r["device"],
                r["variant"],
                r["batch"],
                r["setting"],
                f"{r['text_tokens']:.1f}",
                r["photo_tokens"],
                f"{r['step']:.3f}",
                f"{r['pps']:.1f}",
                f"{r['speedup']:.2f}x",
            )
            for r in rows
        ],
    )


def print_pipeline(rows: list[dict], stages: dict[str, float], args: argparse.Namespace) -> None:
    """The pipeline table (Markdown) of `bench_training` rows, then the loader stages."""
    print(
        f"\ntorch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
        f"{args.precision}, AdamW, render on {args.render_on}, "
        f"median of {args.steps} (pipeline) / {2 * args.steps} (model) steps"
    )
    head = (
        "device",
        "variant",
        "batch",
        "workers",
        "model s/step",
        "model pairs/s",
        "pipeline s/step",
        "pipeline pairs/s",
        "overhead",
        "model TFLOP/s",
        "MFU model",
        "MFU pipeline",
    )
    print_table(
        head,
        [
            (
                r["device"],
                r["variant"],
                r["batch"],
                r["workers"],
                f"{r['model_step']:.3f}",
                f"{r['model_pps']:.1f}",
                f"{r['pipe_step']:.3f}",
                f"{r['pipe_pps']:.1f}",
                f"{r['overhead']:+.1%}",
                f"{r['tflops']:.3f}",
                f"{r['mfu']:.1%}" if r["mfu"] is not None else "-",
                f"{r['pipe_mfu']:.1%}" if r["pipe_mfu"] is not None else "-",
            )
            for r in rows
        ],
    )
    print("\nloader stages, one CPU process, ms per item:")
    print_table(
        ("decode+resize (per image)", "render (per text)", "collate (per pair)"),
        [(f"{stages['decode']:.2f}", f"{stages['render']:.2f}", f"{stages['collate']:.3f}")],
    )
    per_pair = (
        0.75 * (stages["decode"] + stages["render"])
        + 0.25 * 2 * stages["render"]
        + stages["collate"]
    )
    print(
        f"per pair at 25% text/text: {per_pair:.2f} ms of one core "
        f"-> {1e3 / per_pair:.0f} pairs/s per loader core"
    )


if __name__ == "__main__":
    main()
