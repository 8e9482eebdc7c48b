"""Image/alt-text sources: tar shards, parquet, datasets dirs, CSV; bad samples skipped by kind."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from PIL import Image

from clippo.data.image_text import (
    CSVImageText,
    CSVRow,
    HFImageText,
    ParquetImageText,
    TarShards,
    caption_text,
    expand_paths,
    image_value,
    open_parquet,
)
from clippo.data.images import decode_image
from clippo.data.mixer import BatchMixer, MixerConfig
from clippo.data.sources import SkipSample, SkipStats
from clippo.errors import DataError

S = 8  # output image size in these tests


def read_all(source):
    """Every record of every unit (or index), decoded: (samples by key, skip counts by kind)."""
    good, skipped = {}, collections.Counter()
    if hasattr(source, "num_units"):
        records = []
        for u in range(source.num_units()):
            reader = source.read_unit(u)
            assert len(reader) == source.unit_length(u)
            skipped.update(kind for kind, _ in getattr(reader, "problems", ()))
            records += [reader[i] for i in range(len(reader))]
            getattr(reader, "close", lambda: None)()
        load = source.decode
    else:
        records, load = list(range(len(source))), source.load
    for rec in records:
        try:
            sample = load(rec, 0)
        except SkipSample as e:
            assert e.message
            skipped[e.kind] += 1
            continue
        assert sample.key not in good
        good[sample.key] = sample
    return good, skipped


def colour_png(helpers, colour) -> bytes:
    return helpers.encode(np.full((6, 10, 3), colour, np.uint8), "PNG")


@pytest.fixture
def shard_dir(helpers, tmp_path):
    """Two shards with good samples of every format and one of every kind of bad sample."""
    cmyk = helpers.encode(Image.new("CMYK", (6, 6), (0, 255, 255, 0)), "JPEG")
    good_jpg = helpers.encode(np.full((9, 7, 3), (10, 200, 30), np.uint8), "JPEG", quality=95)
    webp = helpers.encode(np.full((5, 5, 3), (0, 0, 250), np.uint8), "WEBP", lossless=True)
    shard0 = [
        ("a/000.jpg", good_jpg),
        ("a/000.txt", b"  a green square \n"),
        ("a/001.png", colour_png(helpers, (255, 0, 0))),
        ("a/001.json", json.dumps({"caption": "a red rectangle", "url": "x"}).encode()),
        ("a/002.webp", webp),
        ("a/002.json", json.dumps({"text": "a blue thing"}).encode()),
        ("a/003.jpeg", cmyk),
        ("a/003.txt", "café ☕ red".encode()),
        ("a/004.jpg", b"not a jpeg"),  # corrupt
        ("a/004.txt", b"corrupt"),
        ("a/005.png", b""),  # zero-byte
        ("a/005.txt", b"empty image"),
        ("a/006.png", colour_png(helpers, (1, 2, 3))),  # no caption member
        ("a/007.png", colour_png(helpers, (1, 2, 3))),
        ("a/007.txt", b"   "),  # empty caption
        ("a/008.txt", b"caption without image"),
    ]
    trunc = helpers.encode(helpers.random_rgb(40, 40), "PNG")
    shard1 = [
        ("b/010.png", trunc[: len(trunc) // 2]),  # truncated
        ("b/010.txt", b"truncated"),
        ("b/011.png", helpers.png_header_only(20000, 20000)),  # bomb
        ("b/011.txt", b"bomb"),
        ("b/012.png", colour_png(helpers, (9, 9, 9))),
        ("b/012.json", b"{not json"),  # bad caption
        ("b/013.png", colour_png(helpers, (0, 255, 0))),
        ("b/013.cls", b"7"),  # ignored extension
        ("b/013.txt", b"a green rectangle"),
    ]
    helpers.write_tar(tmp_path / "shard-000.tar", shard0)
    helpers.write_tar(tmp_path / "shard-001.tar", shard1)
    return tmp_path


def test_tar_shards_good_and_bad(helpers, shard_dir):
    src = TarShards(
        str(shard_dir / "shard-{000..001}.tar"), image_size=S, resize=helpers.pil_resize
    )
    assert src.num_units() == 2
    good, skipped = read_all(src)
    assert sorted(good) == ["a/000", "a/001", "a/002", "a/003", "b/013"]
    captions = {k: v.text for k, v in good.items()}
    assert captions == {
        "a/000": "a green square",
        "a/001": "a red rectangle",
        "a/002": "a blue thing",
        "a/003": "café ☕ red",
        "b/013": "a green rectangle",
    }
    for sample in good.values():
        assert sample.image.dtype == np.uint8 and sample.image.shape == (S, S, 3)
    assert good["a/001"].image[0, 0].tolist() == [255, 0, 0]
    assert abs(int(good["a/003"].image[0, 0, 0]) - 255) <= 6  # CMYK red converted to RGB
    assert dict(skipped) == {
        "image_corrupt": 1,
        "image_empty": 1,
        "missing_caption": 1,
        "empty_caption": 1,
        "no_image": 1,
        "image_truncated": 1,
        "image_bomb": 1,
        "bad_caption": 1,
    }


def test_default_resize_is_the_reference(helpers, shard_dir):
    from clippo.preprocess import resize_uint8

    src = TarShards(str(shard_dir / "shard-000.tar"), image_size=S)
    good, _ = read_all(src)
    jpg = helpers.encode(np.full((9, 7, 3), (10, 200, 30), np.uint8), "JPEG", quality=95)
    np.testing.assert_array_equal(good["a/000"].image, resize_uint8(decode_image(jpg), S))


def test_damaged_tar_keeps_records_before_the_damage(helpers, tmp_path):
    members = [(f"{i:03d}.png", colour_png(helpers, (i, 0, 0))) for i in range(4)]
    members = [m for i, m in enumerate(members) for m in (m, (f"{i:03d}.txt", b"cap"))]
    helpers.write_tar(tmp_path / "s.tar", members)
    data = (tmp_path / "s.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) * 2 // 3])
    src = TarShards(str(cut), image_size=S, resize=helpers.pil_resize)
    good, skipped = read_all(src)
    assert 1 <= len(good) < 4
    assert skipped["bad_shard"] == 1


def test_expand_paths(tmp_path):
    for name in ["s-00.tar", "s-01.tar", "s-02.tar", "x.tar"]:
        (tmp_path / name).write_bytes(b"")
    assert expand_paths(str(tmp_path / "s-{00..02}.tar")) == [
        str(tmp_path / f"s-0{i}.tar") for i in range(3)
    ]
    assert expand_paths(str(tmp_path / "s-*.tar")) == [
        str(tmp_path / f"s-0{i}.tar") for i in range(3)
    ]
    assert expand_paths(str(tmp_path / "{x,s-01}.tar")) == [
        str(tmp_path / "x.tar"),
        str(tmp_path / "s-01.tar"),
    ]
    assert expand_paths([tmp_path / "x.tar"]) == [str(tmp_path / "x.tar")]
    with pytest.raises(FileNotFoundError, match="s-03"):
        expand_paths(str(tmp_path / "s-{00..03}.tar"))
    with pytest.raises(FileNotFoundError):
        expand_paths(str(tmp_path / "none-*.tar"))


def _sharded_keys(src, part, num_parts, n):
    mixer = BatchMixer(MixerConfig(batch_size=1), [(src, 1.0)], rank=part, world_size=num_parts)
    return [b.keys[0].split("/", 2)[2] for b in mixer.batches(0, stop_step=n)]


@pytest.mark.parametrize("num_shards", [1, 3])
def test_tar_partitions_are_disjoint_and_cover_an_epoch(helpers, tmp_path, num_shards):
    keys = [f"{i:03d}" for i in range(12)]
    for s in range(num_shards):
        members = []
        for k in keys[s::num_shards]:
            members += [
                (f"{k}.png", colour_png(helpers, (int(k), 0, 0))),
                (f"{k}.txt", f"cap {k}".encode()),
            ]
        helpers.write_tar(tmp_path / f"p-{s}.tar", members)
    src = TarShards(str(tmp_path / "p-*.tar"), image_size=S, resize=helpers.pil_resize)
    # 2 ranks: with 3 shards rank 0 reads shards 0 and 2 (8 samples), rank 1 shard 1 (4);
    # with 1 shard both read it and keep every other record (6 each).
    sizes = [8, 4] if num_shards == 3 else [6, 6]
    seen = [_sharded_keys(src, r, 2, 2 * n) for r, n in zip(range(2), sizes)]
    assert sorted(seen[0][: sizes[0]] + seen[1][: sizes[1]]) == keys
    # the next epoch splits all samples again, in a new order
    assert sorted(seen[0][sizes[0] :] + seen[1][sizes[1] :]) == keys
    assert seen[0][sizes[0] :] != seen[0][: sizes[0]]


@pytest.fixture
def parquet_file(helpers, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "img").mkdir()
    Image.fromarray(np.full((4, 4, 3), (7, 8, 9), np.uint8)).save(tmp_path / "img" / "p.png")
    images = [
        {"bytes": colour_png(helpers, (255, 0, 0)), "path": None},
        {"bytes": None, "path": "img/p.png"},
        {"bytes": b"garbage", "path": None},
        {"bytes": colour_png(helpers, (0, 0, 255)), "path": None},
        {"bytes": None, "path": None},
    ]
    table = pa.table(
        {
            "image": images,
            "caption": ["red", "from a path", "bad image", None, "no image"],
            "other": [1, 2, 3, 4, 5],
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path, row_group_size=2)
    return path


def test_parquet(helpers, parquet_file):
    src = ParquetImageText(str(parquet_file), image_size=S, resize=helpers.pil_resize)
    assert src.num_units() == 3 and [src.unit_length(u) for u in range(3)] == [2, 2, 1]
    good, skipped = read_all(src)
    assert sorted(good) == ["data.parquet:0", "data.parquet:1"]
    assert good["data.parquet:0"].image[0, 0].tolist() == [255, 0, 0]
    assert good["data.parquet:1"].image[0, 0].tolist() == [7, 8, 9]  # path relative to the file
    assert dict(skipped) == {"image_corrupt": 1, "missing_caption": 1, "no_image": 1}
    with pytest.raises(ValueError, match="no column 'text'"):
        ParquetImageText(str(parquet_file), text_column="text")


def test_hf_dataset_dir(helpers, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    png = tmp_path / "x.png"
    Image.fromarray(np.full((5, 5, 3), (1, 2, 3), np.uint8)).save(png)
    ds = datasets.Dataset.from_dict(
        {"image": [str(png), str(png)], "text": ["one", ""]},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    src = HFImageText(
        str(tmp_path / "ds"), text_column="text", image_size=S, resize=helpers.pil_resize
    )
    good, skipped = read_all(src)
    assert list(good) == ["0"] and good["0"].image[0, 0].tolist() == [1, 2, 3]
    assert dict(skipped) == {"empty_caption": 1}
    assert len(HFImageText(str(tmp_path / "dd"), split="train", text_column="text")) == 2
    with pytest.raises(ValueError, match="split"):
        HFImageText(str(tmp_path / "dd"), text_column="text")
    with pytest.raises(ValueError, match="no column 'caption'"):
        HFImageText(str(tmp_path / "ds"))


def test_csv(helpers, tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.full((5, 5, 3), (50, 60, 70), np.uint8)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "imgs" / "zero.png").write_bytes(b"")
    rows = [
        "image,caption",
        "../imgs/a.png,a grey square",  # relative to the CSV's folder, not the working dir
        '../imgs/a.png,"quoted, with comma"',
        "../imgs/missing.png,gone",
        "../imgs/zero.png,zero bytes",
        "../imgs/a.png",
        f"{tmp_path / 'imgs' / 'a.png'},absolute path",
    ]
    path = tmp_path / "sub" / "pairs.csv"
    path.parent.mkdir()
    path.write_text("\n".join(rows) + "\n")
    src = CSVImageText(str(path), image_size=S, resize=helpers.pil_resize)
    good, skipped = read_all(src)
    assert {k: v.text for k, v in good.items()} == {
        "2": "a grey square",
        "3": "quoted, with comma",
        "7": "absolute path",
    }
    assert good["2"].image[0, 0].tolist() == [50, 60, 70]
    assert dict(skipped) == {"image_missing": 1, "image_empty": 1, "bad_row": 1}
    headerless = tmp_path / "h.tsv"
    headerless.write_text(f"a grey thing\t{tmp_path / 'imgs' / 'a.png'}\n")
    src = CSVImageText(
        str(headerless), columns=(1, 0), delimiter="\t", image_size=S, resize=helpers.pil_resize
    )
    assert read_all(src)[0]["1"].text == "a grey thing"
    with pytest.raises(ValueError, match="lacks column"):
        CSVImageText(str(path), columns=("path", "caption"))


def test_public_row_helpers_check_without_decoding(tmp_path):
    """What `clippo clean` reads through: rows checked, images left encoded."""
    path = tmp_path / "pairs.csv"
    path.write_text("image,caption\nimgs/a.png,a cat\nonly-one-field\n,no image\nb.png,\n")
    src = CSVImageText(str(path))
    assert src.fields(0) == ["imgs/a.png", "a cat"] and src.line_number(0) == 2
    assert src.row(0) == CSVRow(2, f"{path}:2", "imgs/a.png", str(tmp_path / "imgs/a.png"), "a cat")
    kinds = []
    for i in (1, 2, 3):
        with pytest.raises(SkipSample, match=f"{path}:{i + 2}") as e:
            src.row(i)
        kinds.append(e.value.kind)
    assert kinds == ["bad_row", "no_image", "empty_caption"]

    (tmp_path / "s.tar").write_bytes(b"")  # listed only: nothing here reads the shard
    shards = TarShards(str(tmp_path / "s.tar"), image_exts=("jpg", "png"), shuffle=False)
    data = {"png": b"PNG", "json": b'{"caption": "hi"}'}
    assert shards.image_and_caption(data, "s:k") == (b"PNG", "hi", "png")
    with pytest.raises(SkipSample, match="s:k: no image member") as e:
        shards.image_and_caption({"txt": b"hi"}, "s:k")
    assert e.value.kind == "no_image"
    broken = {"jpg": OSError("truncated"), "txt": b"hi"}
    with pytest.raises(SkipSample, match=r"s:k\.jpg: truncated"):
        shards.image_and_caption(broken, "s:k")

    assert image_value({"bytes": b"x", "path": "p"}, "/r", "w") == b"x"
    assert image_value({"bytes": None, "path": "p.png"}, "/r", "w") == "/r/p.png"
    assert image_value("/abs.png", "/r", "w") == "/abs.png"
    with pytest.raises(SkipSample, match="w: no image in cell"):
        image_value(None, "/r", "w")
    assert caption_text(b"caf\xc3\xa9", "w") == "café"
    with pytest.raises(SkipSample, match="w: no caption"):
        caption_text(None, "w")
    with pytest.raises(FileNotFoundError):
        open_parquet(str(tmp_path / "missing.parquet"))


def test_skip_stats_counts_and_deltas():
    stats = SkipStats(max_examples=1)
    stats.add("s", "image_corrupt", "a")
    stats.add("s", "image_corrupt", "b")
    stats.add("t", "empty_caption", "c")
    assert stats.counts == {"s/image_corrupt": 2, "t/empty_caption": 1} and stats.total == 3
    assert stats.examples["s/image_corrupt"] == ["a"]
    assert stats.pop_delta() == {"s/image_corrupt": 2, "t/empty_caption": 1}
    assert stats.pop_delta() == {}
    other = SkipStats()
    other.update({"s/image_corrupt": 5})
    assert other.counts == {"s/image_corrupt": 5}
    assert "s/image_corrupt: 5" in other.summary()


def test_an_empty_or_damaged_parquet_file_is_an_error_naming_it(tmp_path, parquet_file):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=f"{empty}: not a readable parquet file"):
        ParquetImageText(str(empty))
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(parquet_file.read_bytes()[:-100])  # the footer gone
    with pytest.raises(DataError, match=f"{cut}: not a readable parquet file"):
        ParquetImageText(str(cut))
    # footer intact, the first row group's pages overwritten: found when the unit is read
    raw = bytearray(parquet_file.read_bytes())
    raw[4:400] = b"\xff" * 396
    pages = tmp_path / "pages.parquet"
    pages.write_bytes(bytes(raw))
    src = ParquetImageText(str(pages))
    with pytest.raises(DataError, match=f"{pages}: row group 0 is corrupt"):
        src.read_unit(0)


def test_shards_of_only_bad_samples_stop_with_an_error_naming_the_folder(helpers, tmp_path):
    # the message was right but named no file, and was a RuntimeError: a traceback at the top
    folder = tmp_path / "shards"
    folder.mkdir()
    for s in range(2):
        members = [(f"k{s}{i}.jpg", b"\xff\xd8 not a jpeg") for i in range(4)]
        members = [m for i in range(4) for m in (members[i], (f"k{s}{i}.txt", b"a caption"))]
        helpers.write_tar(folder / f"{s}.tar", members)
    src = TarShards(str(folder / "*.tar"), image_size=S)
    mixer = BatchMixer(MixerConfig(2, max_bad_in_a_row=5), [(src, 1)])
    with pytest.raises(DataError) as info:
        next(mixer.batches(0))
    message = str(info.value)
    assert (
        f"source 'image_text/0:webdataset' (2 files in {folder}): 6 bad samples in a row" in message
    )
    assert "skipped: image_corrupt 6; first: " in message and ".tar:k" in message
