"""Evaluation data as users have it on disk, read into small typed containers.

    pairs = read_pairs("coco_test.csv")          # CSV/TSV/jsonl of (image path, caption)
    folder = read_imagefolder("pets/test")       # one sub-folder per class
    cifar = read_cifar100("cifar-100-binary")    # test.bin + fine_label_names.txt
    pairs = load_images(pairs.subset(evenly_spaced(len(pairs), 500)), size=224)

The datasets in their distributed layouts (Karpathy's COCO/Flickr30k split files,
Crossmodal-3600, ImageNet, CIFAR-10, Pets, Hugging Face folders, translation pairs) are read by
`clippo.eval.datasets_retrieval` and `clippo.eval.datasets_classification` into these same types.

Readers only list files and parse text; images are decoded later (`load_images`, or streamed by
the suites), so a 50k-image folder costs nothing until it is evaluated. Malformed rows are
errors naming file and line (an evaluation set that silently loses rows is a different
benchmark); image files that cannot be decoded are skipped and recorded in `skipped`, with the
reason, by whoever decodes them. torch is not imported here.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
from tqdm.auto import tqdm

from clippo.data.images import IMAGE_SUFFIXES, list_images, load_image
from clippo.errors import DataError, read_utf8
from clippo.prompts import template_slot

__all__ = [
    "CaptionedImages",
    "CaptionRows",
    "LabelledImages",
    "evenly_spaced",
    "read_pairs",
    "read_json",
    "jsonl_rows",
    "read_imagefolder",
    "read_cifar100",
    "read_cifar100_bin",
    "read_class_names",
    "bundled_class_names",
    "imagenet_wnids",
    "read_templates",
    "load_images",
    "EncodedImages",
]


@dataclass(frozen=True, eq=False)
class EncodedImages:
    """Images kept encoded in a table and read on demand (a Hugging Face dataset's undecoded
    `Image` column): `self[i]` is the encoded bytes, or a file path, of image i.

    table: `table[row] -> bytes | str` (the reader's accessor); rows: int64 [N], the rows kept."""

    table: Any
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> bytes | str:
        item: bytes | str = self.table[int(self.rows[i])]
        return item

    def take(self, keep: np.ndarray) -> EncodedImages:
        """Only rows `keep` (int [K]), in that order; nothing is decoded."""
        return EncodedImages(self.table, self.rows[keep])


# images: the files to decode, pixels already in memory (uint8 [N, H, W, 3]), or encoded images
ImageSource = tuple[Path, ...] | np.ndarray | EncodedImages


@dataclass(frozen=True, eq=False)
class CaptionedImages:
    """Retrieval data: image i is described by every text j with image_ids_for_text[j] == i.

    images: N files, uint8 [N, H, W, 3] or EncodedImages; names: N labels for messages (the
    path as written in the pairs file); texts: M captions; image_ids_for_text: int64 [M];
    skipped: (name, reason) of images dropped as undecodable; text_languages: M language codes
    (Crossmodal-3600: one retrieval per language over the same images) or () for one language.
    """

    images: ImageSource
    names: tuple[str, ...]
    texts: tuple[str, ...]
    image_ids_for_text: np.ndarray
    source: str
    skipped: tuple[tuple[str, str], ...] = ()
    text_languages: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.names)

    def languages(self) -> list[str]:
        """The language codes of the texts, in order of first appearance ([] for one language)."""
        return list(dict.fromkeys(self.text_languages))

    def language(self, lang: str) -> CaptionedImages:
        """Only the texts in `lang` (same images, same ids): one language's retrieval set."""
        keep = [j for j, x in enumerate(self.text_languages) if x == lang]
        if not keep:
            raise ValueError(f"{self.source}: no captions in language {lang!r}")
        return replace(
            self,
            texts=tuple(self.texts[j] for j in keep),
            image_ids_for_text=self.image_ids_for_text[keep],
            text_languages=(),
        )

    def subset(self, keep: Sequence[int] | np.ndarray) -> CaptionedImages:
        """Only images `keep` (in that order) and their captions; image ids renumbered."""
        keep = np.asarray(keep, dtype=np.int64)
        new_id = np.full(len(self), -1, dtype=np.int64)
        new_id[keep] = np.arange(len(keep))
        mapped = new_id[self.image_ids_for_text]
        texts = tuple(t for t, i in zip(self.texts, mapped) if i >= 0)
        langs = tuple(t for t, i in zip(self.text_languages, mapped) if i >= 0)
        return replace(
            self,
            images=_take(self.images, keep),
            names=tuple(self.names[i] for i in keep),
            texts=texts,
            image_ids_for_text=mapped[mapped >= 0],
            text_languages=langs,
        )


class CaptionRows:
    """The texts of a CaptionedImages gathered image by image, as every retrieval reader builds
    them: texts [M], the image id of each [M] and, for a multilingual set, its language [M]."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.ids: list[int] = []
        self.langs: list[str] = []

    def add(self, image_id: int, captions: Sequence[str], lang: str | None = None) -> None:
        """Captions of image `image_id` (in `lang`, when the set has languages)."""
        self.texts += captions
        self.ids += [image_id] * len(captions)
        if lang is not None:
            self.langs += [lang] * len(captions)

    def captioned(self, images: ImageSource, names: Sequence[str], source: str) -> CaptionedImages:
        """The CaptionedImages of `images` (N) named `names` (N), read from `source`."""
        return CaptionedImages(
            images=images,
            names=tuple(names),
            texts=tuple(self.texts),
            image_ids_for_text=np.asarray(self.ids, dtype=np.int64),
            source=source,
            text_languages=tuple(self.langs),
        )


def read_json(path: Path, missing: str) -> Any:
    """The parsed JSON file `path`: FileNotFoundError(`missing`) if there is none, DataError naming
    file and line if it is not JSON."""
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        return json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def jsonl_rows(path: Path, text: str) -> Iterator[tuple[Any, str]]:
    """(object, "path:line") per non-blank line of the JSON-lines `text` read from `path`."""
    # lines as a text-mode file gives them (not splitlines: JSON may hold a raw U+2028)
    for lineno, line in enumerate(io.StringIO(text, newline=None), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg})") from None
        yield obj, where


@dataclass(frozen=True, eq=False)
class LabelledImages:
    """Classification data: images (N files, uint8 [N, H, W, 3] or EncodedImages), labels int64
    [N] indexing class_names, names (N labels for messages), skipped (name, reason) of dropped images."""

    images: ImageSource
    names: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str
    skipped: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, keep: Sequence[int] | np.ndarray) -> LabelledImages:
        """Only images `keep` (in that order), with their labels and names."""
        keep = np.asarray(keep, dtype=np.int64)
        return replace(
            self,
            images=_take(self.images, keep),
            names=tuple(self.names[i] for i in keep),
            labels=self.labels[keep],
        )


def _take(images: ImageSource, keep: np.ndarray) -> ImageSource:
    if isinstance(images, np.ndarray):
        return images[keep]
    if isinstance(images, EncodedImages):
        return images.take(keep)
    return tuple(images[i] for i in keep)


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """k of range(n), evenly spread (all of them when k <= 0 or k >= n): int64 [min(k, n)].

    Deterministic, and for a class-sorted folder it keeps every class represented, which a
    prefix would not."""
    if k <= 0 or k >= n:
        return np.arange(n, dtype=np.int64)
    return (np.arange(k, dtype=np.int64) * n) // k


# ---- (image, caption) pairs ---------------------------------------------------------------------


def _pair_rows(
    path: Path, image_column: str, caption_column: str
) -> list[tuple[str, str | list, str]]:
    """(image, caption or list of captions, where) per data row of a CSV/TSV/jsonl file."""
    suffix = path.suffix.lower()
    rows: list[tuple[str, str | list, str]] = []
    text = read_utf8(path)  # a non-UTF-8 file is an error naming file and line
    if suffix in (".jsonl", ".json"):
        for obj, where in jsonl_rows(path, text):
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object per line")
            for key in (image_column, caption_column):
                if key not in obj:
                    raise ValueError(f"{where}: no key {key!r} (keys: {sorted(obj)})")
            rows.append((obj[image_column], obj[caption_column], where))
        return rows
    if suffix not in (".csv", ".tsv"):
        raise ValueError(f"{path}: pairs file must end in .csv, .tsv or .jsonl")
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",")
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file (expected a header row)")
        missing = [c for c in (image_column, caption_column) if c not in header]
        if missing:
            raise ValueError(f"{path}: header {header} lacks column(s) {missing}")
        ci, cc = header.index(image_column), header.index(caption_column)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{where}: {len(row)} fields, the header has {len(header)}")
            rows.append((row[ci], row[cc], where))
    return rows


def read_pairs(
    path: str | os.PathLike,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    image_root: str | os.PathLike | None = None,
) -> CaptionedImages:
    """A file of (image path, caption) rows -> CaptionedImages, grouped by image path.

    Formats by suffix: `.csv` / `.tsv` with a header naming the two columns, or `.jsonl` with
    one object per line whose caption is a string or a list of strings. Several rows (or a
    list) may describe one image (COCO/Flickr: 5 captions each); images keep the order in which
    they first appear. Relative image paths are relative to the file's folder (or
    `image_root`). Raises ValueError naming the file and line for a malformed row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    root = Path(image_root) if image_root is not None else path.resolve().parent
    index: dict[Path, int] = {}
    files: list[Path] = []
    names: list[str] = []
    rows = CaptionRows()
    for image, caption, where in _pair_rows(path, image_column, caption_column):
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"{where}: empty or non-text image path {image!r}")
        captions = caption if isinstance(caption, list) else [caption]
        if not captions:
            raise ValueError(f"{where}: empty caption list")
        for c in captions:
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"{where}: empty or non-text caption {c!r}")
        image = image.strip()
        full = Path(image) if os.path.isabs(image) else root / image
        key = Path(os.path.normpath(full))
        if key not in index:
            index[key] = len(files)
            files.append(key)
            names.append(image)
        rows.add(index[key], captions)
    if not files:
        raise ValueError(f"{path}: no (image, caption) rows")
    return rows.captioned(tuple(files), names, str(path))


# ---- classification ------------------------------------------------------------------------------

# CLIP's cleaned ImageNet-1k names (with the sorted WordNet IDs), CIFAR-10, CIFAR-100 and Pets
# names, bundled as package data (eval/data/LICENSE-class_names.txt says where each list is from)
CLASS_NAMES_FILE = Path(__file__).parent / "data" / "class_names.json"


@lru_cache(maxsize=1)
def _bundled() -> dict[str, list[str]]:
    data: dict[str, list[str]] = json.loads(CLASS_NAMES_FILE.read_text(encoding="utf-8"))
    return data


def bundled_class_names(dataset: str) -> list[str]:
    """The bundled class names of "imagenet1k" (CLIP's cleaned names, in sorted-WordNet-ID
    order), "cifar10", "cifar100" (fine labels) or "pets", in label order."""
    if dataset not in ("imagenet1k", "cifar10", "cifar100", "pets"):
        raise ValueError(f"no bundled class names for {dataset!r}")
    return list(_bundled()[dataset])


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k WordNet IDs, sorted (label order)."""
    return list(_bundled()["imagenet1k_wnids"])


def read_class_names(path: str | os.PathLike, expected: int | None = None) -> list[str]:
    """One class name per non-empty line (UTF-8); `expected`: the number there must be."""
    path = Path(path)
    names = [s.strip() for s in read_utf8(path).splitlines() if s.strip()]
    if expected is not None and len(names) != expected:
        raise ValueError(f"{path}: {len(names)} class names, expected {expected}")
    return names


def read_imagefolder(
    root: str | os.PathLike, *, class_names: Sequence[str] | None = None
) -> LabelledImages:
    """`root/<class>/**/<image>` -> LabelledImages; classes are the sub-folders, sorted by name
    (torchvision's ImageFolder order), images found recursively by suffix, sorted.

    class_names: names to use instead of the folder names (same order; e.g. readable names for
    ImageNet's `n01440764` folders). A class folder without images stays a candidate class.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder not found: {root}")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    if class_names is not None and len(class_names) != len(classes):
        raise ValueError(
            f"{root}: {len(classes)} class folders but {len(class_names)} class names given"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(classes):
        found = list_images(folder)
        files += found
        labels += [label] * len(found)
    if not files:
        raise ValueError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return LabelledImages(
        images=tuple(files),
        names=tuple(p.relative_to(root).as_posix() for p in files),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=tuple(class_names if class_names is not None else (p.name for p in classes)),
        source=str(root),
    )


# A CIFAR-100 binary record: coarse label, fine label, then 3,072 pixel bytes (1,024 red, 1,024
# green, 1,024 blue, each a row-major 32x32 plane).
CIFAR_RECORD_BYTES = 2 + 3 * 32 * 32


def read_cifar100_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`test.bin`/`train.bin` -> (uint8 images [N,32,32,3], coarse [N], fine [N] int64)."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD_BYTES:
        raise ValueError(
            f"{path}: {raw.size} bytes is not a whole number of {CIFAR_RECORD_BYTES}-byte records"
        )
    records = raw.reshape(-1, CIFAR_RECORD_BYTES)
    images = records[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return (
        np.ascontiguousarray(images),
        records[:, 0].astype(np.int64),
        records[:, 1].astype(np.int64),
    )


def read_cifar100(
    directory: str | os.PathLike, *, split: str = "test", class_names: Sequence[str] | None = None
) -> LabelledImages:
    """CIFAR-100 binary version: `<directory>/<split>.bin` + `fine_label_names.txt` (or the
    `cifar-100-binary/` folder the archive unpacks to, inside `directory`); fine labels.

    The names file has the 100 fine class names, one per line, in label order (TFDS's names:
    underscores kept, e.g. `aquarium_fish`); without it the bundled list (the same names) is
    used."""
    directory = Path(directory)
    if not (directory / f"{split}.bin").is_file() and (directory / "cifar-100-binary").is_dir():
        directory = directory / "cifar-100-binary"
    data = directory / f"{split}.bin"
    if not data.is_file():
        raise FileNotFoundError(
            f"CIFAR-100: no {data} (the binary version's layout: cifar-100-binary/{split}.bin)"
        )
    if class_names is None:
        names_file = directory / "fine_label_names.txt"
        if names_file.is_file():
            class_names = read_class_names(names_file)
        else:
            class_names = bundled_class_names("cifar100")
    images, _, fine = read_cifar100_bin(data)
    if len(fine) and fine.max() >= len(class_names):
        raise ValueError(f"{data}: label {int(fine.max())} but only {len(class_names)} class names")
    return LabelledImages(
        images=images,
        names=tuple(f"{data.name}[{i}]" for i in range(len(fine))),
        labels=fine,
        class_names=tuple(class_names),
        source=str(data),
    )


def read_templates(path: str | os.PathLike) -> list[str]:
    """Prompt templates, one per non-empty line, each with exactly one "{}" (or CLIP_benchmark's
    "{c}", read as "{}") for the class."""
    path = Path(path)
    out = []
    for lineno, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(template_slot(line.strip()))
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
    if not out:
        raise ValueError(f"{path}: no templates")
    return out


# ---- decoding ------------------------------------------------------------------------------------


def decode_resized(item: bytes | str | os.PathLike, size: int) -> np.ndarray | str:
    """`load_image` of a file path or of encoded bytes: uint8 [size, size, 3], or the reason the
    image is unusable."""
    # decode_image (under load_image) reads bytes as well as paths
    return load_image(cast(Any, item), size)


def load_images(
    data: CaptionedImages | LabelledImages,
    size: int,
    *,
    num_workers: int = 4,
    progress: bool = False,
) -> CaptionedImages | LabelledImages:
    """`data` with its images decoded and resized to uint8 [N', size, size, 3] (in memory);
    undecodable files dropped (with their captions/labels) and added to `skipped`."""
    from clippo.preprocess import resize_uint8

    if isinstance(data.images, np.ndarray):
        if data.images.shape[1:3] == (size, size):
            return data
        pixels = np.stack([resize_uint8(im, size) for im in data.images])
        return replace(data, images=pixels)
    images = data.images
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        loaded = list(
            tqdm(
                pool.map(lambda i: decode_resized(images[i], size), range(len(images))),
                total=len(data),
                desc="decode images",
                unit="img",
                disable=not progress,
                leave=False,
            )
        )
    keep = [i for i, a in enumerate(loaded) if not isinstance(a, str)]
    bad = tuple((data.names[i], a) for i, a in enumerate(loaded) if isinstance(a, str))
    if not keep:
        raise ValueError(
            f"{data.source}: none of the {len(data)} images could be decoded: {bad[:3]}"
        )
    out = data.subset(keep)
    pixels = np.stack([loaded[i] for i in keep])
    return replace(out, images=pixels, skipped=data.skipped + bad)
