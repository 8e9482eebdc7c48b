"""UnifontRenderer: parity with big_vision's fixtures, a naive per-glyph reference, fuzzing."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clippo.render import RenderConfig, UnifontRenderer, ink_mask, load_glyphs, to_pixels

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SETTINGS = {
    "default224": {},
    "mono64_nolower": {"image_size": 64, "lower": False, "monospace": True},
}


@pytest.fixture(scope="module")
def renderer() -> UnifontRenderer:
    return UnifontRenderer()


def naive_render(r: UnifontRenderer, text: str) -> np.ndarray:
    """A literal, one-glyph-at-a-time port of big_vision's `render` closure (for comparison)."""
    cfg, glyphs = r.config, r.glyphs
    if cfg.lower:
        text = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
    cps = [0xFFFD if 0xD800 <= ord(c) <= 0xDFFF else ord(c) for c in text]
    if cfg.max_chars:
        cps = cps[: cfg.max_chars]
    letters = []  # each: bool [16 rows, w cols]
    for cp in cps:
        cell = glyphs.bitmaps[glyphs.index[cp]]
        if cfg.monospace:
            letters.append(cell)
            continue
        ink_cols = np.flatnonzero(cell.any(axis=0))
        first, last = (int(ink_cols[0]), int(ink_cols[-1])) if ink_cols.size else (0, 0)
        first = max(first - cfg.spacing, 0)
        last = max(last + cfg.spacing, first + cfg.min_width)
        letters.append(cell[:, first:last])
    size = cfg.image_size
    canvas = np.zeros((size, size), bool)
    if letters:
        widths = [lt.shape[1] for lt in letters]
        div = np.float32(size - max(widths))
        csum = np.cumsum(widths)
        rows: dict[int, list[np.ndarray]] = {}
        for lt, c in zip(letters, csum):
            with np.errstate(divide="ignore", invalid="ignore"):
                q = np.float32(c) / div
            # div == 0 only when a 16-px glyph meets a 16-px canvas, where TF's op fails:
            # we define that case as "everything on line 0" (then cropped at the right edge)
            rows.setdefault(math.floor(q) if np.isfinite(q) else 0, []).append(lt)
        for row, lts in rows.items():
            if row * 16 >= size:
                continue
            line = np.concatenate(lts, axis=1)
            canvas[row * 16 : row * 16 + 16, : line.shape[1]] = line[:, :size]
    img = np.where(canvas, cfg.text_brightness, cfg.background_brightness).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_fixture_parity_batch_and_single(name):
    data = np.load(FIXTURES / f"render_unifont_{name}.npz", allow_pickle=False)
    texts, images = list(data["texts"]), data["images"]
    r = UnifontRenderer(**SETTINGS[name])
    out = r.render_batch(texts)
    assert out.dtype == np.uint8 and out.shape == images.shape
    for i, text in enumerate(texts):
        assert np.array_equal(out[i], images[i]), f"batch render differs on fixture {name}[{i}]"
        assert np.array_equal(r(text), images[i]), f"single render differs on fixture {name}[{i}]"
        assert np.array_equal(r(text.encode("utf-8")), images[i])


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_torch_renderer_matches_fixtures(name):
    torch = pytest.importorskip("torch")
    data = np.load(FIXTURES / f"render_unifont_{name}.npz", allow_pickle=False)
    r = UnifontRenderer(**SETTINGS[name])
    pixels, ink = r.render_torch(list(data["texts"]), "cpu", return_ink=True)
    assert pixels.dtype == torch.float32 and ink.dtype == torch.bool
    assert torch.equal(pixels, torch.from_numpy(to_pixels(data["images"])))
    assert np.array_equal(ink.numpy(), ink_mask(data["images"]))


def test_fixture_json_ink_counts(renderer):
    import json

    meta = json.loads((FIXTURES / "render_unifont_default224.json").read_text())
    data = np.load(FIXTURES / "render_unifont_default224.npz", allow_pickle=False)
    out = renderer.render_batch(list(data["texts"]))
    assert (out[..., 0] == 0).sum(axis=(1, 2)).tolist() == meta["ink_pixels_per_image"]


def test_known_layout_facts(renderer):
    img = renderer("ab")[..., 0]
    ink_cols = np.flatnonzero((img[:16] == 0).any(axis=0))
    assert ink_cols.min() == 1 and ink_cols.max() == 13  # "ab": ink at 1-6 and 8-13
    assert 7 not in ink_cols
    first_row = renderer.layout(["m" * 60])
    assert (first_row.row == 0).sum() == 26 and (first_row.row == 1).sum() == 27
    mono = UnifontRenderer(image_size=64, monospace=True)
    assert np.bincount(mono.layout(["a" * 11]).row).tolist() == [2, 3, 3, 3]
    assert UnifontRenderer(lower=False)("ÉTÉ").tolist() != renderer("ÉTÉ").tolist()
    assert np.array_equal(renderer("ÉTÉ"), UnifontRenderer(lower=False)("ÉtÉ"))


@pytest.mark.slow  # hypothesis: dozens of random batches
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=300), min_size=1, max_size=6))
def test_fast_path_matches_naive_reference(texts):
    r = UnifontRenderer()
    out = r.render_batch(texts)
    for text, img in zip(texts, out):
        assert np.array_equal(img, naive_render(r, text))


@pytest.mark.slow  # hypothesis: dozens of random batches
@settings(max_examples=25, deadline=None)
@given(
    st.text(alphabet=st.characters(max_codepoint=0x2FFF), max_size=120),
    st.sampled_from([16, 32, 48, 64]),
    st.booleans(),
    st.integers(0, 3),
    st.integers(0, 6),
    st.integers(0, 40),
)
def test_every_option_matches_naive_reference(text, size, mono, spacing, min_width, max_chars):
    r = UnifontRenderer(
        image_size=size,
        monospace=mono,
        spacing=spacing,
        min_width=min_width,
        max_chars=max_chars,
        text_brightness=200,
        background_brightness=30,
        lower=bool(spacing % 2),
    )
    assert np.array_equal(r(text), naive_render(r, text))


@pytest.mark.slow  # hypothesis: dozens of random batches
@settings(max_examples=30, deadline=None)
@given(st.one_of(st.text(), st.binary(), st.text(alphabet=st.characters(codec=None))))
def test_any_input_renders(text):
    img = UnifontRenderer(image_size=32)(text)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8


@pytest.mark.parametrize(
    "text",
    ["", " " * 50, "\x00", "\x00" * 5000, "x" * 10_000, "\ud800", "a\udfffb", "\t\n\r", "🍕" * 900],
)
def test_edge_strings(renderer, text):
    img = renderer(text)
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    if not text.strip(" "):
        assert (img == 127).all()


def test_bytes_and_surrogates_become_replacement_char(renderer):
    fffd = renderer("\ufffd")
    assert (fffd == 0).any()
    assert np.array_equal(renderer(b"\xff"), fffd)
    assert np.array_equal(renderer("\udc80"), fffd)
    assert np.array_equal(renderer(b"a\xc3(b"), renderer("a\ufffd(b"))


@pytest.mark.parametrize("bad", [None, 3, 1.5, ["a"], np.zeros(3)])
def test_non_text_is_type_error(renderer, bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        renderer(bad)


def test_batch_rejects_non_text_items(renderer):
    with pytest.raises(TypeError, match="int"):
        renderer.render_batch(["ok", 5])


def test_config_validation():
    with pytest.raises(ValueError, match="font_size"):
        UnifontRenderer(font_size=24)
    with pytest.raises(ValueError, match="multiple of 16"):
        UnifontRenderer(image_size=100)
    with pytest.raises(TypeError):
        UnifontRenderer(colour=3)
    cfg = RenderConfig(image_size=64, lower=False)
    assert UnifontRenderer.from_config(cfg).config == cfg


def test_upper_planes_use_upper_file(renderer):
    assert renderer.glyphs.index[0x1F355] > 0  # pizza emoji is in unifont_upper 9.0.06
    assert renderer.glyphs.index[0x20000] == 0  # no plane 2 in 9.0.06
    assert (renderer("🍕") == 0).any()
    assert (renderer("\U00020000") == 127).all()


def test_custom_font_files(tmp_path):
    plane0 = tmp_path / "p0.hex"
    plane0.write_text("0041:" + "FF" * 16 + "\n0042:" + "80" * 32 + "\n")
    upper = tmp_path / "up.hex"
    upper.write_text("01F600:" + "0001" * 16 + "\n")
    r = UnifontRenderer(image_size=32, lower=False, font=(plane0, upper))
    img = r("AB\U0001f600")[..., 0]
    assert (img[:16, 0:8] == 0).all()  # 'A': 8 full columns, no left padding (ink from column 0)
    # 'B' (16 wide, ink in cell columns 0 and 8): starts at x=8, 9 px wide
    assert (img[:16, 8] == 0).all() and (img[:16, 9:16] == 127).all() and (img[:16, 16] == 0).all()
    # emoji (ink in cell column 15 only): trimmed to [14, 18) clamped to [14, 16) -> 2 px at x=17
    assert (img[:16, 17] == 127).all() and (img[:16, 18] == 0).all() and (img[:, 19:] == 127).all()
    bad = tmp_path / "bad.hex"
    bad.write_text("zz:12\n")
    with pytest.raises(ValueError, match="bad.hex:1"):
        load_glyphs(str(bad), str(upper))


def test_to_pixels_and_ink_mask_vs_naive():
    rng = np.random.default_rng(0)
    images = np.where(rng.random((3, 32, 48, 3)) < 0.02, 0, 127).astype(np.uint8)
    px = to_pixels(images)
    assert px.shape == (3, 3, 32, 48) and px.dtype == np.float32
    # TF's value_range in float32: background is -0.0039215684 (bits 0xbb808080), ink exactly -1
    assert set(np.unique(px).tolist()) == {
        -1.0,
        float(np.frombuffer(b"\x80\x80\x80\xbb", "<f4")[0]),
    }
    assert np.array_equal(to_pixels(images[0]), px[:1])
    mask = ink_mask(images, patch_size=16)
    for b in range(3):
        for i in range(2):
            for j in range(3):
                patch = images[b, i * 16 : i * 16 + 16, j * 16 : j * 16 + 16]
                assert mask[b, i, j] == (patch != 127).any()
    assert np.array_equal(ink_mask(images[..., 0]), mask)
    with pytest.raises(ValueError, match="multiple"):
        ink_mask(images, patch_size=10)


def test_to_pixels_torch_equals_numpy_on_every_level():
    torch = pytest.importorskip("torch")
    from clippo.render.unifont_torch import to_pixels_torch

    images = np.random.default_rng(2).integers(0, 256, (2, 16, 8, 3), dtype=np.uint8)
    images.reshape(-1)[:256] = np.arange(256)
    expect = torch.from_numpy(to_pixels(images))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:  # bit-equal on the GPU too, where division by a scalar is inexact
        got = to_pixels_torch(torch.from_numpy(images).to(device))
        assert got.dtype == torch.float32 and got.is_contiguous()
        assert torch.equal(got.cpu(), expect)
    with pytest.raises(ValueError, match="uint8"):
        to_pixels_torch(torch.zeros(2, 4, 4, dtype=torch.uint8))


def test_caption_ink_fraction(renderer):
    caption = "a photo of a dog playing with a ball in the park at sunset"
    mask = ink_mask(renderer.render_batch([caption]))
    assert 10 <= mask.sum() <= 30  # a caption fills few of the 196 patches


def test_render_torch_equals_numpy_on_random_batch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    texts = [
        "".join(chr(c) for c in rng.integers(32, 0x3000, rng.integers(0, 400))) for _ in range(20)
    ]
    texts += ["", "   ", b"caf\xc3\xa9 \xff bytes", "AbC" * 300]
    for kw in [{}, {"image_size": 48, "monospace": True, "lower": False}, {"max_chars": 0}]:
        r = UnifontRenderer(**kw)
        px, ink = r.render_torch(texts, torch.device("cpu"), return_ink=True)
        imgs = r.render_batch(texts)
        assert torch.equal(px, torch.from_numpy(to_pixels(imgs)))
        assert np.array_equal(ink.numpy(), ink_mask(imgs))
    same = UnifontRenderer(text_brightness=127)
    px, ink = same.render_torch(["hello"], "cpu", return_ink=True)
    assert not ink.any() and np.array_equal(ink.numpy(), ink_mask(same.render_batch(["hello"])))


def test_pickle_roundtrip(renderer):
    clone = pickle.loads(pickle.dumps(renderer))
    assert clone.config == renderer.config
    assert len(pickle.dumps(renderer)) < 2000  # only settings travel, never the glyph table
    assert np.array_equal(clone("pickled text"), renderer("pickled text"))


class _TextDataset:
    def __init__(self, renderer, texts):
        self.renderer, self.texts = renderer, texts

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return self.renderer(self.texts[i])


def test_dataloader_workers_render_identically(renderer):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    texts = [f"sample number {i}: Ünïcödé ✓ 中文 🍕" * (i % 4 + 1) for i in range(24)]
    loader = DataLoader(_TextDataset(renderer, texts), batch_size=6, num_workers=2)
    got = torch.cat(list(loader)).numpy()
    assert np.array_equal(got, renderer.render_batch(texts))
