"""The renderer protocol: render_pair/render_on_image with any renderer and image shape, the
renderer names, and `clippo render --renderer text`."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clippo.cli import main
from clippo.render import (
    RenderConfig,
    TextRenderConfig,
    TextRenderer,
    UnifontRenderer,
    build_renderer,
    config_class,
    image_shape,
    render_on_image,
    render_pair,
    renderer_name,
)
from clippo.render.shards import KEY_DIGITS

PAIRS = [
    ("jumping gypsy", "quick brown fox"),  # descenders of the first line reach the margin rows
    ("a longer first sentence that wraps", "next"),
    ("مرحبا بالعالم", "hello"),  # an RTL paragraph, then an LTR one
    ("", "only the second"),
    ("你好世界", "नमस्ते"),
]


def test_names_and_builders():
    assert renderer_name(RenderConfig()) == "unifont"
    assert renderer_name(TextRenderConfig()) == "text"
    assert config_class("text") is TextRenderConfig and config_class("unifont") is RenderConfig
    with pytest.raises(ValueError, match="renderer must be one of 'unifont' | 'text', got 'x'"):
        config_class("x")
    assert isinstance(build_renderer(RenderConfig(image_size=32)), UnifontRenderer)
    text = build_renderer(TextRenderConfig(width=96, height=32))
    assert isinstance(text, TextRenderer) and text("x").shape == (32, 96, 3)
    assert image_shape(TextRenderConfig(width=96, height=32)) == (32, 96)
    assert image_shape(RenderConfig(image_size=48)) == (48, 48)


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_text_pair_is_the_two_paragraphs_drawn_together(a, b):
    # TextRenderer breaks lines at "\n": a pair must be exactly `a`, a line break, then `b`
    # (each paragraph keeps its own direction), whatever the line pitch
    r = TextRenderer(image_size=96, font_size=12, line_spacing=1.5)
    assert r.config.line_pitch == 18  # not 16: stacking by 16-px rows would be wrong
    # an empty first text takes no line (as with Unifont): the second starts at the top
    np.testing.assert_array_equal(render_pair(r, a, b), r(a + "\n" + b if a else b))


def test_text_pair_on_a_non_square_strip():
    r = TextRenderer(width=160, height=48, margin=2)  # two 20-px lines fit
    assert r.config.lines_fit == 2
    out = render_pair(r, "one", "two")
    assert out.shape == (48, 160, 3)
    np.testing.assert_array_equal(out, r("one\ntwo"))
    # the first text fills the strip: the second is cropped away, nothing breaks
    np.testing.assert_array_equal(render_pair(r, "one\ntwo\nthree", "hidden"), r("one\ntwo"))


def test_unifont_pair_still_stacks_by_16_px_rows():
    r = UnifontRenderer(image_size=64)
    a = "first sentence here"
    top = int(r.layout([a]).rows_used[0]) * 16
    out = render_pair(r, a, "second")
    np.testing.assert_array_equal(out[:top], r(a)[:top])
    np.testing.assert_array_equal(out[top:], r("second")[: 64 - top])


@pytest.mark.parametrize(
    "renderer",
    [TextRenderer(image_size=64), TextRenderer(width=128, height=32, background_brightness=200)],
    ids=["square", "strip"],
)
def test_text_on_image_with_text_renderers(renderer):
    h, w = renderer.config.shape
    photo = np.zeros((10, 20, 3), np.uint8)
    photo[..., 0] = 255  # a red photo
    out = render_on_image(renderer, photo, "what colour?")
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[: h // 2], renderer("what colour?")[: h // 2])
    assert (out[h // 2 :, :, 0] == 255).all() and (out[h // 2 :, :, 1:] == 0).all()
    assert (render_on_image(renderer, photo, "q", band=0)[..., 0] == 255).all()
    with pytest.raises(ValueError, match=f"within \\[0, {h}\\]"):
        render_on_image(renderer, photo, "q", band=h + 1)


# ---- clippo render --renderer ------------------------------------------------------------------

TEXTS = ["hello world", "مرحبا", "नमस्ते", "你好", "Ünïcödé and emoji 🙂"]


def _members(out: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for path in sorted(out.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                members[m.name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return members


def _write(path: Path) -> Path:
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return path


def test_cli_text_renderer_shards_equal_text_renderer_output(tmp_path, capsys):
    src = _write(tmp_path / "c.txt")
    out = tmp_path / "out"
    argv = ["render", str(src), str(out), "--renderer", "text", "--image-size", "64"]
    assert main([*argv, "--height", "32", "--rows-per-shard", "2", "--no-progress"]) == 0
    cfg = TextRenderConfig(image_size=64, height=32)  # only the options given; max_chars 0
    expected = TextRenderer.from_config(cfg).render_batch(TEXTS)
    members = _members(out)
    for row in range(len(TEXTS)):
        key = f"{row:0{KEY_DIGITS}d}"
        pixels = np.asarray(Image.open(io.BytesIO(members[f"{key}.png"])))
        np.testing.assert_array_equal(pixels, expected[row, ..., 0])
        meta = json.loads(members[f"{key}.json"])
        assert meta["renderer"] == "text" and meta["render"] == cfg.to_dict()
    manifest = json.loads((out / "shard-manifest.json").read_text())
    assert manifest["renderer"] == "text" and manifest["render"] == cfg.to_dict()
    summary = json.loads((out / "shard-summary.json").read_text())
    assert summary["renderer"] == "text"
    # the same folder with the other renderer: refused, naming what differs
    capsys.readouterr()
    assert main(["render", str(src), str(out), "--image-size", "64", "--no-progress"]) == 1
    assert "renderer" in capsys.readouterr().err


def test_cli_refuses_the_other_renderers_options(tmp_path, capsys):
    for argv in (["--renderer", "text", "--no-lower"], ["--margin", "2"]):
        with pytest.raises(SystemExit) as info:
            main(["render", "in.txt", str(tmp_path / "o"), *argv])
        assert info.value.code == 2
        assert "not an option of --renderer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_manifest_from_before_the_renderer_name_still_resumes(tmp_path):
    src = _write(tmp_path / "c.txt")
    out = tmp_path / "out"
    argv = ["render", str(src), str(out), "--image-size", "32", "--no-progress"]
    assert main(argv) == 0
    path = out / "shard-manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest.pop("renderer") == "unifont"
    path.write_text(json.dumps(manifest))  # as an older clippo wrote it
    assert main(argv) == 0
    summary = json.loads((out / "shard-summary.json").read_text())
    assert summary["shards_skipped"] == 1 and summary["shards_written"] == 0
