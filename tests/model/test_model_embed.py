"""`clippo embed` on a folder of images and on a text file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import clippo
from clippo.cli import main as cli_main
from clippo.data.images import decode_image
from clippo.embed import Embeddings, read_embeddings, read_texts, write_embeddings
from clippo.preprocess import preprocess


@pytest.fixture()
def model_dir(tmp_path, fixture_model):
    d = tmp_path / "model"
    fixture_model.save(d)
    return d


@pytest.fixture()
def image_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(d / "b.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(d / "a.JPG", quality=90)
    Image.fromarray(rng.integers(0, 256, (9, 70), dtype=np.uint8)).save(d / "sub" / "c.png")  # grey
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(200))
    (d / "empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    return d


def test_embed_images_cli(tmp_path, model_dir, image_dir, capsys):
    out = tmp_path / "out" / "emb.npy"
    args = ["embed", "--model", str(model_dir), "--images", str(image_dir), "--out", str(out)]
    assert cli_main([*args, "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    vectors, ids = read_embeddings(out)
    assert ids == ["a.JPG", "b.png", "sub/c.png"]  # sorted, relative, unreadable ones left out
    assert (out.parent / "emb.ids.txt").read_text() == "a.JPG\nb.png\nsub/c.png\n"
    assert vectors.shape == (3, 48) and vectors.dtype == np.float32
    assert "skipped 2" in err and "broken.jpg" in err and "empty.png" in err

    model = clippo.load(model_dir)
    for row, name in zip(vectors, ids):
        with torch.no_grad():
            want = model.encode(preprocess([decode_image(image_dir / name)], 64))[0].numpy()
        np.testing.assert_allclose(row, want, atol=1e-5)

    bf16_out = tmp_path / "bf16.parquet"
    assert cli_main([*args[:-1], str(bf16_out), "--bf16"]) == 0
    bf16_vectors, bf16_ids = read_embeddings(bf16_out)
    assert bf16_ids == ids
    assert np.abs(bf16_vectors - vectors).max() < 0.1
    assert not np.array_equal(bf16_vectors, vectors)  # autocast really ran in bfloat16


def test_embed_texts_cli(tmp_path, model_dir):
    texts = tmp_path / "texts.txt"
    texts.write_text("a photo of a cat\n\nПривет, мир! 🍕\r\n", encoding="utf-8")
    out = tmp_path / "texts.parquet"
    assert (
        cli_main(["embed", "--model", str(model_dir), "--texts", str(texts), "--out", str(out)])
        == 0
    )
    vectors, ids = read_embeddings(out)
    assert ids == ["1", "2", "3"]
    model = clippo.load(model_dir)
    with torch.no_grad():
        want = model.encode_texts(["a photo of a cat", "", "Привет, мир! 🍕"]).numpy()
    np.testing.assert_allclose(vectors, want, atol=1e-6)


def test_embed_errors(tmp_path, model_dir, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        read_texts(bad)
    assert (
        cli_main(
            [
                "embed",
                "--model",
                str(model_dir),
                "--texts",
                str(bad),
                "--out",
                str(tmp_path / "o.npy"),
            ]
        )
        == 1
    )
    assert "bad.txt:2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["embed", "--model", str(model_dir), "--texts", str(bad), "--out", "x.csv"])
    with pytest.raises(ValueError, match="line breaks"):
        write_embeddings(Embeddings(np.zeros((1, 2), np.float32), ["a\nb"]), tmp_path / "e.npy")
