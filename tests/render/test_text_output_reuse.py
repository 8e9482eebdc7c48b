"""`TextRenderer.render_batch` reuses its previous output's memory only when nobody holds it.

Reuse saves the kernel's page zeroing of a fresh array (see `TextRenderer._output`); it must
never overwrite pixels a caller can still see, through the array, a view or a tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clippo.render import TextRenderer
from clippo.render.text import _COUNTS_EVERY_REFERENCE

FIRST = ["a photo of a dog", "猫在温暖的窗台上睡觉", "مرحبا بالعالم"]
SECOND = ["two people on the street", "日本語のテキスト", "שלום עולם"]


def _fresh(texts: list[str], **cfg: object) -> np.ndarray:
    return TextRenderer(**cfg).render_batch(texts)


def test_held_outputs_are_never_drawn_over():
    r = TextRenderer(image_size=64)
    first = r.render_batch(FIRST)
    kept = first.copy()
    second = r.render_batch(SECOND)
    third = r.render_batch(FIRST[::-1])  # both earlier outputs still held
    assert not np.shares_memory(first, second)
    assert not np.shares_memory(third, first) and not np.shares_memory(third, second)
    assert np.array_equal(first, kept)
    assert np.array_equal(second, _fresh(SECOND, image_size=64))
    assert np.array_equal(third, _fresh(FIRST[::-1], image_size=64))


@pytest.mark.parametrize("holder", ["view", "memoryview", "tensor", "single image"])
def test_a_view_or_tensor_of_an_output_keeps_it(holder):
    r = TextRenderer(image_size=64)
    if holder == "single image":  # __call__ returns a view of a batch of one
        held: object = r(FIRST[0])
        kept = np.array(held)
        r(SECOND[0])
        assert np.array_equal(np.asarray(held), kept)
        return
    out = r.render_batch(FIRST)
    kept = out.copy()
    held = {"view": out[1:], "memoryview": memoryview(out), "tensor": torch.from_numpy(out)}[holder]
    del out
    r.render_batch(SECOND)
    assert np.array_equal(np.asarray(held), kept[1:] if holder == "view" else kept)


@pytest.mark.skipif(not _COUNTS_EVERY_REFERENCE, reason="reuse needs CPython's refcounts")
def test_a_dropped_output_is_reused_and_fully_redrawn():
    cfg = {"image_size": 64, "text_brightness": (200, 20, 20), "background_brightness": 90}
    r = TextRenderer(**cfg)
    address = r.render_batch(FIRST).ctypes.data  # dropped at once
    second = r.render_batch(SECOND)
    assert second.ctypes.data == address  # the same memory, drawn over
    assert np.array_equal(second, _fresh(SECOND, **cfg))
    # another shape gets a new array; text in the background's colour fills every pixel too
    assert r.render_batch(SECOND[:2]).shape == (2, 64, 64, 3)
    same = TextRenderer(image_size=64, text_brightness=127)
    same.render_batch(FIRST)
    assert (same.render_batch(SECOND) == 127).all()


@pytest.mark.skipif(not _COUNTS_EVERY_REFERENCE, reason="reuse needs CPython's refcounts")
def test_a_loop_that_keeps_the_last_output_reuses_the_one_before():
    r = TextRenderer(image_size=64)
    images = r.render_batch(FIRST)
    address = images.ctypes.data
    images = r.render_batch(SECOND)  # FIRST's output held during this call: a new array
    assert images.ctypes.data != address
    images = r.render_batch(FIRST[::-1])  # FIRST's output dropped by now
    assert images.ctypes.data == address
    assert np.array_equal(images, _fresh(FIRST[::-1], image_size=64))


def test_threads_sharing_a_renderer_never_share_an_output():
    from concurrent.futures import ThreadPoolExecutor

    r = TextRenderer(image_size=48)
    batches = [FIRST, SECOND, FIRST[::-1], SECOND[::-1]]
    expected = [_fresh(b, image_size=48) for b in batches]

    def work(k: int) -> bool:
        held = []
        for i in range(30):
            held.append(r.render_batch(batches[(k + i) % 4]))
            if i % 3 == 0:
                held = held[-1:]  # drop some: their memory is reused meanwhile
        return all(
            np.array_equal(h, expected[(k + 30 - len(held) + j) % 4]) for j, h in enumerate(held)
        )

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(8)))
