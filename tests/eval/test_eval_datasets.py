"""Evaluation data readers: pairs files (CSV/TSV/jsonl), ImageFolder trees, CIFAR-100 binaries,
subsets and decoding with unreadable images skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clippo.data.images import decode_image
from clippo.errors import DataError
from clippo.eval.datasets import (
    CaptionedImages,
    evenly_spaced,
    load_images,
    read_cifar100,
    read_class_names,
    read_imagefolder,
    read_pairs,
    read_templates,
)
from clippo.eval.spec import EvalSpec
from clippo.eval.suites import resolve_prompts
from clippo.preprocess import resize_uint8


def write_image(path: Path, seed: int, size: tuple[int, int] = (20, 28)) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def test_read_pairs_csv_groups_captions_by_image(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "pairs.csv").write_text(
        "id,image,caption\n"
        '1,img/b.png,"a dog, running"\n'
        "2,img/a.png,a cat\n"
        "3,img/b.png,another dog\n"
        "4,./img/a.png,a second cat\n"  # the same file spelled differently
        "5,/abs/c.png,absolute\n",
        encoding="utf-8",
    )
    d = read_pairs(tmp_path / "pairs.csv")
    assert d.images == (tmp_path / "img/b.png", tmp_path / "img/a.png", Path("/abs/c.png"))
    assert d.names == ("img/b.png", "img/a.png", "/abs/c.png")
    assert d.texts == ("a dog, running", "a cat", "another dog", "a second cat", "absolute")
    assert d.image_ids_for_text.tolist() == [0, 1, 0, 1, 2]
    assert len(d) == 3 and d.skipped == ()


def test_read_pairs_tsv_jsonl_and_columns(tmp_path):
    (tmp_path / "p.tsv").write_text("file\ttext\nx.png\tone, two\ny.png\tthree\n")
    d = read_pairs(tmp_path / "p.tsv", image_column="file", caption_column="text")
    assert d.texts == ("one, two", "three") and d.image_ids_for_text.tolist() == [0, 1]

    lines = [
        {"image": "x.png", "caption": ["first", "second"]},
        {"image": "y.png", "caption": "third"},
        {"image": "x.png", "caption": "fourth", "extra": 1},
    ]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    d = read_pairs(tmp_path / "p.jsonl", image_root=tmp_path / "root")
    assert d.texts == ("first", "second", "third", "fourth")
    assert d.image_ids_for_text.tolist() == [0, 0, 1, 0]
    assert d.images == (tmp_path / "root/x.png", tmp_path / "root/y.png")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "image,text\nx.png,hi\n", r"a\.csv: header .* lacks column\(s\) \['caption'\]"),
        ("b.csv", "image,caption\nx.png,ok\ny.png\n", r"b\.csv:3: 1 fields, the header has 2"),
        ("c.csv", "image,caption\nx.png,ok\ny.png,  \n", r"c\.csv:3: empty or non-text caption"),
        ("d.csv", "image,caption\n,hello\n", r"d\.csv:2: empty or non-text image path"),
        ("e.jsonl", '{"image": "x", "caption": "y"}\n{oops\n', r"e\.jsonl:2: not JSON"),
        ("f.jsonl", '{"image": "x"}\n', r"f\.jsonl:1: no key 'caption'"),
        ("g.jsonl", '{"image": "x", "caption": []}\n', r"g\.jsonl:1: empty caption list"),
        ("h.jsonl", '{"image": "x", "caption": ["a", 3]}\n', r"h\.jsonl:1: .*caption 3"),
        ("i.txt", "x.png a cat\n", r"i\.txt: pairs file must end in"),
        ("j.csv", "", r"j\.csv: empty file"),
        ("k.csv", "image,caption\n", r"k\.csv: no \(image, caption\) rows"),
    ],
)
def test_read_pairs_errors_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_pairs(tmp_path / name)


def test_read_pairs_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_pairs(tmp_path / "nope.csv")


def test_evenly_spaced_and_subset():
    assert evenly_spaced(10, 4).tolist() == [0, 2, 5, 7]
    assert evenly_spaced(3, 5).tolist() == [0, 1, 2]
    assert evenly_spaced(3, 0).tolist() == [0, 1, 2]
    d = CaptionedImages(
        images=(Path("a"), Path("b"), Path("c")),
        names=("a", "b", "c"),
        texts=("a1", "b1", "a2", "c1", "b2"),
        image_ids_for_text=np.array([0, 1, 0, 2, 1]),
        source="mem",
    )
    s = d.subset([2, 0])
    assert s.names == ("c", "a") and s.images == (Path("c"), Path("a"))
    # texts keep file order; ids point into the new image order
    assert s.texts == ("a1", "a2", "c1") and s.image_ids_for_text.tolist() == [1, 1, 0]


def test_read_imagefolder(tmp_path):
    root = tmp_path / "tree"
    write_image(root / "dog/x/1.png", 0)
    write_image(root / "dog/0.JPG", 1)
    write_image(root / "cat/5.png", 2)
    (root / "cat/notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    (root / ".hidden").mkdir()
    write_image(root / "loose.png", 3)  # not in a class folder: ignored
    d = read_imagefolder(root)
    assert d.class_names == ("cat", "dog", "empty")  # an empty class still competes
    assert d.names == ("cat/5.png", "dog/0.JPG", "dog/x/1.png")
    assert d.labels.tolist() == [0, 1, 1]
    assert d.images[0] == root / "cat/5.png"
    named = read_imagefolder(root, class_names=["a cat", "a dog", "nothing"])
    assert named.class_names == ("a cat", "a dog", "nothing")
    with pytest.raises(ValueError, match="3 class folders but 2 class names"):
        read_imagefolder(root, class_names=["a", "b"])
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="flat: no class sub-folders"):
        read_imagefolder(tmp_path / "flat")
    with pytest.raises(NotADirectoryError, match="missing"):
        read_imagefolder(tmp_path / "missing")


def write_cifar(folder: Path, labels: list[int], names: list[str], seed: int = 0) -> np.ndarray:
    """CIFAR-100 binary records: coarse, fine, then R, G, B planes of 32x32."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    records = np.zeros((len(labels), 3074), dtype=np.uint8)
    records[:, 1] = labels
    records[:, 2:] = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)
    (folder / "test.bin").write_bytes(records.tobytes())
    (folder / "fine_label_names.txt").write_text("\n".join(names) + "\n")
    return images


def test_read_cifar100(tmp_path):
    images = write_cifar(tmp_path / "cifar-100-binary", [2, 0, 1], ["apple", "aquarium_fish", "b"])
    for where in (tmp_path, tmp_path / "cifar-100-binary"):  # the archive's folder is found
        d = read_cifar100(where)
        np.testing.assert_array_equal(d.images, images)
        assert d.labels.tolist() == [2, 0, 1]
        assert d.class_names == ("apple", "aquarium_fish", "b")
        assert d.names == ("test.bin[0]", "test.bin[1]", "test.bin[2]")
    assert read_cifar100(tmp_path, class_names=["x", "y", "z"]).class_names == ("x", "y", "z")
    with pytest.raises(ValueError, match="label 2 but only 2 class names"):
        read_cifar100(tmp_path, class_names=["x", "y"])
    with pytest.raises(FileNotFoundError, match="train.bin"):
        read_cifar100(tmp_path, split="train")
    (tmp_path / "cifar-100-binary/fine_label_names.txt").unlink()  # the bundled names then
    bundled = read_cifar100(tmp_path).class_names
    assert len(bundled) == 100 and bundled[:3] == ("apple", "aquarium_fish", "baby")
    assert bundled[-1] == "worm" and list(bundled) == sorted(bundled)


def test_load_images_decodes_resizes_and_skips_unreadable(tmp_path):
    write_image(tmp_path / "a.png", 0, (30, 20))
    write_image(tmp_path / "c.jpg", 2, (16, 40))
    (tmp_path / "b.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "pairs.csv").write_text(
        "image,caption\na.png,first\nb.png,broken\nmissing.png,gone\nc.jpg,third\nb.png,again\n"
    )
    d = read_pairs(tmp_path / "pairs.csv")
    out = load_images(d, 24, num_workers=2)
    assert out.names == ("a.png", "c.jpg")
    assert out.texts == ("first", "third") and out.image_ids_for_text.tolist() == [0, 1]
    assert [name for name, _ in out.skipped] == ["b.png", "missing.png"]
    assert "file not found" in out.skipped[1][1]
    assert out.images.dtype == np.uint8 and out.images.shape == (2, 24, 24, 3)
    for i, name in enumerate(out.names):  # big_vision decode|resize, image by image
        np.testing.assert_array_equal(
            out.images[i], resize_uint8(decode_image(tmp_path / name), 24)
        )
    assert load_images(out, 24) is out  # already decoded at that size
    smaller = load_images(out, 8)
    np.testing.assert_array_equal(smaller.images[1], resize_uint8(out.images[1], 8))

    (tmp_path / "bad.csv").write_text("image,caption\nb.png,x\nmissing.png,y\n")
    with pytest.raises(ValueError, match="none of the 2 images could be decoded"):
        load_images(read_pairs(tmp_path / "bad.csv"), 24)


def test_read_templates(tmp_path):
    (tmp_path / "t.txt").write_text("a photo of a {}.\n\n  {} art  \n")
    assert read_templates(tmp_path / "t.txt") == ["a photo of a {}.", "{} art"]
    (tmp_path / "c.txt").write_text("a photo of a {c}.\n{c}\n")  # CLIP_benchmark's slot
    assert read_templates(tmp_path / "c.txt") == ["a photo of a {}.", "{}"]
    (tmp_path / "bad.txt").write_text("a {}\nno placeholder\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: template 'no placeholder'"):
        read_templates(tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no templates"):
        read_templates(tmp_path / "empty.txt")


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("pairs.csv", b"image,caption\nx.png,ok\ny.png,caf\xe9\n", 3),  # Latin-1, not UTF-8
        ("pairs.tsv", b"image\tcaption\n\xff\xfe.png\thi\n", 2),
        ("pairs.jsonl", b'{"image": "x", "caption": "y"}\n\n{"image": "\xe9"}\n', 3),
    ],
)
def test_a_non_utf8_pairs_file_names_file_and_line(tmp_path, name, content, line):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=f"{tmp_path / name}:{line}: not valid UTF-8"):
        read_pairs(tmp_path / name)


def test_a_non_utf8_templates_or_class_names_file_names_file_and_line(tmp_path):
    templates = tmp_path / "templates.txt"
    templates.write_bytes(b"a photo of a {}.\n\na caf\xe9 with a {}.\n")
    with pytest.raises(DataError, match=f"{templates}:3: not valid UTF-8"):
        read_templates(templates)
    # as `clippo eval zeroshot --templates FILE` reaches it
    with pytest.raises(DataError, match=f"{templates}:3: not valid UTF-8"):
        resolve_prompts(EvalSpec("zeroshot", "x", templates=str(templates)), ("cat",))
    names = tmp_path / "names.txt"
    names.write_bytes(b"cat\n\x80dog\n")
    with pytest.raises(DataError, match=f"{names}:2: not valid UTF-8"):
        read_class_names(names)
