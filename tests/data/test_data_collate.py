"""PairCollate (worker / device rendering) and the mixer behind a real DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.data.collate import PairCollate, to_device
from clippo.data.image_text import CSVImageText, TarShards
from clippo.data.loader import mixer_loader
from clippo.data.mixer import BatchMixer, MixerConfig
from clippo.data.sources import ImageTextPair, TextPair
from clippo.data.text_pairs import PairFile
from clippo.render import UnifontRenderer, to_pixels

SIZE = 32


@pytest.fixture(scope="module")
def renderer():
    return UnifontRenderer(image_size=SIZE)


def pairs():
    rng = np.random.default_rng(0)
    return [
        TextPair("first sentence.", "Second One", "t0"),
        ImageTextPair(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), "a photo", "i0"),
        ImageTextPair(
            Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)), "small", "i1"
        ),
        TextPair("Ünïcödé 文字", "x", "t1"),
    ]


def test_worker_mode_matches_naive_rendering(renderer):
    from clippo.preprocess import resize_uint8

    p = pairs()
    out = PairCollate(renderer)(p)
    assert out["keys"] == ["i0", "i1", "t0", "t1"]  # image/text pairs first
    assert out["is_text_pair"].tolist() == [False, False, True, True]
    left, right = out["left_pixels"], out["right_pixels"]
    assert left.dtype == right.dtype == torch.float32 and left.shape == right.shape == (
        4,
        3,
        SIZE,
        SIZE,
    )
    naive_left = [
        p[1].image,
        resize_uint8(p[2].image, SIZE),
        renderer(p[0].text_a),
        renderer(p[3].text_a),
    ]
    naive_right = [renderer(t) for t in ["a photo", "small", "Second One", "x"]]
    for i in range(4):
        expect = naive_left[i].astype(np.float32) / 255 * 2 - 1
        np.testing.assert_array_equal(left[i].numpy(), expect.transpose(2, 0, 1))
        np.testing.assert_array_equal(right[i].numpy(), to_pixels(naive_right[i])[0])
    assert out["left_texts"] == [None, None, "first sentence.", "Ünïcödé 文字"]
    assert out["right_texts"] == ["a photo", "small", "Second One", "x"]


@pytest.mark.parametrize("mode", [("worker", "uint8"), ("device", "float32")])
def test_other_modes_give_the_same_pixels_on_the_device(renderer, mode):
    reference = PairCollate(renderer)(pairs())
    out = PairCollate(renderer, render_on=mode[0], pixel_format=mode[1])(pairs())
    assert "left_pixels" not in out
    on_dev = to_device(out, "cpu", renderer)
    torch.testing.assert_close(on_dev["left_pixels"], reference["left_pixels"], rtol=0, atol=0)
    torch.testing.assert_close(on_dev["right_pixels"], reference["right_pixels"], rtol=0, atol=0)
    assert on_dev["is_text_pair"].tolist() == reference["is_text_pair"].tolist()


def test_device_mode_needs_renderer_and_options_are_checked(renderer):
    out = PairCollate(renderer, render_on="device")(pairs())
    assert out["left_images"].shape == (2, SIZE, SIZE, 3) and out["image_rows"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="renderer"):
        to_device(out, "cpu")
    with pytest.raises(ValueError):
        PairCollate(renderer, render_on="gpu")


@pytest.fixture
def mixer_factory(helpers, tmp_path):
    rng = np.random.default_rng(1)
    rows = ["image,caption"]
    for i in range(9):
        Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
        rows.append(f"{i}.png,picture number {i}")
    rows.append("missing.png,a missing file")
    (tmp_path / "img.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "p.tsv").write_text("".join(f"left {i}\tright {i}\n" for i in range(7)))
    members = []
    for i in range(12):  # two shards of 6 samples
        image = helpers.encode(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        members += [(f"k{i:02d}.png", image), (f"k{i:02d}.txt", f"shard caption {i}".encode())]
    for s in range(2):
        helpers.write_tar(tmp_path / f"s{s}.tar", members[s * 12 : (s + 1) * 12])

    def make(sharded: bool):
        img = [(CSVImageText(str(tmp_path / "img.csv"), image_size=SIZE), 1.0)]
        if sharded:
            img = [(TarShards(str(tmp_path / "s*.tar"), image_size=SIZE), 1.0)]
        txt = [(PairFile(str(tmp_path / "p.tsv")), 1.0)]
        return BatchMixer(MixerConfig(batch_size=4, text_pair_fraction=0.25, seed=11), img, txt)

    return make


def run(loader, n=None):
    out = []
    for batch in loader:
        out.append(
            (
                batch["step"],
                batch["keys"],
                batch["left_pixels"],
                batch["right_pixels"],
                batch["skipped"],
            )
        )
        if n is not None and len(out) == n:
            break
    return out


def same(a, b):
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for x, y in zip(a, b):
        assert torch.equal(x[2], y[2]) and torch.equal(x[3], y[3])


def test_dataloader_two_workers_equals_in_process(renderer, mixer_factory):
    collate = PairCollate(renderer)
    ref = run(mixer_loader(mixer_factory(False), collate, stop_step=8, num_workers=0))
    assert [x[0] for x in ref] == list(range(8))
    two = run(mixer_loader(mixer_factory(False), collate, stop_step=8, num_workers=2))
    same(ref, two)  # random-access sources: identical batches, in the same order
    assert sum(x[4].get("image_text/0:csv:img.csv/image_missing", 0) for x in ref) >= 1
    # resuming at an odd step with two workers continues the same sequence
    resumed = run(
        mixer_loader(mixer_factory(False), collate, start_step=3, stop_step=8, num_workers=2)
    )
    same(ref[3:], resumed)


def test_dataloader_sharded_source_same_samples_any_workers(renderer, mixer_factory):
    collate = PairCollate(renderer, render_on="device")  # strings travel; nothing rendered here
    keys = {}
    for workers in (0, 2):
        # 3 images per batch: 4 steps hold 12 images, one epoch of both shards in either case
        # (one reader of both shards, or two workers reading one shard each)
        loader = mixer_loader(mixer_factory(True), collate, stop_step=4, num_workers=workers)
        keys[workers] = [
            k for b in loader for k, t in zip(b["keys"], b["is_text_pair"].tolist()) if not t
        ]
    assert sorted(keys[0]) == sorted(keys[2]) and len(set(keys[0])) == 12
    # order is defined per worker: with 2 workers, even steps come from one shard, odd from the other
    assert keys[0] != keys[2]
    assert {k[-3:] for k in keys[2][0:3] + keys[2][6:9]} in (
        {f"k{i:02d}" for i in range(6)},
        {f"k{i:02d}" for i in range(6, 12)},
    )


@pytest.mark.parametrize("patch", [16, 8])
def test_ink_masks_agree_across_modes_and_with_the_renderer(renderer, patch):
    """Worker collation hands the ink masks over; every mode gives the same ones on the device."""
    p = pairs()
    worker = PairCollate(renderer, ink_patch_size=patch)(p)
    grid = SIZE // patch
    assert worker["left_ink"].shape == worker["right_ink"].shape == (4, grid, grid)
    assert worker["left_ink"][:2].all()  # photo rows: every patch counts
    # the texts' masks by hand: a patch holds ink when any pixel differs from the background
    texts = [p[0].text_a, p[3].text_a, "a photo", "small", "Second One", "x"]
    images = np.stack([renderer(t) for t in texts]).astype(np.int16)
    off = (images != renderer.config.background_brightness).any(-1)
    want = off.reshape(6, grid, patch, grid, patch).any(axis=(2, 4))
    assert want.any() and not want.all()
    np.testing.assert_array_equal(worker["left_ink"][2:].numpy(), want[:2])
    np.testing.assert_array_equal(worker["right_ink"].numpy(), want[2:])
    if patch == 16:  # the renderer's own on-device masks
        _, ink = renderer.render_torch(texts, "cpu", return_ink=True)
        np.testing.assert_array_equal(ink.numpy(), want)
    for collated in (
        worker,
        PairCollate(renderer, pixel_format="uint8")(p),  # collated without masks
        PairCollate(renderer, render_on="device")(p),
    ):
        on_dev = to_device(collated, "cpu", renderer, ink_patch_size=patch)
        assert torch.equal(on_dev["left_ink"], worker["left_ink"])
        assert torch.equal(on_dev["right_ink"], worker["right_ink"])
    assert "left_ink" not in PairCollate(renderer)(p)  # only on request
    with pytest.raises(ValueError, match="ink_patch_size"):
        PairCollate(renderer, ink_patch_size=5)
