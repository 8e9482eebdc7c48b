"""Zero-shot prompt templates and big_vision's canonicalisation.

`CLIP_PAPER_TEMPLATES` is big_vision's `clip_paper` list (CLIP's 80 ImageNet prompts plus
"{}"), which its zero-shot evaluator uses canonicalised. `CLIP_BEST_TEMPLATES` is the 8-prompt
`clip_best` list, which the CLIPPO colab uses *without* canonicalisation for its CIFAR-100 check.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

CLIP_PAPER_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
    "{}",
)

CLIP_BEST_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "{}",
)

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str, keep: str | None = None) -> str:
    """big_vision `_canonicalize`: "_" -> " ", drop ASCII punctuation (except each exact
    occurrence of `keep`), lowercase, collapse whitespace, strip."""
    text = text.replace("_", " ")
    parts = text.split(keep) if keep else [text]
    text = (keep or "").join(p.translate(_NO_PUNCTUATION) for p in parts)
    return re.sub(r"\s+", " ", text.lower()).strip()


def canonical_templates(templates: Sequence[str] = CLIP_PAPER_TEMPLATES) -> list[str]:
    """Templates as big_vision's evaluator uses them: "a photo of a {}." -> "a photo of a {}"."""
    return [canonicalize(t, keep="{}") for t in templates]


def canonical_class_names(names: Sequence[str], first_alias_only: bool = True) -> list[str]:
    """Class names as big_vision's evaluator uses them: canonicalised keeping "," (the alias
    separator), then only the first alias of each ("tench, Tinca tinca" -> "tench")."""
    names = [canonicalize(n, keep=",") for n in names]
    return [n.split(",")[0] for n in names] if first_alias_only else names


def template_slot(template: str) -> str:
    """`template` with its class slot written "{}": CLIP_benchmark's "a photo of a {c}." is
    accepted as well as "a photo of a {}."; exactly one slot, else ValueError."""
    if "{c}" in template and "{}" not in template:
        template = template.replace("{c}", "{}")
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} must contain exactly one '{{}}' (or '{{c}}')")
    return template


def fill(template: str, class_name: str) -> str:
    """Substitute the single "{}" of `template` (big_vision splits on "{}" and asserts 2 parts)."""
    parts = template.split("{}")
    if len(parts) != 2:
        raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}'")
    return parts[0] + class_name + parts[1]
