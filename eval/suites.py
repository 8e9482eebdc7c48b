"""Named evaluation suites: a model and an `EvalSpec` in, a dict of metrics out.

    metrics = SUITES["retrieval"](model, EvalSpec("retrieval", "coco_test.csv"))
    metrics = run_suite(model, EvalSpec("zeroshot", "cifar-100-binary", templates="clip_paper"))

Both follow big_vision's evaluators (retrieval, discriminative_classifier): images go through
`resize(size)` (bilinear, no antialias, squashed, truncated to uint8;
`clippo.preprocess.resize_uint8`) at the model's image size, then `value_range(-1, 1)`; texts
are rendered by the model's own renderer. Zero-shot with `clip_paper` canonicalises templates
and class names as big_vision does. Metrics come from
`clippo.eval.retrieval` / `clippo.eval.zeroshot`; this module reads the data, embeds the images
(streamed in batches from files or encoded bytes, or from pixels already in memory) and drops
undecodable ones.

Retrieval also reports the modality gap (the distance between the image and text embedding
centroids) and, for Crossmodal-3600, every language and their mean; a "translations" spec is
text->text retrieval in both directions (no images). Zero-shot keeps its class embeddings under
`cache_dir` when given (keyed by the model, the class names and the templates).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from clippo.eval import SUITES
from clippo.eval.datasets import (
    CaptionedImages,
    EncodedImages,
    LabelledImages,
    decode_resized,
    evenly_spaced,
    read_class_names,
    read_pairs,
    read_templates,
)
from clippo.eval.datasets_classification import classification_source
from clippo.eval.datasets_retrieval import (
    TranslationPairs,
    read_karpathy,
    read_translations,
    read_xm3600,
)
from clippo.eval.encoders import as_encoders, embed
from clippo.eval.metrics import modality_gap
from clippo.eval.results import save_retrieval_examples
from clippo.eval.retrieval import retrieval_recalls, translation_recalls
from clippo.eval.spec import EvalSpec
from clippo.eval.zeroshot import class_embeddings, evaluate_zeroshot
from clippo.preprocess import resize_uint8
from clippo.prompts import (
    CLIP_BEST_TEMPLATES,
    CLIP_PAPER_TEMPLATES,
    canonical_class_names,
    canonical_templates,
)

__all__ = [
    "SUITES",
    "TEMPLATE_SETS",
    "read_spec_data",
    "read_translation_spec",
    "resolve_prompts",
    "image_embeddings",
    "retrieval_suite",
    "zeroshot_suite",
    "run_suite",
]

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "clip_paper": CLIP_PAPER_TEMPLATES,
    "clip_best": CLIP_BEST_TEMPLATES,
}

Data = CaptionedImages | LabelledImages
_D = TypeVar("_D", CaptionedImages, LabelledImages)


# ---- data and prompts from a spec ----------------------------------------------------------------


def _zeroshot_format(spec: EvalSpec) -> str:
    if spec.format != "auto":
        return spec.format
    p = Path(spec.path)
    cifar = (p / f"{spec.split}.bin").is_file() or (p / "cifar-100-binary").is_dir()
    return "cifar100" if cifar else "imagefolder"


def _languages(spec: EvalSpec) -> list[str] | None:
    if spec.languages.strip() in ("", "all"):
        return None
    return [c.strip() for c in spec.languages.split(",") if c.strip()]


def read_spec_data(spec: EvalSpec) -> Data:
    """The spec's data (files listed, not decoded), cut to `max_examples` evenly spaced images.
    A "translations" spec has no images: `read_translation_spec` reads it."""
    if spec.kind == "retrieval":
        if spec.format == "translations":
            raise ValueError(
                f"{spec.path}: translation pairs have no images; read them with "
                "read_translation_spec (`clippo eval retrieval --translations`)"
            )
        if spec.format == "karpathy":
            data: Data = read_karpathy(spec.path, spec.images, split=spec.split)
        elif spec.format == "xm3600":
            data = read_xm3600(spec.path, spec.images, languages=_languages(spec))
        elif spec.format == "hf":
            from clippo.eval.datasets_hf import read_hf_captions

            data = read_hf_captions(
                spec.path,
                split=spec.split,
                image_column=spec.image_column,
                caption_column=spec.caption_column,
            )
        else:
            data = read_pairs(
                spec.path, image_column=spec.image_column, caption_column=spec.caption_column
            )
    else:
        names = read_class_names(spec.class_names) if spec.class_names else None
        data = classification_source(
            _zeroshot_format(spec),
            spec.path,
            split=spec.split,
            labels=spec.labels or None,
            devkit=spec.devkit or None,
            class_names=names,
            image_column=spec.image_column,
            label_column=spec.label_column,
        )
    if spec.max_examples:
        data = data.subset(evenly_spaced(len(data), spec.max_examples))
    return data


def read_translation_spec(spec: EvalSpec) -> TranslationPairs:
    """A "translations" spec's pairs, cut to `max_examples` evenly spaced pairs."""
    pairs = read_translations(
        spec.path, spec.targets or None, src_lang=spec.src_lang, tgt_lang=spec.tgt_lang
    )
    if spec.max_examples:
        pairs = pairs.subset(evenly_spaced(len(pairs), spec.max_examples))
    return pairs


def resolve_prompts(spec: EvalSpec, class_names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(class names, templates) as the zero-shot suite uses them (canonicalised when
    `spec.canonical`: "a photo of a {}." -> "a photo of a {}", "aquarium_fish" ->
    "aquarium fish")."""
    if isinstance(spec.templates, tuple):
        templates = list(spec.templates)
    elif spec.templates in TEMPLATE_SETS:
        templates = list(TEMPLATE_SETS[spec.templates])
    elif Path(spec.templates).is_file():
        templates = read_templates(spec.templates)
    else:
        raise ValueError(
            f"templates {spec.templates!r}: not one of {sorted(TEMPLATE_SETS)} and no such file"
        )
    names = list(class_names)
    if spec.canonical:
        templates, names = canonical_templates(templates), canonical_class_names(names)
    return names, templates


# ---- image embeddings ----------------------------------------------------------------------------


class _Resized:
    """uint8 [N, H, W, 3] seen as [N, size, size, 3], resized batch by batch when sliced."""

    def __init__(self, images: np.ndarray, size: int) -> None:
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, s: slice) -> np.ndarray:
        batch = self.images[s]
        if batch.shape[1:3] == (self.size, self.size):
            return batch
        return np.stack([resize_uint8(im, self.size) for im in batch])


def _device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        return next(model.parameters()).device
    device = torch.device(device)
    model.to(device)
    return device


def image_embeddings(
    model: Any,
    data: _D,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 4,
    progress: bool = False,
) -> tuple[np.ndarray, _D]:
    """(float32 [N', D] image embeddings, `data` without the images that could not be decoded).

    Files are decoded in `num_workers` threads one batch ahead of the model (only the
    embeddings are kept); in-memory pixels are resized batch by batch."""
    device = _device(model, device)
    size = model.config.vit.image_size
    if isinstance(data.images, np.ndarray):
        encode_images, _ = as_encoders(model, device=device)
        z = embed(
            encode_images, _Resized(data.images, size), batch_size, desc="images", progress=progress
        )
        return z, data
    if isinstance(data.images, EncodedImages):
        vectors, keep, skipped = _embed_encoded(
            model, data.images, size, batch_size, device, num_workers, progress
        )
    else:
        from clippo.embed import embed_images

        out = embed_images(
            model,
            data.images,
            [str(i) for i in range(len(data))],
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            progress=progress,
        )
        vectors, keep = out.vectors, [int(i) for i in out.ids]
        skipped = [(int(i), reason) for i, reason in out.skipped]
    bad = tuple((data.names[i], reason) for i, reason in skipped)
    if not keep:
        raise ValueError(
            f"{data.source}: none of the {len(data)} images could be decoded: {bad[:3]}"
        )
    data = replace(data.subset(keep), skipped=data.skipped + bad)
    return vectors, data


def _embed_encoded(
    model: Any,
    images: EncodedImages,
    size: int,
    batch_size: int,
    device: torch.device,
    num_workers: int,
    progress: bool,
) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """(float32 [N', D], kept indices, (index, reason) skipped) for images kept encoded in a
    table, decoded in `num_workers` threads a batch at a time."""
    encode_images, _ = as_encoders(model, device=device)
    vectors: list[np.ndarray] = []
    keep: list[int] = []
    skipped: list[tuple[int, str]] = []
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        for lo in range(0, len(images), batch_size):
            idx = range(lo, min(lo + batch_size, len(images)))
            loaded = list(pool.map(lambda i: decode_resized(images[i], size), idx))
            good = [i for i, a in zip(idx, loaded) if not isinstance(a, str)]
            skipped += [(i, a) for i, a in zip(idx, loaded) if isinstance(a, str)]
            if good:
                batch = np.stack([a for a in loaded if not isinstance(a, str)])
                vectors.append(embed(encode_images, batch, batch_size))
                keep += good
    dim = model.config.out_dim
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), keep, skipped


def _lookup(z: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """An "encoder" over precomputed embeddings: a batch of row indices -> their rows."""
    return lambda idx: z[np.asarray(idx)]


def _skipped(data: Data) -> dict[str, Any]:
    return {"n_skipped": len(data.skipped), "skipped": [list(s) for s in data.skipped]}


# ---- the suites ----------------------------------------------------------------------------------


def _text_retrieval(
    zimg: np.ndarray, encode_texts: Any, data: CaptionedImages, spec: EvalSpec, progress: bool
) -> tuple[dict[str, Any], np.ndarray]:
    """(recalls, n_images, n_texts, modality_gap; the text embeddings) of one language."""
    ztxt = embed(encode_texts, list(data.texts), spec.batch_size, desc="texts", progress=progress)
    out: dict[str, Any] = retrieval_recalls(zimg, ztxt, data.image_ids_for_text)
    out["n_images"], out["n_texts"] = len(zimg), len(ztxt)
    out["modality_gap"] = modality_gap(zimg, ztxt)
    return out, ztxt


def retrieval_suite(
    model: Any,
    spec: EvalSpec,
    *,
    data: CaptionedImages | TranslationPairs | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 4,
    progress: bool = False,
    examples_png: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Image<->text Recall@{1,5,10} (big_vision's retrieval evaluator) on the spec's pairs, and
    the modality gap; the metrics computed in blocks (`retrieval_recalls`), never the full
    image x text score matrix.

    data: the spec's data already read (and possibly decoded; hooks cache it; the
    `TranslationPairs` of a "translations" spec). examples_png:
    also write a PNG of the top captions for the first query images. Returns
    {"img2txt/r@k", "txt2img/r@k", "n_images", "n_texts", "modality_gap", "n_skipped",
    "skipped"}; for several languages (Crossmodal-3600) those metrics are the means over the
    languages, "per_language" holds each language's and "languages" their codes. A
    "translations" spec returns `translation_suite`'s dict."""
    if spec.format == "translations":
        if data is not None and not isinstance(data, TranslationPairs):
            raise TypeError(
                f"a translations spec needs TranslationPairs, got {type(data).__name__}"
            )
        return translation_suite(model, spec, data=data, device=device, progress=progress)
    if isinstance(data, TranslationPairs):
        raise TypeError(f"translation pairs given for a {spec.format!r} retrieval spec")
    given = read_spec_data(spec) if data is None else data
    if not isinstance(given, CaptionedImages):
        raise TypeError(f"retrieval needs (image, caption) pairs, got {type(given).__name__}")
    zimg, data = image_embeddings(
        model,
        given,
        batch_size=spec.batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
    )
    _, encode_texts = as_encoders(model)
    languages = data.languages()
    if not languages:
        out, ztxt = _text_retrieval(zimg, encode_texts, data, spec, progress)
        shown_texts = data
    else:
        per: dict[str, dict[str, Any]] = {}
        for lang in languages:
            per[lang], z = _text_retrieval(zimg, encode_texts, data.language(lang), spec, progress)
            if lang == languages[0]:
                ztxt, shown_texts = z, data.language(lang)
        keys = [k for k in per[languages[0]] if k not in ("n_images", "n_texts")]
        out = {k: float(np.mean([per[lang][k] for lang in languages])) for k in keys}
        out["n_images"] = len(zimg)
        out["n_texts"] = sum(int(per[lang]["n_texts"]) for lang in languages)
        out["languages"], out["per_language"] = languages, per
    out.update(_skipped(data))
    if examples_png is not None:
        shown = list(range(min(6, len(data))))
        size = model.config.vit.image_size
        if isinstance(data.images, np.ndarray):
            thumbs = _Resized(data.images, size)[: len(shown)]
        else:
            images = data.images
            decoded = [decode_resized(images[i], size) for i in shown]
            thumbs = np.stack([np.zeros((size, size, 3), np.uint8) if isinstance(a, str) else a
                               for a in decoded])  # fmt: skip
        save_retrieval_examples(
            examples_png,
            thumbs,
            shown_texts.texts,
            zimg[shown] @ ztxt.T,
            shown_texts.image_ids_for_text,
            indices=range(len(shown)),
        )
    return out


def translation_suite(
    model: Any,
    spec: EvalSpec,
    *,
    data: TranslationPairs | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    **ignored: Any,  # the image suites' options (num_workers, examples_png)
) -> dict[str, Any]:
    """Text->text retrieval over translation pairs (the multilingual check of a renderer): each
    source sentence against every target ("src2tgt/r@k") and each target against every source
    ("tgt2src/r@k"). Returns those, "src_lang", "tgt_lang", "n_pairs" and "centroid_distance"
    (between the source and the target sentence centroids: the language gap, measured as the
    modality gap is)."""
    pairs = read_translation_spec(spec) if data is None else data
    if device is not None:
        _device(model, device)
    _, encode_texts = as_encoders(model)
    bs = spec.batch_size
    zsrc = embed(encode_texts, list(pairs.src), bs, desc=pairs.src_lang, progress=progress)
    ztgt = embed(encode_texts, list(pairs.tgt), bs, desc=pairs.tgt_lang, progress=progress)
    out: dict[str, Any] = translation_recalls(zsrc, ztgt, pairs.src, pairs.tgt)
    out["centroid_distance"] = modality_gap(zsrc, ztgt)
    out["src_lang"], out["tgt_lang"], out["n_pairs"] = pairs.src_lang, pairs.tgt_lang, len(pairs)
    return out


def zeroshot_suite(
    model: Any,
    spec: EvalSpec,
    *,
    data: LabelledImages | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 4,
    progress: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Zero-shot classification (big_vision's discriminative_classifier): prompt-ensemble class
    embeddings, argmax of the cosine. cache_dir: keep the class embeddings there, keyed by the
    model, the class names and the templates (`clippo.eval.zeroshot.class_embeddings`). Returns
    `evaluate_zeroshot`'s dict ("accuracy", "mean_per_class_accuracy", "top5_accuracy",
    "per_class", "n") plus "n_classes", "n_templates", "n_skipped", "skipped"."""
    given = read_spec_data(spec) if data is None else data
    if not isinstance(given, LabelledImages):
        raise TypeError(f"zero-shot needs labelled images, got {type(given).__name__}")
    names, templates = resolve_prompts(spec, given.class_names)
    zimg, data = image_embeddings(
        model,
        given,
        batch_size=spec.batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
    )
    zcls = class_embeddings(model, names, templates, cache_dir=cache_dir, progress=progress)
    out = evaluate_zeroshot(
        (_lookup(zimg), _lookup(zcls)),
        np.arange(len(zimg)),
        data.labels,
        names,
        templates,
        batch_size=spec.batch_size,
        progress=progress,
        class_embeddings=zcls,
    )
    out["n_classes"], out["n_templates"] = len(names), len(templates)
    out.update(_skipped(data))
    return out


def run_suite(model: Any, spec: EvalSpec, **kwargs: Any) -> dict[str, Any]:
    """`SUITES[spec.kind](model, spec, **kwargs)`; `SUITES` (`clippo.eval.SUITES`, re-exported
    here) names this module's `retrieval_suite` and `zeroshot_suite`."""
    return SUITES[spec.kind](model, spec, **kwargs)
