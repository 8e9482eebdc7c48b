"""Retrieval sets in the layouts they are distributed in, read into `CaptionedImages` (and
`TranslationPairs` for text->text retrieval).

    coco = read_karpathy("dataset_coco.json", "coco/images")            # test split, all captions
    flickr = read_karpathy("dataset_flickr30k.json", "flickr30k-images")
    xm = read_xm3600("captions.jsonl", "xm3600/images", languages=["en", "de"])
    pairs = read_translations("en-de.tsv", src_lang="en", tgt_lang="de")

Karpathy's split files (`dataset_coco.json`, `dataset_flickr30k.json`): `images[]` with
`filename`, `split` ("train"/"restval"/"val"/"test"), `sentences[].raw`, and `filepath` in the
COCO file only (`IMAGE_ROOT/<filepath>/<filename>`; Flickr30k: `IMAGE_ROOT/<filename>`). Every
caption of an image is kept (some COCO images have more than five), as big_vision and TFDS do.

Crossmodal-3600's `captions.jsonl`: one JSON object per image,
`{"image/key": "000411001ff7dd4f", "en": {"caption": [...], ...}, "de": {...}, ...}`; the image
is `IMAGE_DIR/<key>.jpg`. Every caption of every chosen language is kept; texts carry their
language code (`CaptionedImages.text_languages`).

Files are listed, not decoded: a missing or undecodable image is skipped and listed when the
suite decodes it. A missing split file or image folder is an error naming the expected layout.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clippo.errors import read_utf8
from clippo.eval.datasets import CaptionedImages, CaptionRows, jsonl_rows, read_json

__all__ = ["TranslationPairs", "read_karpathy", "read_xm3600", "read_translations"]

KARPATHY_LAYOUT = (
    "Karpathy's split file (dataset_coco.json / dataset_flickr30k.json: images[] with filename, "
    "split, sentences[].raw and, for COCO, filepath)"
)
XM3600_LAYOUT = (
    'Crossmodal-3600 captions.jsonl (one {"image/key": ..., "<lang>": {"caption": [...]}} per '
    "line) and an image folder holding <key>.jpg"
)


def _image_root(image_root: str | os.PathLike, layout: str) -> Path:
    root = Path(image_root)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder not found: {root} (expected {layout})")
    return root


def _captions(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of captions, got {value!r:.80}")
    for c in value:
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"{where}: empty or non-text caption {c!r:.80}")
    return [c.strip() for c in value]


def read_karpathy(
    path: str | os.PathLike, image_root: str | os.PathLike, *, split: str = "test"
) -> CaptionedImages:
    """Karpathy's COCO/Flickr30k split file -> CaptionedImages of one split (default "test":
    5,000 COCO or 1,000 Flickr30k images), every caption kept, images in file order."""
    path = Path(path)
    data = read_json(path, f"{path}: no such file (expected {KARPATHY_LAYOUT})")
    root = _image_root(image_root, KARPATHY_LAYOUT)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{path}: no images[] list (expected {KARPATHY_LAYOUT})")
    files: list[Path] = []
    names: list[str] = []
    rows = CaptionRows()
    splits: set[str] = set()
    for i, im in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(im, dict):
            raise ValueError(f"{where}: expected an object")
        for key in ("filename", "split", "sentences"):
            if key not in im:
                raise ValueError(f"{where}: no key {key!r} (keys: {sorted(im)})")
        splits.add(str(im["split"]))
        if im["split"] != split:
            continue
        sentences = im["sentences"]
        if not isinstance(sentences, list) or not sentences:
            raise ValueError(f"{where}: sentences must be a non-empty list")
        raws = []
        for j, s in enumerate(sentences):
            if not isinstance(s, dict) or "raw" not in s:
                raise ValueError(f"{where}.sentences[{j}]: no key 'raw'")
            raws.append(s["raw"])
        captions = _captions(raws, where)
        name = "/".join(p for p in (str(im.get("filepath", "")), str(im["filename"])) if p)
        rows.add(len(files), captions)
        files.append(root / name)
        names.append(name)
    if not files:
        raise ValueError(f"{path}: no images in split {split!r} (splits: {sorted(splits)})")
    return rows.captioned(tuple(files), names, str(path))


def read_xm3600(
    path: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    languages: Sequence[str] | None = None,
) -> CaptionedImages:
    """Crossmodal-3600 -> CaptionedImages over every image, texts tagged with their language.

    languages: the codes to keep (each must be in every record), default every language of the
    first record, in its order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected {XM3600_LAYOUT})")
    root = _image_root(image_root, XM3600_LAYOUT)
    text = read_utf8(path)
    files: list[Path] = []
    names: list[str] = []
    rows = CaptionRows()
    chosen = list(languages) if languages else None
    for obj, where in jsonl_rows(path, text):
        if not isinstance(obj, dict) or not isinstance(obj.get("image/key"), str):
            raise ValueError(f'{where}: expected an object with "image/key" ({XM3600_LAYOUT})')
        present = [k for k, v in obj.items() if isinstance(v, dict) and "caption" in v]
        if chosen is None:
            chosen = present
            if not chosen:
                raise ValueError(f'{where}: no language entries {{"<lang>": {{"caption": [...]}}}}')
        for lang in chosen:
            if lang not in present:
                raise ValueError(f"{where}: no captions in language {lang!r} (has {present})")
            rows.add(len(files), _captions(obj[lang]["caption"], f"{where}: {lang}"), lang)
        key = obj["image/key"]
        files.append(root / f"{key}.jpg")
        names.append(f"{key}.jpg")
    if not files:
        raise ValueError(f"{path}: no records (expected {XM3600_LAYOUT})")
    return rows.captioned(tuple(files), names, str(path))


# ---- text->text: translation pairs ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TranslationPairs:
    """Aligned sentences: src[i] translates to tgt[i] (N each), for text->text retrieval."""

    src: tuple[str, ...]
    tgt: tuple[str, ...]
    src_lang: str
    tgt_lang: str
    source: str

    def __len__(self) -> int:
        return len(self.src)

    def subset(self, keep: Sequence[int] | np.ndarray) -> TranslationPairs:
        """Only pairs `keep` (in that order)."""
        keep = np.asarray(keep, dtype=np.int64)
        return TranslationPairs(
            tuple(self.src[i] for i in keep),
            tuple(self.tgt[i] for i in keep),
            self.src_lang,
            self.tgt_lang,
            self.source,
        )


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"translations file not found: {path}")
    return [
        (n, line.rstrip("\r\n"))
        for n, line in enumerate(io.StringIO(read_utf8(path), newline=None), 1)
        if line.strip()
    ]


def read_translations(
    path: str | os.PathLike,
    targets: str | os.PathLike | None = None,
    *,
    src_lang: str = "src",
    tgt_lang: str = "tgt",
) -> TranslationPairs:
    """Translation pairs: `path` with `source<TAB>target` per line, or, with `targets`, two
    aligned files of one sentence per line (blank lines ignored; the counts must agree)."""
    path = Path(path)
    src: list[str] = []
    tgt: list[str] = []
    if targets is None:
        for lineno, line in _lines(path):
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise ValueError(
                    f"{path}:{lineno}: expected 'source<TAB>target', got {len(parts)} field(s)"
                )
            src.append(parts[0].strip())
            tgt.append(parts[1].strip())
        source = str(path)
    else:
        a, b = _lines(path), _lines(Path(targets))
        if len(a) != len(b):
            raise ValueError(f"{path} has {len(a)} sentences but {targets} has {len(b)}")
        src, tgt = [s.strip() for _, s in a], [t.strip() for _, t in b]
        source = f"{path} + {targets}"
    if not src:
        raise ValueError(f"{path}: no translation pairs")
    return TranslationPairs(tuple(src), tuple(tgt), src_lang, tgt_lang, source)
