"""`clippo eval`: zero-shot classification, image<->text retrieval, GLUE and VQA.

  clippo eval --model clippo_b16_yfcc100m.npz --out runs/eval retrieval --pairs coco_test.csv
  clippo eval --model run/ckpt --out runs/eval zeroshot --cifar100 cifar-100-binary
  clippo eval --model run/ckpt --out runs/eval zeroshot --imagefolder pets/test --templates my.txt
  clippo eval --model clippo_b16_c4.npz --out runs/glue glue --data-dir glue_data --tasks all
  clippo eval --model run/ckpt --out runs/vqa vqa --data-dir vqav2 --eval-split val2014

GLUE and VQA train heads on frozen features (`clippo/commands/eval_transfer.py`).

Writes OUT/results.json (metrics, the model path and every resolved option), prints a table, and
for retrieval writes OUT/retrieval_examples.png. Images are preprocessed as big_vision does
(resize to the model's size, no antialias); unreadable images are skipped and listed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal

from clippo.commands.args import nonnegative_int, positive_int, resolve_device
from clippo.commands.eval_transfer import add_glue, add_vqa, missing_required

RESULTS = "results.json"
EXAMPLES_PNG = "retrieval_examples.png"


def _common(p: argparse.ArgumentParser, defaults: bool) -> None:
    """Options accepted before or after the suite name. Sub-parsers get SUPPRESS defaults so
    they do not overwrite a value given before the suite name."""

    def d(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    p.add_argument("--model", default=d(None), help="big_vision .npz or a saved/trainer dir")
    p.add_argument("--out", default=d(None), help="output folder (results.json, PNG)")
    p.add_argument(
        "--batch-size", type=positive_int, default=d(64), help="images/texts per forward pass"
    )
    p.add_argument("--device", default=d("auto"), help="auto (CUDA if available), cpu, cuda:1")
    p.add_argument(
        "--max-examples",
        type=nonnegative_int,
        default=d(0),
        help="0: all. retrieval/zeroshot: N evenly spaced images; glue/vqa: the first N train "
        "rows and the first N rows of each evaluated split",
    )
    p.add_argument(
        "--num-workers", type=nonnegative_int, default=d(4), help="image decoding threads"
    )


def _spec(args: argparse.Namespace) -> Any:
    from clippo.eval.spec import EvalSpec

    common = dict(max_examples=args.max_examples, batch_size=args.batch_size)
    if args.suite == "retrieval":
        return EvalSpec(
            "retrieval",
            args.pairs,
            image_column=args.image_column,
            caption_column=args.caption_column,
            **common,
        )
    fmt: Literal["cifar100", "imagefolder"] = "cifar100" if args.cifar100 else "imagefolder"
    return EvalSpec(
        "zeroshot",
        args.cifar100 or args.imagefolder,
        format=fmt,
        templates=args.templates,
        canonicalize=args.canonicalize,
        class_names=args.class_names or "",
        split=args.split,
        **common,
    )


def _table(kind: str, m: dict[str, Any]) -> str:
    from clippo.eval.results import format_table

    if kind == "retrieval":
        rows = [
            {"direction": d, **{f"R@{k}": m[f"{d}/r@{k}"] for k in (1, 5, 10)}}
            for d in ("img2txt", "txt2img")
        ]
        rows[0]["queries"], rows[1]["queries"] = m["n_images"], m["n_texts"]
    else:
        keys = ("accuracy", "top5_accuracy", "mean_per_class_accuracy", "n", "n_classes")
        rows = [{k: m.get(k) for k in keys}]
    return format_table(rows, floatfmt=".4f")


def _run(args: argparse.Namespace) -> int:
    if missing_required(args):
        return 2
    spec = _spec(args)  # a bad option value raises: clippo.cli prints it as one line

    import clippo
    from clippo.atomic import write_json_atomic
    from clippo.eval.results import jsonable
    from clippo.eval.suites import run_suite

    # bad input from here on (no GPU, CheckpointError, missing files, bad rows) raises, and
    # clippo.cli prints it as one line
    device = resolve_device(args.device)
    out = Path(args.out)
    extra: dict[str, Any] = {}
    if spec.kind == "retrieval":
        extra["examples_png"] = out / EXAMPLES_PNG
    model = clippo.load(args.model).to(device).eval()
    metrics = run_suite(
        model, spec, device=device, num_workers=args.num_workers, progress=True, **extra
    )
    results = {
        "suite": spec.kind,
        "model": str(Path(args.model).resolve()),
        "model_config": model.config.to_dict(),
        "data": str(Path(spec.path).resolve()),
        "spec": {
            **{k: getattr(spec, k) for k in spec.__dataclass_fields__},
            "canonical": spec.canonical,
        },
        "options": {"device": str(device), "num_workers": args.num_workers},
        "metrics": metrics,
    }
    written = write_json_atomic(jsonable(results), out / RESULTS)
    print(_table(spec.kind, metrics))
    if metrics["n_skipped"]:
        print(f"skipped {metrics['n_skipped']} unreadable images:", file=sys.stderr)
        for name, reason in metrics["skipped"][:20]:
            print(f"  {name}: {reason}", file=sys.stderr)
    print(f"wrote {written}" + (f" and {extra['examples_png']}" if extra else ""), file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="zero-shot classification, image/text retrieval, GLUE, VQA",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, defaults=True)
    suites = p.add_subparsers(dest="suite", required=True, metavar="SUITE")

    r = suites.add_parser("retrieval", help="image<->text Recall@1/5/10 on (image, caption) pairs")
    _common(r, defaults=False)
    r.add_argument(
        "--pairs",
        required=True,
        help=".csv/.tsv (header with the columns below) or .jsonl; several captions per image "
        "allowed; image paths relative to the file",
    )
    r.add_argument("--image-column", default="image")
    r.add_argument("--caption-column", default="caption")

    z = suites.add_parser("zeroshot", help="zero-shot classification accuracy")
    _common(z, defaults=False)
    src = z.add_mutually_exclusive_group(required=True)
    src.add_argument("--imagefolder", help="folder with one sub-folder of images per class")
    src.add_argument("--cifar100", help="CIFAR-100 binary folder (test.bin, fine_label_names.txt)")
    z.add_argument(
        "--templates",
        default="clip_paper",
        help="clip_paper (big_vision, canonicalised), clip_best (the colab's 8), or a file with "
        "one template per line holding '{}'",
    )
    z.add_argument(
        "--canonicalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="big_vision's lowercase/no-punctuation canonicalisation (default: clip_paper only)",
    )
    z.add_argument("--class-names", help="file of class names, one per line, in label order")
    z.add_argument("--split", default="test", help="CIFAR-100 split file (test -> test.bin)")
    r.set_defaults(func=_run)
    z.set_defaults(func=_run)
    add_glue(suites, _common)
    add_vqa(suites, _common)
