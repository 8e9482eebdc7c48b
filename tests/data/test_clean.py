"""`clippo clean` (clippo.data.clean): ALIGN's rules on hand-made shards, the two-phase counts,
resume, the near-duplicate rule and the command."""

from __future__ import annotations

import argparse
import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clippo.commands import clean as clean_command
from clippo.data import clean as C
from clippo.data.image_text import CSVImageText, ParquetImageText, TarShards

from .conftest import encode


def noise_png(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def smooth(seed: int, size: int = 256) -> Image.Image:
    """A smooth picture (waves and blobs): what perceptual hashes are made for."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for c in range(3):
        fx, fy, px, py = rng.uniform(1, 5), rng.uniform(1, 5), *rng.uniform(0, 6, 2)
        img[..., c] = 128 + 70 * np.sin(2 * np.pi * fx * x + px) * np.cos(2 * np.pi * fy * y + py)
        for _ in range(3):
            cx, cy, r = *rng.uniform(0.1, 0.9, 2), rng.uniform(0.05, 0.2)
            img[..., c] += rng.uniform(-60, 60) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / r**2)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_tar(path: Path, rows: list[tuple[str, bytes | None, str | None]]) -> Path:
    """webdataset shard: KEY.png (when bytes) + KEY.txt (when text) + KEY.json (an extra member
    that the output must keep)."""
    with tarfile.open(path, "w") as tar:
        for key, image, caption in rows:
            members = {"json": json.dumps({"key": key}).encode()}
            if image is not None:
                members["png"] = image
            if caption is not None:
                members["txt"] = caption.encode()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def permissive(**rules: object) -> C.CleanConfig:
    """Every rule off except those given (each test switches on the one it is about)."""
    base: dict[str, object] = dict(
        min_side=0,
        max_aspect_ratio=1e9,
        max_alt_texts_per_image=10**9,
        max_images_per_alt_text=10**9,
        min_unigrams=0,
        max_unigrams=10**9,
        min_token_count=0,
    )
    return C.CleanConfig(**{**base, **rules})  # type: ignore[arg-type]


def kept_keys(out: Path, shard_name: str) -> list[str]:
    with tarfile.open(out / shard_name) as tar:
        return sorted({m.name.split(".")[0] for m in tar})


def run(tmp_path: Path, rows: list, config: C.CleanConfig) -> tuple[C.CleanReport, list[str]]:
    shard = write_tar(tmp_path / "in.tar", rows)
    report, _ = C.clean([shard], tmp_path / "out", config)
    assert report.input == len(rows)
    assert sum(report.removed.values()) == report.input - report.kept
    keys = kept_keys(tmp_path / "out", "in.tar")
    assert len(keys) == report.kept
    return report, keys


def test_tokens_by_hand() -> None:
    assert C.unigrams("A cat, on-the MAT!") == ["a", "cat", "on", "the", "mat"]
    assert C.tokens(["a", "b", "c"]) == ["a", "b", "c", "a b", "b c"]
    assert C.normalize_text("  One\tCAT  ") == "one cat"
    got = C.hamming(np.asarray([0b1011, 0, 2**64 - 1], np.uint64), 0b0001)
    assert got.tolist() == [2, 1, 63]


def test_min_side(tmp_path: Path) -> None:
    rows = [
        ("a", noise_png(199, 300, 0), "x"),
        ("b", noise_png(200, 200, 1), "x"),
        ("c", noise_png(300, 199, 2), "x"),
    ]
    report, keys = run(tmp_path, rows, permissive(min_side=200))
    assert keys == ["b"]
    assert report.removed["min_side"] == 2
    assert [e["key"] for e in report.examples["min_side"]] == ["a", "c"]


def test_aspect_ratio(tmp_path: Path) -> None:
    rows = [
        ("a", noise_png(300, 100, 0), "x"),  # exactly 3: kept
        ("b", noise_png(301, 100, 1), "x"),
        ("c", noise_png(100, 301, 2), "x"),
    ]
    report, keys = run(tmp_path, rows, permissive(max_aspect_ratio=3.0))
    assert keys == ["a"]
    assert report.removed["aspect_ratio"] == 2


def test_image_with_too_many_alt_texts(tmp_path: Path) -> None:
    x, y = noise_png(8, 8, 0), noise_png(8, 8, 1)
    rows = [
        ("x1", x, "one cat"),
        ("x2", x, "two cat"),
        ("x3", x, "three cat"),  # x has 3 distinct alt-texts > 2: all its rows go
        ("y1", y, "one cat"),
        ("y2", y, "One   CAT"),  # the same alt-text as y1 once normalised
        ("y3", y, "two cat"),  # y has 2: kept
    ]
    report, keys = run(tmp_path, rows, permissive(max_alt_texts_per_image=2))
    assert keys == ["y1", "y2", "y3"]
    assert report.removed["image_alt_texts"] == 3


def test_alt_text_shared_by_too_many_images(tmp_path: Path) -> None:
    imgs = [noise_png(8, 8, s) for s in range(5)]
    rows = [
        ("s1", imgs[0], "shared words"),
        ("s2", imgs[1], "Shared words"),
        ("s3", imgs[2], "shared  words"),  # 3 distinct images > 2
        ("t1", imgs[3], "twice words"),
        ("t2", imgs[4], "twice words"),
        ("t3", imgs[4], "twice words"),  # the same image again: still 2 images
    ]
    report, keys = run(tmp_path, rows, permissive(max_images_per_alt_text=2))
    assert keys == ["t1", "t2", "t3"]
    assert report.removed["alt_text_images"] == 3


def test_unigram_bounds(tmp_path: Path) -> None:
    words = [f"w{i}" for i in range(21)]
    rows = [
        ("a", noise_png(8, 8, 0), "two words"),
        ("b", noise_png(8, 8, 1), "three words here"),
        ("c", noise_png(8, 8, 2), " ".join(words[:20])),
        ("d", noise_png(8, 8, 3), " ".join(words)),
        ("e", noise_png(8, 8, 4), "a-b c"),  # three \w+ runs
    ]
    report, keys = run(tmp_path, rows, permissive(min_unigrams=3, max_unigrams=20))
    assert keys == ["b", "c", "e"]
    assert report.removed["unigrams"] == 2


def test_rare_unigram_or_bigram(tmp_path: Path) -> None:
    rows = [
        ("a", noise_png(8, 8, 0), "red bird sings"),
        ("b", noise_png(8, 8, 1), "red bird sings"),
        ("c", noise_png(8, 8, 2), "red bird flies"),  # "flies", "bird flies": once
        ("d", noise_png(8, 8, 3), "sings red bird"),  # every unigram 3+ times; "sings red" once
    ]
    report, keys = run(tmp_path, rows, permissive(min_token_count=2))
    assert keys == ["a", "b"]
    assert report.removed["rare_token"] == 2
    assert "flies" in report.examples["rare_token"][0]["why"]
    assert "sings red" in report.examples["rare_token"][1]["why"]
    # a minimum of 1 is off
    (tmp_path / "off").mkdir()
    _, keys = run(tmp_path / "off", rows, permissive(min_token_count=1))
    assert keys == ["a", "b", "c", "d"]


def test_unreadable_records(tmp_path: Path) -> None:
    rows = [
        ("a", None, "no image here"),
        ("b", noise_png(8, 8, 0), None),
        ("c", noise_png(8, 8, 1), "   "),
        ("d", b"not an image at all", "bad bytes"),
        ("e", noise_png(8, 8, 2), "fine"),
    ]
    report, keys = run(tmp_path, rows, permissive())
    assert keys == ["e"]
    assert report.removed["unreadable"] == 4


def test_rules_together_add_up_and_charge_the_first_rule(tmp_path: Path) -> None:
    # defaults (ALIGN's) except the token minimum, too high for six rows
    rows = [
        ("a", noise_png(100, 100, 0), "a"),  # small AND one unigram: charged to min_side
        ("b", noise_png(700, 210, 1), "a b"),  # aspect AND two unigrams: aspect_ratio
        ("c", noise_png(210, 210, 2), "a b"),  # unigrams
        ("d", noise_png(210, 210, 3), "a red bird"),
        ("e", None, "x"),
    ]
    report, keys = run(tmp_path, rows, C.CleanConfig(min_token_count=1))
    assert keys == ["d"]
    assert report.removed == {
        **dict.fromkeys(C.RULES, 0),
        "unreadable": 1,
        "min_side": 1,
        "aspect_ratio": 1,
        "unigrams": 1,
    }


def corpus(n: int, seed: int) -> list[tuple[str, bytes, str]]:
    """Random rows over a small vocabulary, with images and alt-texts that repeat."""
    rng = np.random.default_rng(seed)
    vocab = [f"v{i}" for i in range(12)] + ["zz" + str(i) for i in range(40)]
    images = [noise_png(8, 8, s) for s in range(n // 3)]
    captions = [
        " ".join(rng.choice(vocab[:12] if rng.random() < 0.7 else vocab, rng.integers(1, 8)))
        for _ in range(n // 2)
    ]
    return [
        (f"k{i:04d}", images[rng.integers(len(images))], captions[rng.integers(len(captions))])
        for i in range(n)
    ]


SPLIT_RULES = dict(
    min_side=0,
    max_alt_texts_per_image=2,
    max_images_per_alt_text=2,
    min_unigrams=2,
    max_unigrams=6,
    min_token_count=3,
)


def test_splitting_over_shards_gives_the_one_pass_result(tmp_path: Path) -> None:
    rows = corpus(90, 0)
    config = C.CleanConfig(**SPLIT_RULES)  # type: ignore[arg-type]
    one = write_tar(tmp_path / "one.tar", rows)
    report1, _ = C.clean([one], tmp_path / "out1", config)
    parts = [write_tar(tmp_path / f"part{i}.tar", rows[i::3]) for i in range(3)]
    report3, _ = C.clean(parts, tmp_path / "out3", config)
    assert report1.removed == report3.removed
    assert (report1.input, report1.kept) == (report3.input, report3.kept) == (90, report1.kept)
    split = sorted(k for i in range(3) for k in kept_keys(tmp_path / "out3", f"part{i}.tar"))
    assert kept_keys(tmp_path / "out1", "one.tar") == split
    # every rule fired on this corpus (so the equality above covers each of them)
    for rule in ("image_alt_texts", "alt_text_images", "unigrams", "rare_token"):
        assert report1.removed[rule] > 0, rule
    assert sum(report1.removed.values()) == 90 - report1.kept


def test_output_shards_read_back(tmp_path: Path) -> None:
    rows = corpus(30, 1)
    config = C.CleanConfig(**SPLIT_RULES)  # type: ignore[arg-type]
    tar = write_tar(tmp_path / "in.tar", rows)
    report, _ = C.clean([tar], tmp_path / "out", config)
    reader = TarShards(str(tmp_path / "out" / "in.tar"), shuffle=False).read_unit(0)
    assert len(reader) == report.kept
    with tarfile.open(tmp_path / "out" / "in.tar") as t:
        names = t.getnames()
    assert all(n.endswith((".png", ".txt", ".json")) for n in names)
    assert len(names) == 3 * report.kept  # the extra .json member is kept too

    # parquet (image bytes) and CSV (relative paths, rewritten for the new folder)
    pq.write_table(
        pa.table(
            {
                "image": [r[1] for r in rows],
                "caption": [r[2] for r in rows],
                "extra": list(range(30)),
            }
        ),
        tmp_path / "in.parquet",
        row_group_size=7,
    )
    (tmp_path / "imgs").mkdir()
    with open(tmp_path / "in.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["caption", "image"])
        for key, image, caption in rows:
            (tmp_path / "imgs" / f"{key}.png").write_bytes(image)
            w.writerow([caption, f"imgs/{key}.png"])
    for name in ("in.parquet", "in.csv"):
        rep, _ = C.clean([tmp_path / name], tmp_path / f"out_{name}", config)
        assert (rep.removed, rep.kept) == (report.removed, report.kept), name
    table = pq.read_table(tmp_path / "out_in.parquet" / "in.parquet")
    assert table.column_names == ["image", "caption", "extra"]
    kept_rows = table.column("extra").to_pylist()
    assert [f"k{i:04d}" for i in kept_rows] == kept_keys(tmp_path / "out", "in.tar")
    out_pq = ParquetImageText(str(tmp_path / "out_in.parquet" / "in.parquet"))
    assert sum(out_pq.unit_length(u) for u in range(out_pq.num_units())) == report.kept
    source = CSVImageText(str(tmp_path / "out_in.csv" / "in.csv"), image_size=8)
    assert len(source) == report.kept
    assert source.load(0, 0).image.shape == (8, 8, 3)  # the rewritten path finds the image


def test_count_merge_filter_resume(tmp_path: Path) -> None:
    rows = corpus(40, 2)
    parts = [write_tar(tmp_path / f"p{i}.tar", rows[i::2]) for i in range(2)]
    config = C.CleanConfig(**SPLIT_RULES)  # type: ignore[arg-type]
    counts = tmp_path / "counts"
    assert [C.count_shard(p, counts, config)[1] for p in parts] == [True, True]
    assert [C.count_shard(p, counts, config)[1] for p in parts] == [False, False]
    merged = C.merge_counts(counts)
    assert (counts / C.MERGED_FILE).is_file()
    report, skipped = C.filter_shards(parts, merged, tmp_path / "out", config)
    assert skipped == 0
    out0 = tmp_path / "out" / "p0.tar"
    stamp = out0.stat().st_mtime_ns
    again, skipped = C.filter_shards(parts, merged, tmp_path / "out", config)
    assert skipped == 2 and again.to_dict() == report.to_dict()
    assert out0.stat().st_mtime_ns == stamp
    (tmp_path / "out" / "p1.tar").unlink()  # an interrupted shard is redone
    again, skipped = C.filter_shards(parts, merged, tmp_path / "out", config)
    assert skipped == 1 and again.to_dict() == report.to_dict()
    total = json.loads((tmp_path / "out" / C.REPORT_FILE).read_text())
    assert total["kept"] == report.kept and total["removed"] == report.removed
    with pytest.raises(ValueError, match="other options"):
        C.filter_shards(parts, merged, tmp_path / "out", C.CleanConfig())
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_near_duplicates_of_the_eval_set(tmp_path: Path) -> None:
    original, unrelated = smooth(0), smooth(1)
    evals = tmp_path / "eval"
    evals.mkdir()
    (evals / "e0.png").write_bytes(encode(original))
    copy = original.resize((300, 300), Image.Resampling.BICUBIC)
    jpeg = encode(copy, "JPEG", quality=60)
    reread = Image.open(io.BytesIO(jpeg))
    near = int(C.hamming(np.asarray([C.phash(original)], np.uint64), C.phash(reread))[0])
    far = int(C.hamming(np.asarray([C.phash(original)], np.uint64), C.phash(unrelated))[0])
    assert near <= 4 < 20 <= far
    rows = [
        ("exact", encode(original), "x"),
        ("reencoded", jpeg, "x"),
        ("other", encode(unrelated.resize((300, 300))), "x"),
    ]
    report, keys = run(tmp_path, rows, permissive(eval_images=str(evals)))
    assert keys == ["other"]
    assert report.removed["eval_duplicate"] == 2
    whys = [e["why"] for e in report.examples["eval_duplicate"]]
    assert whys[0].startswith("exact") and whys[1].startswith("near")


def test_bad_input_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="unknown shard kind"):
        C.check_shards([bad])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "s.counts.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="s.counts.npz"):
        C.merge_counts(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="merged"):
        C.MergedCounts.load(tmp_path / "nothing.npz")
    damaged = tmp_path / "d.tar"
    write_tar(damaged, [("k", noise_png(8, 8, 0), "a caption")])
    damaged.write_bytes(damaged.read_bytes()[:700])  # cut inside the first member
    with pytest.raises(ValueError, match="d.tar"):
        list(C.read_records(damaged))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    s1, s2 = write_tar(a / "s.tar", []), write_tar(b / "s.tar", [])
    with pytest.raises(ValueError, match="one file name"):
        C.check_shards([s1, s2])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clippo")
    clean_command.register(p.add_subparsers(dest="command", required=True))
    return p


def test_defaults_are_aligns_and_the_commands():
    config = C.CleanConfig()
    assert (config.min_side, config.max_aspect_ratio) == (200, 3.0)
    assert (config.max_alt_texts_per_image, config.max_images_per_alt_text) == (1000, 10)
    assert (config.min_unigrams, config.max_unigrams, config.eval_images) == (3, 20, None)
    for phase in ("run", "filter"):
        argv = ["clean", phase, "x.tar", "--out", "o"] + (
            ["--counts", "m"] if phase == "filter" else []
        )
        assert clean_command._config(parser().parse_args(argv)) == config


def test_command_phases_equal_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = corpus(90, 0)
    parts = [str(write_tar(tmp_path / f"p{i}.tar", rows[i::2])) for i in range(2)]
    rules = [
        "--min-side",
        "0",
        "--max-alt-texts-per-image",
        "2",
        "--max-images-per-alt-text",
        "2",
        "--min-unigrams",
        "2",
        "--max-unigrams",
        "6",
        "--min-token-count",
        "3",
    ]
    p = parser()
    args = p.parse_args(
        ["clean", "run", str(tmp_path / "p*.tar"), "--out", str(tmp_path / "a"), *rules]
    )
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "rare_token" in table and "kept" in table
    for argv in (
        ["clean", "count", *parts, "--out", str(tmp_path / "counts")],
        ["clean", "merge", str(tmp_path / "counts")],
        [
            "clean",
            "filter",
            *parts,
            "--counts",
            str(tmp_path / "counts" / "merged.npz"),
            "--out",
            str(tmp_path / "b"),
            *rules,
        ],
    ):
        args = p.parse_args(argv)
        assert args.func(args) == 0
    a = json.loads((tmp_path / "a" / C.REPORT_FILE).read_text())
    b = json.loads((tmp_path / "b" / C.REPORT_FILE).read_text())
    assert a["removed"] == b["removed"] and a["kept"] == b["kept"] > 0
    for name in ("p0.tar", "p1.tar"):
        assert kept_keys(tmp_path / "a", name) == kept_keys(tmp_path / "b", name)
