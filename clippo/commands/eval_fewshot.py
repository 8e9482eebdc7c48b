"""`clippo eval fewshot`: big_vision's few-shot linear probe (closed-form ridge on pre_logits).

  clippo eval --model clippo_b16_yfcc100m.npz --out runs/fs fewshot \\
      --train-cifar100 cifar-100-binary --eval-cifar100 cifar-100-binary
  clippo eval --model run/ckpt --out runs/fs fewshot --train-imagefolder imagenet/train \\
      --eval-imagefolder imagenet/val --shots 10 --seeds 3

Each side (the images the shots are drawn from, the images scored) is given in one of the
classification layouts; both must have the same classes in the same order. Shots 1,5,10,25 and
3 seeds by default, `l2_reg` 2**10, images `resize(256)|central_crop(224)` (scaled to the
model's size); see `clippo.eval.fewshot`. Writes OUT/results.json (accuracy per shot count:
each seed, mean and std; the protocol; per side the data, counts and skipped images) and prints
a table. `--max-examples N` evaluates on N evenly spaced eval images.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

from clippo.commands.args import positive_int

RESULTS = "results.json"


# `--<side>-<layout>` -> (what the folder holds, its kind in clippo.eval.datasets_classification)
LAYOUTS: dict[str, tuple[str, str]] = {
    "imagefolder": ("folder with one sub-folder of images per class", "imagefolder"),
    "imagenet-folder": ("ImageNet-1k in 1,000 synset folders (n01440764/...)", "imagenet_folder"),
    "imagenet-val": (
        "flat ILSVRC2012_val_*.JPEG with --<side>-labels (and --<side>-devkit)",
        "imagenet_val",
    ),
    "cifar10": ("CIFAR-10 binary folder (test_batch.bin; train: data_batch_1..5.bin)", "cifar10"),
    "cifar100": ("CIFAR-100 binary folder (<split>.bin, fine_label_names.txt)", "cifar100"),
    "pets": ("Oxford-IIIT Pets (images/, annotations/<split>.txt: trainval or test)", "pets"),
    "hf-dataset": ("Hugging Face dataset folder or parquet (--image/--label-column)", "hf"),
}
SIDES = {"train": ("train", "the images the shots are drawn from"), "eval": ("test", "scored")}


def _shots(text: str) -> tuple[int, ...]:
    from clippo.eval.fewshot import parse_shots

    try:
        return parse_shots(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_fewshot(suites: Any, common: Any) -> None:
    """The `fewshot` sub-command under `clippo eval`'s suites; `common(parser, defaults=False)`
    adds the options accepted before or after the suite name (`--model`, `--out`, ...)."""
    f = suites.add_parser(
        "fewshot", help="few-shot linear probe on pre_logits (big_vision's fewshot_lsr)"
    )
    common(f, defaults=False)
    for side, (split, what) in SIDES.items():
        group = f.add_mutually_exclusive_group(required=True)
        for layout, (holds, _) in LAYOUTS.items():
            group.add_argument(
                f"--{side}-{layout}", metavar="DIR", help=f"{side} side ({what}): {holds}"
            )
        f.add_argument(
            f"--{side}-labels", help="ImageNet: LOC_val_solution.csv or the devkit's ground truth"
        )
        f.add_argument(f"--{side}-devkit", help="ImageNet devkit folder (data/meta.mat)")
        f.add_argument(
            f"--{side}-split",
            default=split,
            help=f"{side} split of layouts that hold several (CIFAR: {split} -> {split}.bin)",
        )
    f.add_argument("--class-names", help="file of class names, one per line, in label order")
    f.add_argument("--image-column", default="image", help="Hugging Face layout's image column")
    f.add_argument("--label-column", default="label", help="Hugging Face layout's label column")
    f.add_argument(
        "--shots", type=_shots, default=(1, 5, 10, 25), help="comma list (default 1,5,10,25)"
    )
    f.add_argument("--seeds", type=positive_int, default=3, help="shot draws (seeds 0..N-1)")
    f.add_argument("--l2-reg", type=_positive_float, default=2.0**10, help="default 1024")
    f.add_argument(
        "--resize",
        type=positive_int,
        default=None,
        help="side before the central crop (default: 256 for 224 px models, S*8//7 for S px)",
    )
    f.set_defaults(func=_run_fewshot)


def _side(args: argparse.Namespace, side: str, names: list[str] | None) -> tuple[Any, str, str]:
    """(LabelledImages, layout, path) of `side` ("train" or "eval")."""
    from clippo.eval.datasets_classification import classification_source

    for layout, (_, kind) in LAYOUTS.items():
        path = getattr(args, f"{side}_{layout.replace('-', '_')}", None)
        if path is not None:
            data = classification_source(
                kind,
                path,
                split=getattr(args, f"{side}_split"),
                labels=getattr(args, f"{side}_labels"),
                devkit=getattr(args, f"{side}_devkit"),
                class_names=names,
                image_column=args.image_column,
                label_column=args.label_column,
            )
            return data, layout, path
    raise ValueError(f"give one of {', '.join(f'--{side}-{k}' for k in LAYOUTS)}")


def _run_fewshot(args: argparse.Namespace) -> int:
    from clippo.commands.eval_transfer import missing_required

    if missing_required(args):
        return 2
    import torch

    import clippo
    from clippo.atomic import write_json_atomic
    from clippo.commands.args import resolve_device
    from clippo.eval.datasets import read_class_names
    from clippo.eval.fewshot import FewshotOptions, run_fewshot, table_rows
    from clippo.eval.results import format_table, jsonable
    from clippo.typed_config import to_plain

    device = resolve_device(args.device)  # a missing GPU is one sentence before any work
    options = FewshotOptions(
        shots=tuple(args.shots),
        seeds=args.seeds,
        l2_reg=args.l2_reg,
        resize=args.resize or 0,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        max_eval_examples=args.max_examples,
    )
    names = read_class_names(args.class_names) if args.class_names else None
    train, train_layout, train_path = _side(args, "train", names)
    test, eval_layout, eval_path = _side(args, "eval", names)
    out = Path(args.out)
    model = clippo.load(args.model).to(device).eval()
    result = run_fewshot(model, train, test, options, device=device, progress=True, log=_log)
    results = {
        "suite": "fewshot",
        "model": str(Path(args.model).resolve()),
        "model_config": model.config.to_dict(),
        "data": {
            "train": {"layout": train_layout, "path": str(Path(train_path).resolve())},
            "eval": {"layout": eval_layout, "path": str(Path(eval_path).resolve())},
        },
        "options": {**to_plain(options), "device": str(device)},
        "versions": {
            "clippo": clippo.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        **result,
    }
    written = write_json_atomic(jsonable(results), out / RESULTS)
    print(format_table(table_rows(result)))
    for side in ("train", "eval"):
        skipped = result[side]["skipped"]
        if skipped:
            print(f"skipped {len(skipped)} unreadable {side} images:", file=sys.stderr)
            for name, reason in skipped[:20]:
                print(f"  {name}: {reason}", file=sys.stderr)
    print(f"wrote {written}", file=sys.stderr)
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr)
