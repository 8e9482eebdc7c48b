"""`clippo eval glue` and `clippo eval vqa`: the suites that train a head on the model's features.

  clippo eval --model clippo_b16_c4.npz --out runs/glue glue --data-dir glue_data --tasks all
  clippo eval --model run/ckpt --out runs/vqa vqa --data-dir vqav2 --eval-split val2014

Both run on frozen features by default (computed once per split, cached under `--cache-dir`),
or with `--mode finetune` fine-tune the encoder with the head through the trainer (runs under
OUT/finetune/, resumed when present; `--max-train-steps N` caps the steps); they train a head
per seed with model selection on a slice held out from train, write OUT/results.json
(metrics per seed with mean and std, the resolved options, model and data paths, versions) and
the predictions, and print a Markdown table. Nothing downloads: the data come from `--data-dir`
in the layout each suite documents (`clippo.eval.glue_data`, `clippo.eval.vqa_data`).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

from clippo.commands.args import nonnegative_int, positive_int

RESULTS = "results.json"


def add_glue(suites: Any, common: Any) -> None:
    g = suites.add_parser("glue", help="GLUE dev (and test submission) with heads on features")
    common(g, defaults=False)
    g.add_argument("--data-dir", required=True, help="glue_data folder or Hugging Face layout")
    g.add_argument(
        "--tasks",
        default="all",
        help="all, or a comma list of cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte,wnli",
    )
    _mode_arguments(g)
    g.add_argument("--seeds", type=positive_int, default=3, help="head trainings per task")
    g.add_argument("--cache-dir", default=None, help="feature cache (default: OUT/cache)")
    g.add_argument(
        "--pair-mode",
        choices=["render", "concat"],
        default="render",
        help="render: a pair as one image (render_pair; CLIPPO only); concat: [u, v, |u-v|, "
        "u*v] (token baselines need it)",
    )
    g.add_argument(
        "--skip-bad-rows", action="store_true", help="skip malformed rows (listed in results)"
    )
    g.add_argument(
        "--predict-test", action="store_true", help="also write the GLUE server submission"
    )
    g.set_defaults(func=_run_glue)


def add_vqa(suites: Any, common: Any) -> None:
    v = suites.add_parser("vqa", help="VQAv2 accuracy with an answer head on features")
    common(v, defaults=False)
    v.add_argument("--data-dir", required=True, help="folder in the official VQAv2 layout")
    v.add_argument("--train-split", default="train2014")
    v.add_argument("--eval-split", default="val2014", help="val2014, test-dev2015, test2015")
    _mode_arguments(v)
    v.add_argument("--seeds", type=positive_int, default=3, help="head trainings")
    v.add_argument("--answers", type=positive_int, default=3129, help="answer vocabulary size")
    v.add_argument(
        "--band",
        type=nonnegative_int,
        default=None,
        help="height in px of the question band above the photo (default: half the image)",
    )
    v.add_argument("--cache-dir", default=None, help="feature cache (default: OUT/cache)")
    v.set_defaults(func=_run_vqa)


def _mode_arguments(parser: Any) -> None:
    parser.add_argument(
        "--mode",
        choices=["frozen", "finetune"],
        default="frozen",
        help="frozen: a head on cached features; finetune: train encoder + head (for a GPU)",
    )
    parser.add_argument(
        "--max-train-steps",
        type=nonnegative_int,
        default=0,
        help="finetune: optimiser steps per run (0: the fine-tuning config's epochs)",
    )


def missing_required(args: argparse.Namespace) -> bool:
    """--model and --out may come before or after the suite name, so argparse cannot require
    them; report a missing one as argparse does (exit status 2 is the caller's)."""
    missing = [f"--{flag}" for flag in ("model", "out") if getattr(args, flag) is None]
    if missing:
        print(
            f"clippo eval: error: the following arguments are required: {', '.join(missing)}",
            file=sys.stderr,
        )
    return bool(missing)


def _setup(args: argparse.Namespace) -> tuple[Any, Any, Path, str]:
    """(model, device, out folder, cache folder), after the checks every suite needs."""
    import clippo
    from clippo.commands.args import resolve_device

    data = Path(args.data_dir)
    if not data.is_dir():
        raise FileNotFoundError(f"--data-dir {data}: no such folder")
    device = resolve_device(args.device)
    out = Path(args.out)
    cache = args.cache_dir or str(out / "cache")
    model = clippo.load(args.model).to(device).eval()
    return model, device, out, cache


def _provenance(args: argparse.Namespace, model: Any, device: Any) -> dict[str, Any]:
    import torch

    import clippo

    return {
        "model": str(Path(args.model).resolve()),
        "model_config": model.config.to_dict(),
        "data_dir": str(Path(args.data_dir).resolve()),
        "device": str(device),
        "versions": {
            "clippo": clippo.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def _write(out: Path, results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    from clippo.atomic import write_json_atomic
    from clippo.eval.results import format_table, jsonable

    written = write_json_atomic(jsonable(results), out / RESULTS)
    print(format_table(rows, floatfmt=".4f"))
    print(f"wrote {written}", file=sys.stderr)


def _run_glue(args: argparse.Namespace) -> int:
    from clippo.eval.glue import GlueOptions, parse_tasks, run_glue, table_rows

    if missing_required(args):
        return 2
    model, device, out, cache = _setup(args)
    options = GlueOptions(
        data_dir=args.data_dir,
        tasks=parse_tasks(args.tasks),
        pair_mode=args.pair_mode,
        seeds=args.seeds,
        max_examples=args.max_examples,
        skip_bad_rows=args.skip_bad_rows,
        predict_test=args.predict_test,
        cache_dir=cache,
        batch_size=args.batch_size,
        mode=args.mode,
        max_train_steps=args.max_train_steps,
    )
    result = run_glue(model, options, out, device=device, log=_log)
    results = {
        "suite": "glue",
        **_provenance(args, model, device),
        "options": _options(options),
        **result,
    }
    _write(out, results, table_rows(result))
    return 0


def _run_vqa(args: argparse.Namespace) -> int:
    from clippo.eval.vqa import VqaOptions, run_vqa, table_rows

    if missing_required(args):
        return 2
    model, device, out, cache = _setup(args)
    options = VqaOptions(
        data_dir=args.data_dir,
        train_split=args.train_split,
        eval_split=args.eval_split,
        seeds=args.seeds,
        max_examples=args.max_examples,
        answers=args.answers,
        band=args.band,
        cache_dir=cache,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        mode=args.mode,
        max_train_steps=args.max_train_steps,
    )
    result = run_vqa(model, options, out, device=device, log=_log)
    results = {
        "suite": "vqa",
        **_provenance(args, model, device),
        "options": _options(options),
        **result,
    }
    _write(out, results, table_rows(result))
    return 0


def _options(options: Any) -> dict[str, Any]:
    """The resolved options as results.json records them: every field (the head's and the
    fine-tuning config's included), tuples as lists."""
    from clippo.typed_config import to_plain

    return to_plain(options)


def _log(message: str) -> None:
    print(message, file=sys.stderr)
