"""render_pair and render_on_image."""

import numpy as np
import pytest

from clippo.render import UnifontRenderer, render_on_image, render_pair


@pytest.fixture(scope="module")
def r():
    return UnifontRenderer(image_size=64)


def test_pair_starts_second_text_on_next_line(r):
    a, b = "first sentence here", "second"  # wraps over several lines at 64 px
    rows_a = int(r.layout([a]).rows_used[0])
    assert rows_a >= 2
    img = render_pair(r, a, b)
    assert np.array_equal(img[: rows_a * 16], r(a)[: rows_a * 16])
    assert np.array_equal(img[rows_a * 16 :], r(b)[: 64 - rows_a * 16])


def test_pair_edge_cases(r):
    assert np.array_equal(render_pair(r, "", "b text"), r("b text"))
    long_a = "x" * 500  # fills every line: the second text is cropped away entirely
    assert np.array_equal(render_pair(r, long_a, "hidden"), r(long_a))
    assert render_pair(r, b"bytes \xff", "ok").shape == (64, 64, 3)


def test_text_on_image():
    r = UnifontRenderer(image_size=64)
    photo = np.zeros((10, 20, 3), np.uint8)
    photo[..., 0] = 255  # a red photo
    out = render_on_image(r, photo, "what colour is the bus?", band=32)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.array_equal(out[:32], r("what colour is the bus?")[:32])
    assert (out[32:, :, 0] == 255).all() and (out[32:, :, 1:] == 0).all()
    assert np.array_equal(render_on_image(r, photo, "q")[:32], r("q")[:32])  # default band = H/2
    assert (render_on_image(r, photo, "q", band=0)[..., 0] == 255).all()
    with pytest.raises(ValueError, match="band"):
        render_on_image(r, photo, "q", band=65)
