"""`EvalSpec`: one evaluation suite run, as `clippo eval` builds it and as a `[[eval]]` table of a
training config describes it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from clippo.typed_config import ConfigError, from_dict

__all__ = ["EvalSpec", "specs_from_tables"]

_EVAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation suite, run by `clippo train` (every `logging.eval_every_steps` and at the
    end; TOML `[[eval]]` tables) and by `clippo eval`. Metrics are logged as `eval/<name>/...`.

    kind: "retrieval" (path: a .csv/.tsv/.jsonl of image path + caption, several captions per
      image allowed) or "zeroshot" (path: an ImageFolder tree or a CIFAR-100 binary folder).
    name: the metric prefix; default the kind (names must differ between specs).
    format: how to read `path`; "auto": pairs for retrieval; for zeroshot "cifar100" when the
      folder holds `<split>.bin` (or `cifar-100-binary/`), else "imagefolder".
    max_examples: evaluate on this many images, evenly spaced over the set (0: all).
    templates: zero-shot prompts: "clip_paper" (big_vision's default), "clip_best" (the CLIPPO
      colab's 8), a file with one template per line, or a list; each holds one "{}".
    canonicalize: big_vision's canonicalisation (lowercase, no punctuation, first alias) of
      templates and class names; default: on for "clip_paper" only, as big_vision runs it.
    class_names: a file of class names, one per line, in label order (default: the folder
      names, or CIFAR's fine_label_names.txt).
    split: the CIFAR-100 file (`test` -> test.bin). image_column/caption_column: pairs columns.
    batch_size: images or texts per forward pass.
    """

    kind: Literal["retrieval", "zeroshot"]
    path: str
    name: str = ""
    format: Literal["auto", "pairs", "imagefolder", "cifar100"] = "auto"
    max_examples: int = 0
    templates: str | tuple[str, ...] = "clip_paper"
    canonicalize: bool | None = None
    class_names: str = ""
    split: str = "test"
    image_column: str = "image"
    caption_column: str = "caption"
    batch_size: int = 64

    def __post_init__(self) -> None:
        # ValueError (not ConfigError): the TOML loader prefixes it with the key ("eval.0: ...")
        if self.kind not in ("retrieval", "zeroshot"):
            raise ValueError(f"kind must be 'retrieval' or 'zeroshot', got {self.kind!r}")
        if not self.path:
            raise ValueError("path must be set (the evaluation data)")
        if self.name and not _EVAL_NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must match {_EVAL_NAME.pattern}")
        allowed = (
            ("auto", "pairs") if self.kind == "retrieval" else ("auto", "imagefolder", "cifar100")
        )
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
        if isinstance(self.templates, tuple):
            if not self.templates:
                raise ValueError("templates: an empty list")
            for t in self.templates:
                if not isinstance(t, str) or t.count("{}") != 1:
                    raise ValueError(f"template {t!r} must be a string with one '{{}}'")
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
