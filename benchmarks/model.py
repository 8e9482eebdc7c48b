"""Forward throughput of the CLIPPO tower vs a bare timm VisionTransformer of the same config.

    python benchmarks/model.py                        # B/16 @ 224, CPU (and CUDA when present)
    python benchmarks/model.py --batch-size 64 --repeats 20 --devices cuda

Both models are built directly with big_vision's settings (no class token, MAP pooling, tanh
GELU, LayerNorm eps 1e-6, a Linear head to 768); ours adds the L2 normalisation. Runs are
interleaved (timm, ours, timm, ours, ...) in fp32 and in bf16 autocast, and the table reports
median images/s over the repeats and the median speed ratio of the interleaved pairs, which
should be ~1.00 (the wrapper costs nothing); the last column shows how noisy the machine was.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from clippo.model.config import ModelConfig
from clippo.model.one_tower import CLIPPO, vit_tower


def bare_timm(cfg: ModelConfig) -> nn.Module:
    """The same tower as CLIPPO's (`vit_tower`), with timm's own Linear head and default init."""
    return vit_tower(cfg.vit, num_classes=cfg.out_dim, weight_init="")


def time_once(model: nn.Module, x: torch.Tensor, bf16: bool, ours: bool) -> float:
    """Seconds for one forward of batch `x`."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with (
        torch.inference_mode(),
        torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16),
    ):
        sync()
        t0 = time.perf_counter()
        y = model.encode(x) if ours else model(x)
        y.float().sum().item()  # forces completion
        sync()
    return time.perf_counter() - t0


def bench(device: str, args: argparse.Namespace) -> list[tuple]:
    cfg = ModelConfig.from_variant(args.variant, image_size=args.image_size)
    torch.manual_seed(0)
    models = {"timm": bare_timm(cfg).to(device).eval(), "ours": CLIPPO(cfg).to(device).eval()}
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 2 - 1
    rows = []
    for precision, bf16 in (("fp32", False), ("bf16 autocast", True)):
        times: dict[str, list[float]] = {name: [] for name in models}
        for rep in range(args.warmup + args.repeats):
            # interleaved, alternating who goes first, so drift and load spikes hit both alike
            order = list(models) if rep % 2 == 0 else list(models)[::-1]
            for name in order:
                dt = time_once(models[name], x, bf16, ours=name == "ours")
                if rep >= args.warmup:
                    times[name].append(dt)
        ips = {n: args.batch_size / statistics.median(t) for n, t in times.items()}
        # ratio of each interleaved pair, then the median: robust to slow phases of the machine
        pair = statistics.median(a / b for a, b in zip(times["timm"], times["ours"]))
        spread = max(times["timm"]) / min(times["timm"])
        rows.append((device, precision, ips["timm"], ips["ours"], pair, spread))
        print(f"  done: {device} {precision}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="B/16")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--devices", nargs="*", default=None, help="default: cpu, plus cuda if present")
    args = p.parse_args()
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(
        f"{args.variant} @ {args.image_size}px, batch {args.batch_size}, "
        f"{args.repeats} repeats (+{args.warmup} warm-up), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    rows = [row for d in devices for row in bench(d, args)]
    print(
        "\n| device | precision | timm img/s | clippo img/s | clippo/timm (median of pairs) "
        "| timm slowest/fastest run |\n|---|---|---|---|---|---|"
    )
    for device, precision, timm_ips, ours_ips, ratio, spread in rows:
        print(
            f"| {device} | {precision} | {timm_ips:.2f} | {ours_ips:.2f} | {ratio:.3f} "
            f"| {spread:.2f} |"
        )


if __name__ == "__main__":
    main()
