"""The built-in synthetic corpus for `clippo demo`."""

from __future__ import annotations

import re

import numpy as np
import pytest

from clippo.data import synthetic as S
from clippo.data.synthetic import (
    CAPTION_TEMPLATES,
    CaptionFitCheck,
    Scene,
    SyntheticConfig,
    SyntheticImageText,
    SyntheticTextPairs,
)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a bool mask, each as an int array of (y, x) pixels."""
    seen = np.zeros_like(mask)
    h, w = mask.shape
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pix = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pix.append((y, x))
            for v in (y - 1, y, y + 1):
                for u in (x - 1, x, x + 1):
                    if 0 <= v < h and 0 <= u < w and mask[v, u] and not seen[v, u]:
                        seen[v, u] = True
                        stack.append((v, u))
        out.append(np.array(pix))
    return out


def foreground(img: np.ndarray) -> np.ndarray:
    """Shape pixels of a plain-background image (the corner pixel is background)."""
    return np.abs(img.astype(int) - img[0, 0].astype(int)).max(-1) > 40


def describes(text: str, scene: Scene) -> bool:
    words = set(re.findall(r"[a-z]+", text))
    shape = scene.shape if scene.count == 1 else S.PLURALS[scene.shape]
    count = {1: {"a", "an", "one"}, 2: {"two"}, 3: {"three"}}[scene.count]
    place = {
        "left": {"left"},
        "right": {"right"},
        "top": {"top"},
        "bottom": {"bottom"},
        "centre": {"centre", "middle"},
    }[scene.position]
    others = {*S.COLOURS, *S.SHAPES, *S.PLURALS.values(), *S.SIZES} - {
        scene.colour,
        shape,
        scene.size,
    }
    return (
        {scene.colour, shape, scene.size} <= words
        and bool(count & words)
        and bool(place & words)
        and not (others & words)
    )


# ---- config and splits ---------------------------------------------------------------------------


def test_config_round_trip_and_errors():
    cfg = SyntheticConfig(image_size=96, counts=(1,), heldout_pairs=10, seed=5)
    assert SyntheticConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key 'colors' in SyntheticConfig"):
        SyntheticConfig.from_dict({"colors": ["red"]})
    with pytest.raises(ValueError, match="unknown shapes"):
        SyntheticConfig(shapes=("circle", "blob"))
    with pytest.raises(ValueError, match="heldout_pairs"):
        SyntheticConfig(colours=("red", "blue"), shapes=("circle", "star"), heldout_pairs=3)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticConfig(image_size=8)
    with pytest.raises(ValueError, match="seed"):
        SyntheticConfig(seed=-1)
    with pytest.raises(ValueError, match="'heldout' is empty"):
        SyntheticImageText(SyntheticConfig(heldout_pairs=0), "heldout")


@pytest.mark.parametrize("heldout", [1, 8, 16, 30])
def test_heldout_pairs_are_never_trained_on(heldout):
    cfg = SyntheticConfig(heldout_pairs=heldout)
    train, held = S.train_pairs(cfg), S.heldout_pairs(cfg)
    assert len(held) == heldout and len(train) == 64 - heldout
    assert not set(train) & set(held)
    assert {c for c, _ in train} == set(cfg.colours) and {s for _, s in train} == set(cfg.shapes)
    ds = SyntheticImageText(cfg, "train")
    assert all((sc.colour, sc.shape) in train for sc in map(ds.scene, range(300)))
    assert all(describes(ds[i][1], ds.scene(i)) for i in range(100))
    held_ds = SyntheticImageText(cfg, "heldout")
    assert all((sc.colour, sc.shape) in held for sc in map(held_ds.scene, range(100)))


def test_heldout_spread_evenly():
    cfg = SyntheticConfig()  # 16 of 64 pairs: each colour and each shape held out twice
    held = S.heldout_pairs(cfg)
    assert sorted(np.unique([c for c, _ in held], return_counts=True)[1]) == [2] * 8
    assert sorted(np.unique([s for _, s in held], return_counts=True)[1]) == [2] * 8
    assert S.heldout_pairs(SyntheticConfig(seed=1)) != held  # the seed picks them


# ---- determinism -------------------------------------------------------------------------------


def test_items_are_pure_functions_of_seed_and_index():
    cfg = SyntheticConfig(image_size=64)
    a, b = SyntheticImageText(cfg), SyntheticImageText(cfg)
    order = [7, 3, 7, 0, 123456]
    first = {i: a[i] for i in order}
    for i in reversed(order):  # another instance, another order: same items
        img, text = b[i]
        np.testing.assert_array_equal(img, first[i][0])
        assert text == first[i][1]
    other = SyntheticImageText(SyntheticConfig(image_size=64, seed=1))
    assert any(not np.array_equal(a[i][0], other[i][0]) for i in range(3))
    assert a[-1][1] == a[len(a) - 1][1]
    with pytest.raises(IndexError):
        a[len(a)]
    assert SyntheticTextPairs(cfg)[42] == SyntheticTextPairs(cfg)[42]


def test_dataloader_workers_match_direct_indexing():
    torch = pytest.importorskip("torch")
    ds = SyntheticImageText(SyntheticConfig(image_size=32), length=12)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    images, texts = [], []
    for img, text in loader:
        images.append(img.numpy())
        texts += list(text)
    np.testing.assert_array_equal(np.concatenate(images), np.stack([ds[i][0] for i in range(12)]))
    assert texts == [ds[i][1] for i in range(12)]


# ---- what the images and captions show --------------------------------------------------------------


def test_images_show_the_captioned_scene():
    cfg = SyntheticConfig(image_size=96, textured=False, seed=3)
    ds = SyntheticImageText(cfg, length=10**6)
    areas: dict[tuple[str, str], list[int]] = {}
    for i in range(120):
        img, text = ds[i]
        scene = ds.scene(i)
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert describes(text, scene), (text, scene)
        fg = foreground(img)
        parts = components(fg)
        assert len(parts) == scene.count, (i, scene)
        assert not (fg[0].any() or fg[-1].any() or fg[:, 0].any() or fg[:, -1].any())
        cy, cx = np.concatenate(parts).mean(0) / 96
        expect = {
            "left": (cx < 0.4),
            "right": (cx > 0.6),
            "top": (cy < 0.4),
            "bottom": (cy > 0.6),
            "centre": abs(cx - 0.5) < 0.1 and abs(cy - 0.5) < 0.1,
        }
        assert expect[scene.position], (i, scene, cx, cy)
        core = img[fg].astype(int)  # shape pixels are near the named colour (jitter +-12)
        assert np.abs(np.median(core, 0) - S.COLOURS[scene.colour]).max() < 20, (i, scene)
        areas.setdefault((scene.shape, scene.size), []).append(len(parts[0]))
    for shape in cfg.shapes:
        small, large = areas.get((shape, "small")), areas.get((shape, "large"))
        if small and large:
            assert max(small) < min(large), shape


def test_every_shape_renders_distinctly():
    rng = np.random.default_rng(0)
    masks = [
        foreground(S.render_scene(Scene("black", s, "large", "centre", 1), 64, rng, textured=False))
        for s in S.SHAPES
    ]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert iou < 0.85, (S.SHAPES[i], S.SHAPES[j], iou)


def test_captions_and_paraphrases():
    scene = Scene("orange", "cross", "small", "centre", 3)
    assert (
        S.caption(scene, CAPTION_TEMPLATES[0])
        == "a photo of three small orange crosses in the centre"
    )
    one = Scene("orange", "star", "large", "left", 1)
    assert S.caption(one, "{n} {colour} {shape}") == "an orange star"  # article agrees
    assert S.caption(one, CAPTION_TEMPLATES[2]) == "there is a large orange star on the left"
    for tmpl in CAPTION_TEMPLATES:
        assert describes(S.caption(scene, tmpl), scene) and describes(S.caption(one, tmpl), one)
    pairs = SyntheticTextPairs(SyntheticConfig())
    train = set(S.train_pairs(SyntheticConfig()))
    for i in range(50):
        a, b = pairs[i]
        assert a != b
        sa = [sc for sc in S.iter_scenes(SyntheticConfig(), "train") if describes(a, sc)]
        assert len(sa) == 1 and describes(b, sa[0]) and (sa[0].colour, sa[0].shape) in train


# ---- evaluation sets -----------------------------------------------------------------------------


def test_retrieval_set():
    cfg = SyntheticConfig(image_size=64)
    rs = S.retrieval_set(cfg, 100)
    held = set(S.heldout_pairs(cfg))
    assert rs.images.shape == (100, 64, 64, 3) and len(set(rs.texts)) == 100
    assert len(set(rs.scenes)) == 100 and all((s.colour, s.shape) in held for s in rs.scenes)
    assert all(describes(t, s) for t, s in zip(rs.texts, rs.scenes))
    np.testing.assert_array_equal(rs.image_ids_for_text, np.arange(100))
    again = S.retrieval_set(cfg, 100)
    assert again.texts == rs.texts and np.array_equal(again.images, rs.images)
    fixed = S.retrieval_set(cfg, 20, template=0)
    assert all(t.startswith("a photo of ") for t in fixed.texts)
    with pytest.raises(ValueError, match="only 80 distinct"):  # 16 pairs x 5 positions
        S.retrieval_set(SyntheticConfig(sizes=("large",), counts=(1,)), 100)


def test_distinct_scenes_and_the_compare_world():
    configs = (
        SyntheticConfig(),
        SyntheticConfig(counts=(1,), heldout_pairs=10),  # the demo's world
        SyntheticConfig(sizes=("large",), positions=("left", "top"), heldout_pairs=3),
        SyntheticConfig(**S.COMPARE_WORLD),
    )
    for cfg in configs:
        for split in ("train", "heldout"):
            scenes = list(S.iter_scenes(cfg, split))
            assert S.distinct_scenes(cfg, split) == len(scenes) == len(set(scenes))
    assert S.distinct_scenes(configs[1], "heldout") == 100
    # `clippo compare`'s world: 20 held-out pairs x 2 sizes x 5 positions x 3 counts
    world = SyntheticConfig(image_size=96, **S.COMPARE_WORLD)
    assert S.distinct_scenes(world, "heldout") == 600
    train = S.train_pairs(world)
    assert len(train) == 44 and not set(train) & set(S.heldout_pairs(world))
    assert {c for c, _ in train} == set(world.colours) and {s for _, s in train} == set(
        world.shapes
    )
    with pytest.raises(ValueError, match="split must be"):
        S.distinct_scenes(world, "test")  # type: ignore[arg-type]


def test_zeroshot_sets():
    cfg = SyntheticConfig(image_size=32)
    sets = S.zeroshot_sets(cfg, n=40)
    held = set(S.heldout_pairs(cfg))
    colour, shape = sets["colour"], sets["shape"]
    assert colour.class_names == cfg.colours and shape.class_names == cfg.shapes
    pairs = {
        (colour.class_names[c], shape.class_names[s]) for c, s in zip(colour.labels, shape.labels)
    }
    assert pairs <= held
    assert all(t.count("{}") == 1 for t in colour.templates + shape.templates)
    assert len(colour.templates) == len(cfg.shapes) and len(shape.templates) == len(cfg.colours)
    assert colour.images.shape == (40, 32, 32, 3)


# ---- every caption template fits the canvas --------------------------------------------------------


def renderer(size: int):
    render = pytest.importorskip("clippo.render")
    return render.UnifontRenderer(image_size=size)


def wrap_reference_fits(widths: list[int], size: int) -> bool:
    """The renderer's (big_vision's) per-character wrap rule, as a naive reference:
    line_i = floor(f32(cumsum_i) / f32(size - max width)); the text fits when its last character is on a kept line (< size/16)."""
    if not widths:
        return True
    line = np.floor(np.float32(np.sum(widths)) / np.float32(size - max(widths)))
    return int(line) < size // 16


@pytest.mark.parametrize("size", [64, 96])
def test_caption_fit_check_agrees_with_the_wrap_rule(size):
    r = renderer(size)
    check = CaptionFitCheck(r)
    text = "three large purple crescents at the bottom, mmm wide (i) " * 4
    verdicts = [check(text[:n]) for n in range(1, len(text) + 1)]
    reference = [
        wrap_reference_fits([check.width(c) for c in text[:n]], size)
        for n in range(1, len(text) + 1)
    ]
    assert verdicts == reference
    assert verdicts[0] and not verdicts[-1]  # both outcomes occur
    # where it first fails the last glyph really is missing from the image
    n = verdicts.index(False) + 1
    assert np.array_equal(r(text[:n]), r(text[: n - 1] + check.twin(text[n - 1])))


@pytest.mark.parametrize("size", [96, 112, 128])
def test_every_caption_template_fits(size):
    """Each template at its longest fills (by rendered width, and by the wrap rule's line of the
    last character, which also counts the widest glyph) is wholly visible at the demo sizes."""
    check = CaptionFitCheck(renderer(size))
    cfg = SyntheticConfig(image_size=size)
    scenes = [*S.iter_scenes(cfg, "train"), *S.iter_scenes(cfg, "heldout")]
    for tmpl in CAPTION_TEMPLATES:
        texts = sorted({S.caption(sc, tmpl) for sc in scenes})
        widths = [[check.width(c) for c in t] for t in texts]
        total = np.array([sum(w) for w in widths], dtype=np.float64)
        last_line = total / np.array([size - max(w) for w in widths])
        candidates = {
            texts[i] for key in (total, last_line) for i in np.argsort(-key, kind="stable")[:8]
        }
        for text in candidates:
            assert check(text), f"caption does not fit {size}px: {text!r}"
