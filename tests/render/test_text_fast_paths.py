"""The one-pass placement of folded paragraphs (`TextRenderer._place_ltr`/`_place_rtl`)
against the general path (`itemize`, `wrap`, `visual_order`): the same pixels, line counts,
overflow and rows, whatever the text and the geometry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import clippo.render.text as text_module
from clippo.render import TextRenderer

_WORDS = ["a", "cat", "sleeps", "windowsill", "supercalifragilistic", "猫", "窗台", "。", "，"]
_WORDS += ["القطة", "تنام", "على", "الدافئة.", "שלום,", "עולם!", "\u2800", "🐈"]
_SEPARATORS = ["", " ", "  ", "\t", "\n", " \n "]


@st.composite
def _texts(draw: st.DrawFn) -> str:
    rtl = draw(st.booleans())  # mostly one direction, so that the fast paths take them
    words = _WORDS[9:15] if rtl else _WORDS[:9] + _WORDS[15:]
    parts = draw(st.lists(st.tuples(st.sampled_from(words), st.sampled_from(_SEPARATORS))))
    return "".join(w + s for w, s in parts)


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(_texts(), min_size=1, max_size=4),
    width=st.sampled_from([40, 64, 130, 224]),
    height=st.sampled_from([16, 40, 100]),
    max_lines=st.sampled_from([0, 1, 3]),
)
def test_the_one_pass_paths_place_what_the_general_path_places(texts, width, height, max_lines):
    cfg = {"width": width, "height": height, "margin": 2, "max_lines": max_lines}
    fast = TextRenderer(**cfg)
    images, lay = fast.render_batch(texts), fast.layout(texts)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(text_module, "folded_tokens", lambda paragraph: None)
        general = TextRenderer(**cfg)
        assert np.array_equal(images, general.render_batch(texts))
        ref = general.layout(texts)
    for field in ("rows_used", "lines", "overflow", "missing"):
        assert np.array_equal(getattr(lay, field), getattr(ref, field)), field
