"""Prompt templates and big_vision's canonicalisation."""

from __future__ import annotations

import pytest

from clippo.prompts import (
    CLIP_BEST_TEMPLATES,
    CLIP_PAPER_TEMPLATES,
    canonical_class_names,
    canonical_templates,
    canonicalize,
    fill,
)


def test_template_lists():
    assert len(CLIP_PAPER_TEMPLATES) == 81 and len(set(CLIP_PAPER_TEMPLATES)) == 81
    assert CLIP_PAPER_TEMPLATES[0] == "a bad photo of a {}." and CLIP_PAPER_TEMPLATES[-1] == "{}"
    assert all(t.count("{}") == 1 for t in CLIP_PAPER_TEMPLATES)
    assert set(CLIP_BEST_TEMPLATES) <= set(CLIP_PAPER_TEMPLATES) and len(CLIP_BEST_TEMPLATES) == 8


def test_canonical_templates():
    got = canonical_templates()
    assert len(got) == 81
    assert got[0] == "a bad photo of a {}"
    assert "a closeup photo of a {}" in got  # "close-up": hyphen is punctuation
    assert got[-1] == "{}"
    assert canonicalize("A  {x}  Photo_of {}!", keep="{}") == "a x photo of {}"


def test_canonical_class_names():
    names = ["aquarium_fish", "tench, Tinca tinca", "Jack-o'-lantern", "  Great   White shark "]
    assert canonical_class_names(names) == [
        "aquarium fish",
        "tench",
        "jackolantern",
        "great white shark",
    ]
    assert canonical_class_names(names[1:2], first_alias_only=False) == ["tench, tinca tinca"]


def test_fill():
    assert fill("a photo of a {}.", "cat") == "a photo of a cat."
    with pytest.raises(ValueError):
        fill("no placeholder", "cat")
    with pytest.raises(ValueError):
        fill("{} {}", "cat")
