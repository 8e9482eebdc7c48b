"""Classification sets in the layouts they are distributed in, read into `LabelledImages`.

    data = classification_source("imagenet_val", "ILSVRC2012_val")        # + LOC_val_solution.csv
    data = classification_source("imagenet_val", "val", labels="ILSVRC2012_validation_ground_truth.txt",
                                 devkit="ILSVRC2012_devkit_t12")
    data = classification_source("cifar10", "cifar-10-batches-bin")
    data = classification_source("pets", "oxford-iiit-pet")
    data = classification_source("hf", "imagenet_hf", split="validation")

Layouts (`classification_source(kind, path, ...)`, the one entry point the zero-shot and
few-shot commands share):

- "imagefolder": `root/<class>/<image>` (classes: the sorted sub-folders).
- "imagenet_folder": the 1,000-synset folder layout `root/n01440764/...`; class names are
  CLIP's cleaned ImageNet names of the folders' WordNet IDs.
- "imagenet_val": the flat `ILSVRC2012_val_00000001.JPEG` ... folder, labelled by
  `LOC_val_solution.csv` (`ImageId,PredictionString`, the first token of which is the WordNet
  ID), or by the devkit's `data/ILSVRC2012_validation_ground_truth.txt` (one ILSVRC2012_ID per
  image, in file-name order), mapped through the devkit's `data/meta.mat` to WordNet IDs. The
  label is the WordNet ID's index among the sorted class WordNet IDs (torchvision's and TFDS's
  order, which CLIP's class-name list follows).
- "cifar10": `cifar-10-batches-bin/test_batch.bin` (`data_batch_1..5.bin` for "train");
  "cifar100": `cifar-100-binary/test.bin`.
- "pets": Oxford-IIIT Pets, `images/<name>.jpg` + `annotations/test.txt` (or trainval.txt):
  `<name> <class id 1..37> <species> <breed id>` per line.
- "hf": a `datasets.load_from_disk` folder or parquet file(s) with image and label columns.

Class names are bundled (`eval/data/class_names.json`, see the LICENSE note beside it) for
ImageNet-1k, CIFAR-10, CIFAR-100 and Pets; `class_names=` replaces them.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from clippo.errors import read_utf8
from clippo.eval.datasets import (
    LabelledImages,
    bundled_class_names,
    imagenet_wnids,
    read_cifar100,
    read_imagefolder,
)

__all__ = [
    "CLASSIFICATION_KINDS",
    "ClassificationKind",
    "bundled_class_names",
    "imagenet_wnids",
    "classification_source",
    "read_imagenet_val",
    "read_imagenet_folder",
    "read_imagenet_devkit",
    "read_cifar10",
    "read_pets",
]

ClassificationKind = Literal[
    "imagefolder",
    "imagenet_folder",
    "imagenet_val",
    "cifar10",
    "cifar100",
    "pets",
    "hf",
]
CLASSIFICATION_KINDS: tuple[str, ...] = get_args(ClassificationKind)
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$", re.IGNORECASE)
IMAGENET_VAL_LAYOUT = (
    "the flat ImageNet validation folder (ILSVRC2012_val_00000001.JPEG ...) with "
    "LOC_val_solution.csv, or with the devkit's data/ILSVRC2012_validation_ground_truth.txt "
    "and data/meta.mat"
)


def _names_for_wnids(wnids: Sequence[str], where: str) -> list[str]:
    name_of = dict(zip(imagenet_wnids(), bundled_class_names("imagenet1k")))
    unknown = [w for w in wnids if w not in name_of]
    if unknown:
        raise ValueError(
            f"{where}: WordNet IDs {unknown[:5]} are not ImageNet-1k classes; give class names"
        )
    return [name_of[w] for w in wnids]


def _check_names(names: Sequence[str], n: int, where: str) -> tuple[str, ...]:
    if len(names) != n:
        raise ValueError(f"{where}: {n} classes but {len(names)} class names given")
    return tuple(names)


# ---- ImageNet --------------------------------------------------------------------------------


def read_imagenet_folder(
    root: str | os.PathLike, *, class_names: Sequence[str] | None = None
) -> LabelledImages:
    """The synset folder layout `root/<wnid>/<image>`: CLIP's names for the WordNet IDs."""
    data = read_imagefolder(root)
    if class_names is None:
        class_names = _names_for_wnids(data.class_names, str(root))
    return LabelledImages(
        images=data.images,
        names=data.names,
        labels=data.labels,
        class_names=_check_names(class_names, len(data.class_names), str(root)),
        source=data.source,
    )


def read_imagenet_devkit(devkit: str | os.PathLike) -> tuple[dict[int, str], list[str]]:
    """The devkit's `data/meta.mat` -> ({ILSVRC2012_ID: WordNet ID} of the leaf synsets, their
    WordNet IDs sorted: the class order). `devkit`: the devkit folder, or meta.mat itself."""
    try:  # scipy reads MATLAB files; it is a test extra, needed here only
        import scipy.io  # type: ignore[import-untyped]
    except ImportError:
        raise ImportError(
            "reading the ImageNet devkit's meta.mat needs scipy (pip install scipy), or use "
            "LOC_val_solution.csv"
        ) from None

    devkit = Path(devkit)
    meta = devkit if devkit.is_file() else devkit / "data" / "meta.mat"
    if not meta.is_file():
        raise FileNotFoundError(f"ImageNet devkit: no {meta} (expected <devkit>/data/meta.mat)")
    try:
        synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
        ids = [int(x) for x in synsets["ILSVRC2012_ID"]]
        wnids = [str(x) for x in synsets["WNID"]]
        children = [int(x) for x in synsets["num_children"]]
    except (KeyError, ValueError, TypeError, IndexError, OSError) as e:
        raise ValueError(
            f"{meta}: not the devkit's synsets table ({type(e).__name__}: {e})"
        ) from None
    # the 1,000 classes are the leaves (num_children == 0); the rest are WordNet ancestors
    id_to_wnid = {i: w for i, w, c in zip(ids, wnids, children) if c == 0}
    if not id_to_wnid:
        raise ValueError(f"{meta}: no leaf synsets (num_children == 0)")
    return id_to_wnid, sorted(id_to_wnid.values())


def _val_files(directory: Path) -> dict[str, Path]:
    """ImageId ("ILSVRC2012_val_00000001") -> file, for every flat validation image."""
    if not directory.is_dir():
        raise NotADirectoryError(
            f"ImageNet validation folder not found: {directory} (expected {IMAGENET_VAL_LAYOUT})"
        )
    found = {p.name.rsplit(".", 1)[0]: p for p in directory.iterdir() if _VAL_NAME.match(p.name)}
    if not found:
        raise ValueError(f"{directory}: no ILSVRC2012_val_*.JPEG files ({IMAGENET_VAL_LAYOUT})")
    return dict(sorted(found.items()))


def _loc_solution(path: Path) -> dict[str, str]:
    """LOC_val_solution.csv -> {ImageId: WordNet ID} (the first box's synset)."""
    out: dict[str, str] = {}
    with io.StringIO(read_utf8(path), newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or header[:2] != ["ImageId", "PredictionString"]:
            raise ValueError(f"{path}: expected the header ImageId,PredictionString, got {header}")
        for row in reader:
            if not row:
                continue
            tokens = row[1].split() if len(row) == 2 else []
            if not tokens or not tokens[0].startswith("n"):
                raise ValueError(f"{path}:{reader.line_num}: expected 'ImageId,<wnid> <box>...'")
            out[row[0]] = tokens[0]
    return out


def read_imagenet_val(
    directory: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    devkit: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> LabelledImages:
    """The flat ImageNet validation folder -> LabelledImages over the 1,000 classes.

    labels: `LOC_val_solution.csv` or the devkit's ground-truth file (default: whichever is
    found, the CSV in `directory` or its parent first, then `<devkit>/data/...ground_truth.txt`);
    devkit: the devkit folder (its `data/meta.mat` maps ground-truth IDs to WordNet IDs, and its
    leaf WordNet IDs, sorted, are then the classes). Images without a label are an error."""
    directory = Path(directory)
    files = _val_files(directory)
    if labels is None:
        candidates = [directory / "LOC_val_solution.csv", directory.parent / "LOC_val_solution.csv"]
        if devkit is not None:
            candidates.append(Path(devkit) / "data" / "ILSVRC2012_validation_ground_truth.txt")
        labels = next((c for c in candidates if c.is_file()), None)
        if labels is None:
            raise FileNotFoundError(
                f"ImageNet validation labels: none of {[str(c) for c in candidates]} "
                f"(expected {IMAGENET_VAL_LAYOUT})"
            )
    labels = Path(labels)
    if not labels.is_file():
        raise FileNotFoundError(f"ImageNet validation labels: no {labels} ({IMAGENET_VAL_LAYOUT})")
    if labels.suffix.lower() == ".csv":
        wnid_of = _loc_solution(labels)
        classes = read_imagenet_devkit(devkit)[1] if devkit is not None else imagenet_wnids()
    else:
        if devkit is None:
            raise ValueError(
                f"{labels}: devkit ground-truth IDs follow the devkit's meta.mat order; pass the "
                "devkit folder (--devkit) to map them to WordNet IDs"
            )
        id_to_wnid, classes = read_imagenet_devkit(devkit)
        wnid_of = {}
        for lineno, line in enumerate(read_utf8(labels).splitlines(), 1):
            if not line.strip():
                continue
            try:
                wnid_of[f"ILSVRC2012_val_{lineno:08d}"] = id_to_wnid[int(line)]
            except (ValueError, KeyError):
                raise ValueError(
                    f"{labels}:{lineno}: {line.strip()!r} is not an ILSVRC2012_ID of a leaf "
                    "synset in the devkit's meta.mat"
                ) from None
    index = {w: i for i, w in enumerate(classes)}
    out_labels = []
    for image_id in files:
        wnid = wnid_of.get(image_id)
        if wnid is None:
            raise ValueError(f"{labels}: no label for {files[image_id]}")
        if wnid not in index:
            raise ValueError(f"{labels}: {image_id}'s class {wnid} is not one of the classes")
        out_labels.append(index[wnid])
    if class_names is None:
        class_names = _names_for_wnids(classes, str(labels))
    return LabelledImages(
        images=tuple(files.values()),
        names=tuple(p.name for p in files.values()),
        labels=np.asarray(out_labels, dtype=np.int64),
        class_names=_check_names(class_names, len(classes), str(labels)),
        source=str(directory),
    )


# ---- CIFAR-10 ----------------------------------------------------------------------------------

# A CIFAR-10 binary record: the label byte, then 3,072 pixel bytes (red, green, blue planes)
CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR10_LAYOUT = (
    "the CIFAR-10 binary version (cifar-10-batches-bin/test_batch.bin, batches.meta.txt)"
)


def read_cifar10(
    directory: str | os.PathLike, *, split: str = "test", class_names: Sequence[str] | None = None
) -> LabelledImages:
    """CIFAR-10 binary version: `test_batch.bin` ("test") or `data_batch_1..5.bin` ("train") in
    `directory` or its `cifar-10-batches-bin/`; names from batches.meta.txt, else bundled."""
    directory = Path(directory)
    if (directory / "cifar-10-batches-bin").is_dir():
        directory = directory / "cifar-10-batches-bin"
    if split == "test":
        files = [directory / "test_batch.bin"]
    elif split == "train":
        files = [directory / f"data_batch_{i}.bin" for i in range(1, 6)]
    else:
        raise ValueError(f"CIFAR-10 split must be 'test' or 'train', got {split!r}")
    images, labels, names = [], [], []
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"CIFAR-10: no {f} (expected {CIFAR10_LAYOUT})")
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % CIFAR10_RECORD_BYTES:
            raise ValueError(
                f"{f}: {raw.size} bytes is not a whole number of {CIFAR10_RECORD_BYTES}-byte "
                "records"
            )
        rec = raw.reshape(-1, CIFAR10_RECORD_BYTES)
        images.append(rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(rec[:, 0].astype(np.int64))
        names += [f"{f.name}[{i}]" for i in range(len(rec))]
    if class_names is None:
        meta = directory / "batches.meta.txt"
        class_names = (
            [s.strip() for s in read_utf8(meta).splitlines() if s.strip()]
            if meta.is_file()
            else bundled_class_names("cifar10")
        )
    label = np.concatenate(labels)
    if label.max() >= len(class_names):
        raise ValueError(f"{directory}: label {int(label.max())} but {len(class_names)} names")
    return LabelledImages(
        images=np.ascontiguousarray(np.concatenate(images)),
        names=tuple(names),
        labels=label,
        class_names=tuple(class_names),
        source=str(directory),
    )


# ---- Oxford-IIIT Pets ----------------------------------------------------------------------------

PETS_LAYOUT = "Oxford-IIIT Pets (images/<name>.jpg and annotations/test.txt or trainval.txt)"


def read_pets(
    root: str | os.PathLike, *, split: str = "test", class_names: Sequence[str] | None = None
) -> LabelledImages:
    """Oxford-IIIT Pets: `annotations/<split>.txt` ("test" or "trainval") lists
    `<name> <class id 1..37> <species> <breed id>`; the image is `images/<name>.jpg`."""
    root = Path(root)
    listing = root / "annotations" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"Oxford-IIIT Pets: no {listing} (expected {PETS_LAYOUT})")
    if not (root / "images").is_dir():
        raise NotADirectoryError(f"Oxford-IIIT Pets: no {root / 'images'} (expected {PETS_LAYOUT})")
    names = list(class_names) if class_names is not None else bundled_class_names("pets")
    files, labels = [], []
    for lineno, line in enumerate(read_utf8(listing).splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            label = int(parts[1]) - 1
        except (IndexError, ValueError):
            raise ValueError(f"{listing}:{lineno}: expected '<name> <class id> ...'") from None
        if not 0 <= label < len(names):
            raise ValueError(f"{listing}:{lineno}: class id {label + 1} not in 1..{len(names)}")
        files.append(root / "images" / f"{parts[0]}.jpg")
        labels.append(label)
    if not files:
        raise ValueError(f"{listing}: no images listed")
    return LabelledImages(
        images=tuple(files),
        names=tuple(f"images/{p.name}" for p in files),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=tuple(names),
        source=str(listing),
    )


# ---- the one entry point --------------------------------------------------------------------------


def classification_source(
    kind: str,
    path: str | os.PathLike,
    *,
    split: str = "test",
    labels: str | os.PathLike | None = None,
    devkit: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    image_column: str = "image",
    label_column: str = "label",
) -> LabelledImages:
    """A classification set in one of `CLASSIFICATION_KINDS` (see the module docstring) ->
    LabelledImages (files listed or pixels in memory; nothing decoded, nothing downloaded).

    split: CIFAR's "test"/"train", Pets' "test"/"trainval", a Hugging Face split; labels,
    devkit: ImageNet validation labels; class_names: replace the bundled/folder names;
    image_column, label_column: Hugging Face columns."""
    if kind == "imagefolder":
        return read_imagefolder(path, class_names=class_names)
    if kind == "imagenet_folder":
        return read_imagenet_folder(path, class_names=class_names)
    if kind == "imagenet_val":
        return read_imagenet_val(path, labels=labels, devkit=devkit, class_names=class_names)
    if kind == "cifar10":
        return read_cifar10(path, split=split, class_names=class_names)
    if kind == "cifar100":
        return read_cifar100(path, split=split, class_names=class_names)
    if kind == "pets":
        return read_pets(path, split=split, class_names=class_names)
    if kind == "hf":
        from clippo.eval.datasets_hf import read_hf_labels

        return read_hf_labels(
            path,
            split=split,
            image_column=image_column,
            label_column=label_column,
            class_names=class_names,
        )
    raise ValueError(f"classification layout {kind!r}: not one of {CLASSIFICATION_KINDS}")
