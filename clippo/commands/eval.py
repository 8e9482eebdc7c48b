"""`clippo eval`: zero-shot classification, image<->text retrieval, few-shot probe, GLUE and VQA.

  clippo eval --model clippo_b16_yfcc100m.npz --out runs/eval retrieval --pairs coco_test.csv
  clippo eval --model m.npz --out runs/coco retrieval --karpathy dataset_coco.json --images coco
  clippo eval --model m.npz --out runs/xm retrieval --xm3600 captions.jsonl --images xm3600/images \\
      --languages en,de,ja
  clippo eval --model m.npz --out runs/t retrieval --translations en-de.tsv \\
      --src-lang en --tgt-lang de
  clippo eval --model m.npz --out runs/hf retrieval --hf-dataset coco_hf --caption-column captions
  clippo eval --model run/ckpt --out runs/eval zeroshot --cifar100 cifar-100-binary
  clippo eval --model run/ckpt --out runs/eval zeroshot --imagefolder pets/test --templates my.txt
  clippo eval --model m.npz --out runs/in1k zeroshot --imagenet-val ILSVRC2012_val \\
      --labels LOC_val_solution.csv
  clippo eval --model m.npz --out runs/in1k zeroshot --imagenet-val val \\
      --labels ILSVRC2012_validation_ground_truth.txt --devkit ILSVRC2012_devkit_t12
  clippo eval --model m.npz --out runs/pets zeroshot --pets oxford-iiit-pet
  clippo eval --model m.npz --out runs/hf zeroshot --hf-dataset pets_hf --label-column label
  clippo eval --model m.npz --out runs/fs fewshot --train-cifar100 cifar-100-binary \\
      --eval-cifar100 cifar-100-binary
  clippo eval --model clippo_b16_c4.npz --out runs/glue glue --data-dir glue_data --tasks all
  clippo eval --model run/ckpt --out runs/vqa vqa --data-dir vqav2 --eval-split val2014

GLUE and VQA train heads on frozen features (`clippo/commands/eval_transfer.py`); the few-shot
probe is `clippo/commands/eval_fewshot.py`. docs/evaluation.md describes every suite and layout.

Writes OUT/results.json (metrics, the model path and every resolved option), prints a table, and
for image retrieval writes OUT/retrieval_examples.png. Zero-shot keeps its class embeddings under
--cache-dir (default OUT/cache): a second run with the same model, classes and templates loads
them instead of encoding every prompt again. Images are preprocessed as big_vision does
(resize to the model's size, no antialias); unreadable images are skipped and listed. Retrieval
counts a query as a hit when any of its positives is in the top k, ties against the query
(CLIP_benchmark lets its `topk` order decide ties: otherwise the numbers agree).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clippo.commands.args import nonnegative_int, positive_int, resolve_device
from clippo.commands.eval_fewshot import add_fewshot
from clippo.commands.eval_transfer import add_glue, add_vqa, missing_required

if TYPE_CHECKING:
    from clippo.eval.spec import Format

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


# (option, EvalSpec format) per data source of each suite; exactly one is given
RETRIEVAL_SOURCES: tuple[tuple[str, Format], ...] = (
    ("pairs", "pairs"),
    ("karpathy", "karpathy"),
    ("xm3600", "xm3600"),
    ("translations", "translations"),
    ("hf_dataset", "hf"),
)
ZEROSHOT_SOURCES: tuple[tuple[str, Format], ...] = (
    ("imagefolder", "imagefolder"),
    ("cifar100", "cifar100"),
    ("cifar10", "cifar10"),
    ("imagenet_val", "imagenet_val"),
    ("imagenet_folder", "imagenet_folder"),
    ("pets", "pets"),
    ("hf_dataset", "hf"),
)


def _spec(args: argparse.Namespace) -> Any:
    from clippo.eval.spec import EvalSpec

    common = dict(max_examples=args.max_examples, batch_size=args.batch_size, split=args.split)
    if args.suite == "retrieval":
        option, fmt = next((o, f) for o, f in RETRIEVAL_SOURCES if getattr(args, o))
        if fmt in ("karpathy", "xm3600") and not args.images:
            raise ValueError(f"--{option} needs --images (the folder the images are in)")
        return EvalSpec(
            "retrieval",
            getattr(args, option),
            format=fmt,
            image_column=args.image_column,
            caption_column=args.caption_column,
            images=args.images or "",
            languages=args.languages,
            targets=args.targets or "",
            src_lang=args.src_lang,
            tgt_lang=args.tgt_lang,
            **common,
        )
    option, fmt = next((o, f) for o, f in ZEROSHOT_SOURCES if getattr(args, o))
    return EvalSpec(
        "zeroshot",
        getattr(args, option),
        format=fmt,
        templates=args.templates,
        canonicalize=args.canonicalize,
        class_names=args.class_names or "",
        labels=args.labels or "",
        devkit=args.devkit or "",
        image_column=args.image_column,
        label_column=args.label_column,
        **common,
    )


def _recall_rows(
    m: dict[str, Any], directions: tuple[str, ...], label: str
) -> list[dict[str, Any]]:
    return [{label: d, **{f"R@{k}": m[f"{d}/r@{k}"] for k in (1, 5, 10)}} for d in directions]


def _table(kind: str, m: dict[str, Any]) -> str:
    from clippo.eval.results import format_table

    if kind == "retrieval" and "src2tgt/r@1" in m:
        rows = _recall_rows(m, ("src2tgt", "tgt2src"), "direction")
        rows[0]["direction"] = f"{m['src_lang']}->{m['tgt_lang']}"
        rows[1]["direction"] = f"{m['tgt_lang']}->{m['src_lang']}"
        for row in rows:
            row["queries"] = m["n_pairs"]
    elif kind == "retrieval":
        per: dict[str, Any] = m.get("per_language") or {}
        sets = [*per.items(), ("mean", m)] if per else [("", m)]
        rows = []
        for lang, lm in sets:
            for row, queries in zip(
                _recall_rows(lm, ("img2txt", "txt2img"), "direction"),
                (lm["n_images"], lm["n_texts"]),
            ):
                lead = {"language": lang} if lang else {}
                rows.append({**lead, **row, "queries": queries, "modality_gap": lm["modality_gap"]})
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
    if spec.kind == "retrieval" and spec.format != "translations":
        extra["examples_png"] = out / EXAMPLES_PNG
    options: dict[str, Any] = {"device": str(device), "num_workers": args.num_workers}
    if spec.kind == "zeroshot":  # class embeddings, keyed by model + class names + templates
        options["cache_dir"] = str(Path(args.cache_dir or out / "cache").resolve())
        extra["cache_dir"] = options["cache_dir"]
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
        "options": options,
        "metrics": metrics,
    }
    written = write_json_atomic(jsonable(results), out / RESULTS)
    print(_table(spec.kind, metrics))
    if metrics.get("n_skipped"):
        print(f"skipped {metrics['n_skipped']} unreadable images:", file=sys.stderr)
        for name, reason in metrics["skipped"][:20]:
            print(f"  {name}: {reason}", file=sys.stderr)
    png = f" and {extra['examples_png']}" if "examples_png" in extra else ""
    print(f"wrote {written}{png}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="zero-shot classification, image/text retrieval, few-shot probe, GLUE, VQA",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, defaults=True)
    suites = p.add_subparsers(dest="suite", required=True, metavar="SUITE")

    r = suites.add_parser(
        "retrieval",
        help="image<->text Recall@1/5/10 (and text->text over translations), modality gap",
        description="One data source: --pairs, --karpathy, --xm3600, --translations or "
        "--hf-dataset.",
    )
    _common(r, defaults=False)
    rsrc = r.add_mutually_exclusive_group(required=True)
    rsrc.add_argument(
        "--pairs",
        help=".csv/.tsv (header with the columns below) or .jsonl; several captions per image "
        "allowed; image paths relative to the file",
    )
    rsrc.add_argument(
        "--karpathy",
        help="Karpathy's dataset_coco.json / dataset_flickr30k.json (images under --images: "
        "IMAGES/<filepath>/<filename>, or IMAGES/<filename>); every caption of --split",
    )
    rsrc.add_argument(
        "--xm3600",
        help="Crossmodal-3600 captions.jsonl (images: --images/<key>.jpg); per language + mean",
    )
    rsrc.add_argument(
        "--translations",
        help="text->text retrieval: a file of source<TAB>target lines, or the source sentences "
        "one per line with --targets",
    )
    rsrc.add_argument(
        "--hf-dataset",
        help="a datasets.save_to_disk folder or parquet file(s) with image and caption columns",
    )
    r.add_argument("--images", help="image folder of --karpathy / --xm3600")
    r.add_argument(
        "--split",
        default="test",
        help="Karpathy split (train/restval/val/test) or Hugging Face split (default test)",
    )
    r.add_argument("--languages", default="all", help="--xm3600: all, or codes like en,de,ja")
    r.add_argument("--targets", help="--translations: the aligned target sentences, one per line")
    r.add_argument("--src-lang", default="src", help="--translations: source language (table)")
    r.add_argument("--tgt-lang", default="tgt", help="--translations: target language (table)")
    r.add_argument("--image-column", default="image")
    r.add_argument("--caption-column", default="caption")

    z = suites.add_parser(
        "zeroshot",
        help="zero-shot classification accuracy",
        description="One data source: --imagefolder, --cifar100, --cifar10, --imagenet-val, "
        "--imagenet-folder, --pets or --hf-dataset.",
    )
    _common(z, defaults=False)
    src = z.add_mutually_exclusive_group(required=True)
    src.add_argument("--imagefolder", help="folder with one sub-folder of images per class")
    src.add_argument("--cifar100", help="CIFAR-100 binary folder (test.bin, fine_label_names.txt)")
    src.add_argument("--cifar10", help="CIFAR-10 binary folder (cifar-10-batches-bin/)")
    src.add_argument(
        "--imagenet-val",
        help="flat ImageNet validation folder (ILSVRC2012_val_*.JPEG) with --labels/--devkit",
    )
    src.add_argument("--imagenet-folder", help="ImageNet in 1,000 synset folders (n01440764/...)")
    src.add_argument("--pets", help="Oxford-IIIT Pets folder (images/, annotations/test.txt)")
    src.add_argument(
        "--hf-dataset", help="a datasets.save_to_disk folder or parquet file(s): image + label"
    )
    z.add_argument(
        "--labels",
        help="--imagenet-val: LOC_val_solution.csv, or the devkit's "
        "ILSVRC2012_validation_ground_truth.txt (with --devkit); default: found beside",
    )
    z.add_argument("--devkit", help="--imagenet-val: the devkit folder (data/meta.mat)")
    z.add_argument("--image-column", default="image", help="--hf-dataset image column")
    z.add_argument("--label-column", default="label", help="--hf-dataset label column")
    z.add_argument(
        "--templates",
        default="clip_paper",
        help="clip_paper (big_vision, canonicalised), clip_best (the colab's 8), or a file with "
        "one template per line holding '{}' (or CLIP_benchmark's '{c}')",
    )
    z.add_argument(
        "--canonicalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="big_vision's lowercase/no-punctuation canonicalisation (default: clip_paper only)",
    )
    z.add_argument("--class-names", help="file of class names, one per line, in label order")
    z.add_argument(
        "--cache-dir",
        default=None,
        help="class-embedding cache, keyed by model, class names and templates (default: "
        "OUT/cache)",
    )
    z.add_argument(
        "--split",
        default="test",
        help="CIFAR split file (test -> test.bin), Pets list (test, trainval), Hugging Face split",
    )
    r.set_defaults(func=_run)
    z.set_defaults(func=_run)
    add_glue(suites, _common)
    add_vqa(suites, _common)
    add_fewshot(suites, _common)
