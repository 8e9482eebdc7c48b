"""`clippo convert IN.npz OUT_DIR`: a big_vision CLIPPO checkpoint -> a `CLIPPO.save` directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _run(args: argparse.Namespace) -> int:
    """Bad input (a missing or bad .npz, OUT_DIR a file) raises; `clippo.cli` prints it."""
    from clippo.model.checkpoint import CONFIG_FILE, convert

    out = Path(args.out_dir)
    if (out / CONFIG_FILE).exists() and not args.force:
        raise FileExistsError(f"{out} already holds a model (use --force to overwrite)")
    model = convert(args.npz, out)
    v = model.config.vit
    n = sum(p.numel() for p in model.parameters())
    print(
        f"converted {args.npz} -> {out}: width {v.width}, depth {v.depth}, heads {v.num_heads}, "
        f"mlp {v.mlp_dim}, patch {v.patch_size}, image {v.image_size}, pool {v.pool_type}, "
        f"out_dim {model.config.out_dim}, {n:,} parameters"
    )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a big_vision .npz checkpoint", description=__doc__
    )
    p.add_argument("npz", help="big_vision CLIPPO checkpoint (.npz), e.g. clippo_b16_yfcc100m.npz")
    p.add_argument("out_dir", help="directory to write config.json + model.safetensors into")
    p.add_argument("--force", action="store_true", help="overwrite a model already in OUT_DIR")
    p.set_defaults(func=_run)
