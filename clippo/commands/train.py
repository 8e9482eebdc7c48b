"""`clippo train CONFIG.toml|PRESET [--set key.sub=value ...] [--resume auto|DIR]
[--allow-legacy-pickle]`: contrastive training. Presets: demo, coco-sanity, clippo-b16.
Multi-GPU / multi-node: launch with torchrun. `[[eval]]` tables in the config (retrieval /
zero-shot) run every logging.eval_every_steps and at the end; their metrics go to metrics.jsonl
as eval/<name>/<metric>."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_PREEMPTED = 143  # 128 + SIGTERM: a checkpoint was written, resume with --resume auto

# Errors propagate to clippo.cli, which prints one line and exits 1 (argparse usage errors: 2).
# A NaN/inf loss is no bug in clippo but the outcome of the run's settings or data, so it is
# one line too: clippo.train keeps NonFiniteLossError a RuntimeError (what library callers
# catch), and this command re-raises it as a ValueError, the type clippo.cli reports.


def _run(args: argparse.Namespace) -> int:
    from clippo.train.config import load_train_config

    overrides = list(args.set or [])
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={json.dumps(args.resume)}")
    cfg = load_train_config(args.config, overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0

    hooks = []
    if cfg.eval:  # the application layer joins evaluation and training (clippo.train never does)
        from clippo.eval.hooks import make_hooks
        from clippo.eval.spec import specs_from_tables

        try:
            hooks = make_hooks(specs_from_tables(cfg.eval), progress=cfg.logging.progress)
        except OSError as e:  # say which part of the config named the file
            raise OSError(f"[[eval]]: {e}") from e
        except ValueError as e:
            raise ValueError(f"[[eval]]: {e}") from e

    from clippo.train import NonFiniteLossError, train

    try:
        result = train(cfg, hooks=hooks, allow_legacy_pickle=args.allow_legacy_pickle)
    except NonFiniteLossError as e:
        raise ValueError(str(e)) from e
    where = result.checkpoint or result.run_dir
    if result.preempted:
        print(f"stopped by SIGTERM at step {result.step}; checkpoint {where}", file=sys.stderr)
        return EXIT_PREEMPTED
    print(f"done: {result.step} steps; checkpoint {where}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a CLIPPO model (contrastive, image/alt-text and text/text pairs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="a TOML file or a preset name (demo, coco-sanity, clippo-b16)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set loop.steps=100 --set optim.lr=3e-4 (repeatable)",
    )
    p.add_argument(
        "--resume",
        metavar="auto|DIR",
        help="'auto': continue from the newest complete checkpoint of the run directory",
    )
    p.add_argument(
        "--allow-legacy-pickle",
        action="store_true",
        help="resume a checkpoint written before clippo's pickle-free format (its optimizer.pt is "
        "a pickle, which can run code when loaded: only for checkpoints you wrote yourself); a "
        "flag, never a config key, so a shared config file cannot turn it on",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config as JSON and exit"
    )
    p.set_defaults(func=_run)
