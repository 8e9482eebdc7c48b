"""Periodic evaluation for `clippo train`: eval specs -> trainer hooks.

    hooks = make_hooks(cfg.eval)                 # reads every spec's file listing now
    train(cfg, hooks=hooks)                      # each hook: hook(model, step) -> {name: number}

A hook reads its data when it is built, so a missing file or a malformed row stops the run
before training starts rather than at the first evaluation. Images are decoded once, on the
first call (at the model's image size), and kept in memory for later calls: use
`max_examples` to bound that. A "translations" spec has no images: its sentence pairs are read
when the hook is built and passed to the suite as they are. Metric names are
`eval/<spec name>/<metric>`, e.g. `eval/retrieval/img2txt/r@1`; only scalar metrics are returned (per-class tables and the list
of skipped files belong in `clippo eval`'s results.json, not in every log line).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from clippo.eval.datasets import CaptionedImages, LabelledImages, load_images
from clippo.eval.datasets_retrieval import TranslationPairs
from clippo.eval.spec import EvalSpec
from clippo.eval.suites import SUITES, read_spec_data, read_translation_spec, resolve_prompts

__all__ = ["EvalHook", "make_hooks"]


class EvalHook:
    """`hook(model, step) -> {"eval/<name>/<metric>": number}` for one EvalSpec."""

    def __init__(self, spec: EvalSpec, *, num_workers: int = 4, progress: bool = False) -> None:
        self.spec = spec
        self.prefix = f"eval/{spec.metric_name}/"
        self.num_workers, self.progress = num_workers, progress
        self.suite = SUITES[spec.kind]
        self._pairs: TranslationPairs | None = None
        if spec.kind == "retrieval" and spec.format == "translations":
            self._pairs = read_translation_spec(spec)  # text only: nothing to decode
            return
        self._listed = read_spec_data(spec)
        if isinstance(self._listed, LabelledImages):
            resolve_prompts(spec, self._listed.class_names)  # a bad template file fails now
        self._decoded: dict[int, CaptionedImages | LabelledImages] = {}  # image size -> data

    def _data(self, size: int) -> CaptionedImages | LabelledImages:
        if size not in self._decoded:
            self._decoded = {
                size: load_images(
                    self._listed, size, num_workers=self.num_workers, progress=self.progress
                )
            }
        return self._decoded[size]

    def __call__(self, model: Any, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        data: TranslationPairs | CaptionedImages | LabelledImages
        if self._pairs is not None:
            data = self._pairs
        else:
            data = self._data(model.config.vit.image_size)
        metrics = self.suite(
            model, self.spec, data=data, num_workers=self.num_workers, progress=self.progress
        )
        out = {self.prefix + k: v for k, v in _scalars(metrics).items()}
        out[self.prefix + "seconds"] = time.perf_counter() - t0
        return out


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def make_hooks(
    specs: Sequence[EvalSpec], *, num_workers: int = 4, progress: bool = False
) -> list[Callable[[Any, int], dict[str, float]]]:
    """One `EvalHook` per spec (reading each spec's data listing now); names must differ."""
    names = [s.metric_name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"eval specs share the name(s) {dup}; give each a distinct name")
    return [EvalHook(s, num_workers=num_workers, progress=progress) for s in specs]
