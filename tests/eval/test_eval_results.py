"""Result files: JSON-ready values written atomically, the text table, the examples PNG."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from clippo.atomic import write_json_atomic
from clippo.eval.results import format_table, jsonable, save_retrieval_examples


def test_write_json_converts_and_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "results.json"
    results = {"acc": np.float32(0.5), "n": np.int64(3), "per": np.array([1.0, np.nan]), "x": None}
    write_json_atomic(jsonable(results), path)
    assert json.loads(path.read_text()) == {"acc": 0.5, "n": 3, "per": [1.0, None], "x": None}
    # a failing write (unserialisable object) leaves the previous file intact and no temp files
    with pytest.raises(TypeError):
        write_json_atomic(jsonable({"bad": object()}), path)
    assert json.loads(path.read_text())["n"] == 3

    # a crash during the write (after the temp file exists) also keeps the old file
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(jsonable({"n": 4}), path)
    assert json.loads(path.read_text())["n"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_format_table_exact():
    rows = [
        {"task": "retrieval", "img2txt/r@1": 0.51234, "n": 100},
        {"task": "zero-shot colour", "acc": 0.875, "n": 200},
    ]
    assert format_table(rows) == "\n".join(
        [
            "| task             | img2txt/r@1 |   n |   acc |",
            "|------------------|------------:|----:|------:|",
            "| retrieval        |       0.512 | 100 |     - |",
            "| zero-shot colour |           - | 200 | 0.875 |",
        ]
    )
    assert format_table([{"a": 1.0}], floatfmt=".1%") == "|      a |\n|-------:|\n| 100.0% |"
    with pytest.raises(ValueError, match="column"):
        format_table([])


def test_retrieval_examples_png(tmp_path):
    rng = np.random.default_rng(0)
    images = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    images[:, :, :, 0] = (np.arange(4) * 60)[:, None, None]  # distinguishable red levels
    texts = ["zero", "one", "two", "three"]
    sim = rng.normal(size=(4, 4)).astype(np.float32)
    sim[np.arange(4), np.arange(4)] += 5.0
    path = save_retrieval_examples(
        tmp_path / "ex.png", images, texts, sim, np.arange(4), indices=[2, 3], thumb=32
    )
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 2 * 32 and img.shape[1] > 32
    pad, row_h = 10, max(32, 22 * 4) + 10
    # the first row shows image 2 (red 120), the second image 3 (red 180), at the thumbnail spot
    assert tuple(img[pad + 16, pad + 16]) == (120, 0, 0)
    assert tuple(img[pad + row_h + 16, pad + 16]) == (180, 0, 0)
    # correct top-1 captions are drawn in green: some green text pixels exist
    green = (img[:, :, 1] > 100) & (img[:, :, 0] < 80) & (img[:, :, 2] < 100)
    assert green.any()
    with pytest.raises(ValueError, match="uint8"):
        save_retrieval_examples(tmp_path / "x.png", images.astype(float), texts, sim, np.arange(4))
