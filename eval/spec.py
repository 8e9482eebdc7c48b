"""`EvalSpec`: one evaluation suite run, as `clippo eval` builds it and as a `[[eval]]` table of a
training config describes it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from clippo.eval.datasets_classification import ClassificationKind
from clippo.prompts import template_slot
from clippo.typed_config import ConfigError, from_dict

__all__ = ["EvalSpec", "Format", "specs_from_tables", "RETRIEVAL_FORMATS", "ZEROSHOT_FORMATS"]

# the layouts each kind reads; "auto" picks one from the path (see EvalSpec)
RetrievalFormat = Literal["auto", "pairs", "karpathy", "xm3600", "hf", "translations"]
ZeroshotFormat = Literal["auto", ClassificationKind]
Format = Literal[RetrievalFormat, ZeroshotFormat]
RETRIEVAL_FORMATS: tuple[str, ...] = get_args(RetrievalFormat)
ZEROSHOT_FORMATS: tuple[str, ...] = get_args(ZeroshotFormat)

_EVAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation suite, run by `clippo train` (every `logging.eval_every_steps` and at the
    end; TOML `[[eval]]` tables) and by `clippo eval`. Metrics are logged as `eval/<name>/...`.

    kind: "retrieval" (path: a .csv/.tsv/.jsonl of image path + caption, several captions per
      image allowed; or a layout below) or "zeroshot" (path: an ImageFolder tree, a CIFAR-100
      binary folder, or a layout below).
    name: the metric prefix; default the kind (names must differ between specs).
    format: how to read `path`; "auto": pairs for retrieval; for zeroshot "cifar100" when the
      folder holds `<split>.bin` (or `cifar-100-binary/`), else "imagefolder". Retrieval also
      reads "karpathy" (dataset_coco.json / dataset_flickr30k.json, images under `images`),
      "xm3600" (captions.jsonl, `images`/<key>.jpg, `languages`), "hf" (a datasets folder or
      parquet) and "translations" (src<TAB>tgt lines, or `path` + `targets` aligned files);
      zero-shot also "imagenet_val" (flat validation folder, `labels`, `devkit`),
      "imagenet_folder" (synset folders), "cifar10", "pets", "hf"
      (`clippo.eval.datasets_classification.classification_source`).
    max_examples: evaluate on this many images, evenly spaced over the set (0: all).
    templates: zero-shot prompts: "clip_paper" (big_vision's default), "clip_best" (the CLIPPO
      colab's 8), a file with one template per line, or a list; each holds one "{}".
    canonicalize: big_vision's canonicalisation (lowercase, no punctuation, first alias) of
      templates and class names; default: on for "clip_paper" only, as big_vision runs it.
    class_names: a file of class names, one per line, in label order (default: the folder
      names, or CIFAR's fine_label_names.txt).
    split: the CIFAR file (`test` -> test.bin), the Karpathy split, the Pets list, the Hugging
      Face split. image_column/caption_column/label_column: pairs and Hugging Face columns.
    images: the image folder of "karpathy" and "xm3600". languages: "xm3600" languages, "all"
      or comma-separated codes. targets, src_lang, tgt_lang: "translations".
    labels, devkit: "imagenet_val" (LOC_val_solution.csv or the devkit's ground truth; the
      devkit folder with data/meta.mat).
    batch_size: images or texts per forward pass.
    """

    kind: Literal["retrieval", "zeroshot"]
    path: str
    name: str = ""
    format: Format = "auto"
    max_examples: int = 0
    templates: str | tuple[str, ...] = "clip_paper"
    canonicalize: bool | None = None
    class_names: str = ""
    split: str = "test"
    image_column: str = "image"
    caption_column: str = "caption"
    label_column: str = "label"
    images: str = ""
    languages: str = "all"
    targets: str = ""
    src_lang: str = "src"
    tgt_lang: str = "tgt"
    labels: str = ""
    devkit: str = ""
    batch_size: int = 64

    def __post_init__(self) -> None:
        # ValueError (not ConfigError): the TOML loader prefixes it with the key ("eval.0: ...")
        if self.kind not in ("retrieval", "zeroshot"):
            raise ValueError(f"kind must be 'retrieval' or 'zeroshot', got {self.kind!r}")
        if not self.path:
            raise ValueError("path must be set (the evaluation data)")
        if self.name and not _EVAL_NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must match {_EVAL_NAME.pattern}")
        allowed = RETRIEVAL_FORMATS if self.kind == "retrieval" else ZEROSHOT_FORMATS
        if self.format not in allowed:
            raise ValueError(f"format {self.format!r} does not fit kind {self.kind!r} ({allowed})")
        # built directly (not through from_dict) a bool or float would slip past "< 0"
        for name in ("max_examples", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.max_examples < 0:
            raise ValueError(f"max_examples must be >= 0 (0: all), got {self.max_examples}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        if isinstance(self.templates, list):
            object.__setattr__(self, "templates", tuple(self.templates))
        if self.format in ("karpathy", "xm3600") and not self.images:
            raise ValueError(f"format {self.format!r} needs images (the image folder)")
        if isinstance(self.templates, tuple):
            if not self.templates:
                raise ValueError("templates: an empty list")
            for t in self.templates:
                if not isinstance(t, str):
                    raise ValueError(f"templates: {t!r} must be a string with one '{{}}'")
            # CLIP_benchmark's "{c}" slot is read as "{}"; a bad template raises here, and the
            # message names the key (the TOML loader prefixes the table: "eval.0: templates: ...")
            try:
                slots = tuple(template_slot(t) for t in self.templates)
            except ValueError as e:
                raise ValueError(f"templates: {e}") from None
            object.__setattr__(self, "templates", slots)
        elif not self.templates:
            raise ValueError("templates must be 'clip_paper', 'clip_best', a file or a list")

    @property
    def metric_name(self) -> str:
        """The prefix of this spec's metrics: `eval/<metric_name>/...`."""
        return self.name or self.kind

    @property
    def canonical(self) -> bool:
        """Whether prompts and class names get big_vision's canonicalisation."""
        if self.canonicalize is not None:
            return self.canonicalize
        return self.templates == "clip_paper"


def specs_from_tables(tables: Sequence[Mapping[str, Any]], key: str = "eval") -> list[EvalSpec]:
    """`[[eval]]` tables -> EvalSpecs; errors name the table (`eval.1.kind: ...`), and two
    specs may not share a metric name."""
    specs: list[EvalSpec] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(tables):
        spec = from_dict(EvalSpec, table, f"{key}.{i}")
        name = spec.metric_name
        if name in seen:
            raise ConfigError(
                f"{key}.{i}.name: {name!r} is already used by {key}.{seen[name]}; "
                "give each [[eval]] table a distinct name"
            )
        seen[name] = i
        specs.append(spec)
    return specs
