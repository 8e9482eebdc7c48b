"""`clippo render`: corpus readers, tar/parquet shards, job split, resume, bad rows, workers, CLI."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clippo.cli import main
from clippo.render import RenderConfig, UnifontRenderer
from clippo.render.corpus import (
    CorpusSource,
    ShardOptions,
    _render_rows,
    preview_texts,
    render_corpus,
)
from clippo.render.corpus_io import BadRow, CorpusWarning, coerce_text, open_reader
from clippo.render.preview import image_grid
from clippo.render.shards import KEY_DIGITS, _ustar_header

CFG = RenderConfig(image_size=32)
TEXTS = [
    "a photo of a cat",
    "Hello World",
    "",
    "the quick brown fox jumps over the lazy dog " * 3,
    "emoji \U0001f600 and ünïcödé",
    "tab\there and a\u2028line separator",
    "   ",
    "Last one",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def write_text(path: Path, texts, newline="\n", trailing=True) -> Path:
    data = newline.join(texts) + (newline if trailing else "")
    path.write_bytes(data.encode("utf-8"))
    return path


def read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def read_all_tars(out: Path, prefix="shard") -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for p in sorted(out.glob(f"{prefix}-*.tar")):
        for name, data in read_tar(p).items():
            assert name not in members, f"{name} written twice"
            members[name] = data
    return members


def key(row: int) -> str:
    return f"{row:0{KEY_DIGITS}d}"


def png_pixels(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.mode == "L"
    return np.asarray(img)


def run(source: Path | str, out: Path, cfg=CFG, **options) -> object:
    src = source if isinstance(source, CorpusSource) else CorpusSource(str(source))
    options.setdefault("rows_per_shard", 3)
    return render_corpus(src, cfg, ShardOptions(str(out), **options), progress=False)


# ---------------------------------------------------------------------------------------------
# inputs


def _expected_rows(reader_source: CorpusSource) -> list[tuple[int, object]]:
    return list(open_reader(reader_source).rows())


def test_text_file_lines_are_rows(tmp_path):
    p = write_text(tmp_path / "c.txt", TEXTS)
    rows = _expected_rows(CorpusSource(str(p)))
    assert rows == list(enumerate(TEXTS))  # empty lines stay rows; U+2028 does not split
    assert open_reader(CorpusSource(str(p))).num_rows == len(TEXTS)


@pytest.mark.parametrize("newline,trailing", [("\r\n", True), ("\n", False)])
def test_text_file_crlf_and_no_trailing_newline(tmp_path, newline, trailing):
    p = write_text(tmp_path / "c.txt", TEXTS, newline, trailing)
    assert [t for _, t in _expected_rows(CorpusSource(str(p)))] == TEXTS
    assert open_reader(CorpusSource(str(p))).num_rows == len(TEXTS)


def test_gzip_text_file(tmp_path):
    p = tmp_path / "c.txt.gz"
    p.write_bytes(gzip.compress(("\n".join(TEXTS) + "\n").encode()))
    reader = open_reader(CorpusSource(str(p)))
    assert reader.num_rows is None  # unknown without decompressing
    assert [t for _, t in reader.rows()] == TEXTS


def test_jsonl_csv_tsv_parquet_dataset_read_the_same_texts(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"id": i, "caption": t} for i, t in enumerate(TEXTS)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for name, sep in (("c.csv", ","), ("c.tsv", "\t")):
        import csv

        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter=sep)
            w.writerow(["id", "caption"])
            w.writerows([[r["id"], r["caption"]] for r in records])
    table = pa.table({"id": list(range(len(TEXTS))), "caption": TEXTS})
    pq.write_table(table, tmp_path / "c.parquet")
    # a folder of parquet files, small row groups: rows numbered across files and groups
    (tmp_path / "pq").mkdir()
    pq.write_table(table.slice(0, 5), tmp_path / "pq" / "part-0.parquet", row_group_size=2)
    pq.write_table(table.slice(5), tmp_path / "pq" / "part-1.parquet", row_group_size=2)
    datasets.Dataset.from_dict({"caption": TEXTS}).save_to_disk(str(tmp_path / "ds"))
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"caption": TEXTS}),
            "test": datasets.Dataset.from_dict({"caption": ["x"]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    sources = [
        CorpusSource(str(tmp_path / "c.jsonl"), text_column="caption"),
        CorpusSource(str(tmp_path / "c.csv"), text_column="caption"),
        CorpusSource(str(tmp_path / "c.tsv"), text_column="caption"),
        CorpusSource(str(tmp_path / "c.parquet"), text_column="caption"),
        CorpusSource(str(tmp_path / "pq"), text_column="caption"),
        CorpusSource(str(tmp_path / "ds"), text_column="caption"),
        CorpusSource(str(tmp_path / "dd"), text_column="caption", split="train"),
    ]
    for src in sources:
        assert _expected_rows(src) == list(enumerate(TEXTS)), src
        out = tmp_path / ("out_" + Path(src.path).name)
        summary = run(src, out)
        members = read_all_tars(out)
        assert summary.rows_written == len(TEXTS) and not summary.skipped_rows
        assert [members[f"{key(i)}.txt"].decode() for i in range(len(TEXTS))] == TEXTS


def test_file_level_errors_name_the_file(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("id,text\n1,a\n")
    with pytest.raises(ValueError, match=r"c\.csv.*'caption'.*\['id', 'text'\]"):
        open_reader(CorpusSource(str(p), text_column="caption"))
    with pytest.raises(ValueError, match="cannot tell the input format"):
        open_reader(CorpusSource(str(write_text(tmp_path / "c.weird", ["a"]))))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        open_reader(CorpusSource(str(tmp_path / "nope.txt")))
    with pytest.raises(ValueError, match="no columns"):
        open_reader(CorpusSource(str(write_text(tmp_path / "a.txt", ["a"])), text_column="x"))


def test_dataset_dict_needs_a_split(tmp_path):
    import datasets

    datasets.DatasetDict(
        {
            "a": datasets.Dataset.from_dict({"text": ["x"]}),
            "b": datasets.Dataset.from_dict({"text": ["y"]}),
        }
    ).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"split.*\['a', 'b'\]"):
        open_reader(CorpusSource(str(tmp_path / "dd")))
    assert [t for _, t in open_reader(CorpusSource(str(tmp_path / "dd"), split="b")).rows()] == [
        "y"
    ]


# ---------------------------------------------------------------------------------------------
# outputs


def test_tar_members_png_txt_json(tmp_path):
    p = write_text(tmp_path / "c.txt", TEXTS)
    cfg = RenderConfig(image_size=64, lower=False)
    summary = run(p, tmp_path / "out", cfg, rows_per_shard=3)
    shards = sorted((tmp_path / "out").glob("shard-*.tar"))
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert summary.shards_written == 3 and summary.rows == summary.rows_written == len(TEXTS)
    assert list(read_tar(shards[1])) == [
        f"{key(r)}.{ext}" for r in (3, 4, 5) for ext in ("png", "txt", "json")
    ]
    expected = UnifontRenderer.from_config(cfg).render_batch(TEXTS)
    assert (expected[..., 0] == expected[..., 2]).all()
    members = read_all_tars(tmp_path / "out")
    for row, text in enumerate(TEXTS):
        np.testing.assert_array_equal(png_pixels(members[f"{key(row)}.png"]), expected[row, ..., 0])
        assert members[f"{key(row)}.txt"].decode("utf-8") == text
        assert json.loads(members[f"{key(row)}.json"]) == {
            "row": row,
            "kind": "rendered-text",
            "renderer": "unifont",
            "render": cfg.to_dict(),
        }
    assert not list((tmp_path / "out").glob("*.tmp")) and not list(
        (tmp_path / "out").glob(".*.tmp")
    )


def test_tar_bytes_equal_tarfile_reference(tmp_path):
    """The hand-written ustar headers against the standard library writing the same members."""
    p = write_text(tmp_path / "c.txt", TEXTS[:4])
    run(p, tmp_path / "out", rows_per_shard=10)
    ours = (tmp_path / "out" / "shard-000000.tar").read_bytes()
    members = read_tar(tmp_path / "out" / "shard-000000.tar")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    assert ours == buf.getvalue()
    assert len(_ustar_header("x.png", 5)) == 512
    with pytest.raises(ValueError, match="too long"):
        _ustar_header("x" * 101, 1)


def test_parquet_output(tmp_path):
    import pyarrow.parquet as pq

    p = write_text(tmp_path / "c.txt", TEXTS)
    summary = run(p, tmp_path / "out", output_format="parquet", rows_per_shard=5)
    files = sorted((tmp_path / "out").glob("shard-*.parquet"))
    assert [f.name for f in files] == ["shard-000000.parquet", "shard-000001.parquet"]
    assert summary.rows_written == len(TEXTS)
    table = pq.read_table(files[0])
    assert table.column_names == ["row", "text", "image"]
    meta = json.loads(table.schema.metadata[b"clippo"])
    assert meta == {"kind": "rendered-text", "renderer": "unifont", "render": CFG.to_dict()}
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    expected = UnifontRenderer.from_config(CFG).render_batch(TEXTS)[..., 0]
    assert [r["row"] for r in rows] == list(range(len(TEXTS)))
    assert [r["text"] for r in rows] == TEXTS
    for r in rows:
        np.testing.assert_array_equal(png_pixels(r["image"]), expected[r["row"]])


def test_empty_corpus_writes_nothing(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    summary = run(p, tmp_path / "out")
    assert summary.rows == summary.shards_written == 0
    assert not list((tmp_path / "out").glob("shard-0*"))


# ---------------------------------------------------------------------------------------------
# job split, resume, workers


def test_two_jobs_cover_all_rows_exactly_once(tmp_path):
    texts = [f"text number {i}" for i in range(23)]
    p = write_text(tmp_path / "c.txt", texts)
    run(p, tmp_path / "single", rows_per_shard=4)
    s0 = run(p, tmp_path / "split", rows_per_shard=4, job_index=0, num_jobs=2)
    s1 = run(p, tmp_path / "split", rows_per_shard=4, job_index=1, num_jobs=2)
    names0 = {f.name for f in (tmp_path / "split").glob("shard-*.tar")}
    assert s0.shards_written == 3 and s1.shards_written == 3  # shards 0,2,4 and 1,3,5
    assert s0.rows + s1.rows == len(texts) and s0.rows == 4 + 4 + 4 and s1.rows == 4 + 4 + 3
    members = read_all_tars(tmp_path / "split")  # asserts no key twice
    assert sorted(k for k in members if k.endswith(".txt")) == [f"{key(i)}.txt" for i in range(23)]
    for name in names0:
        assert (tmp_path / "split" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    assert len(names0) == 6
    assert ShardOptions("o", job_index=1, num_jobs=2).summary_path().name == (
        "shard-summary-job000001-of-000002.json"
    )


def test_resume_skips_finished_and_rewrites_partial(tmp_path, capsys):
    texts = [f"row {i}" for i in range(10)]
    p = write_text(tmp_path / "c.txt", texts)
    out = tmp_path / "out"
    run(p, out, rows_per_shard=3)
    shards = sorted(out.glob("shard-0*.tar"))
    original = [s.read_bytes() for s in shards]
    # a crash mid-shard: the last shard only exists as a partial temporary file
    shards[3].unlink()
    (out / ".shard-000003.tar.k1l2m3n4.tmp").write_bytes(b"partial garbage")
    # a finished, verified shard is never rewritten: same inode and mtime afterwards
    before = shards[1].stat()
    summary = run(p, out, rows_per_shard=3)
    assert summary.shards_skipped == 3 and summary.shards_written == 1
    assert summary.rows == summary.rows_written == 1
    assert [s.read_bytes() for s in shards] == original
    after = shards[1].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert "rendering it again" not in capsys.readouterr().err


def test_resume_refuses_other_settings(tmp_path):
    p = write_text(tmp_path / "c.txt", ["a", "b"])
    run(p, tmp_path / "out")
    with pytest.raises(ValueError, match="other settings.*render"):
        run(p, tmp_path / "out", RenderConfig(image_size=48))
    with pytest.raises(ValueError, match="rows_per_shard"):
        run(p, tmp_path / "out", rows_per_shard=5)


@pytest.mark.slow  # worker processes
def test_two_workers_byte_identical_to_one(tmp_path):
    texts = [f"Sentence {i}: " + "word " * (i % 17) for i in range(40)]
    p = write_text(tmp_path / "c.txt", texts)
    for fmt, suffix in (("tar", ".tar"), ("parquet", ".parquet")):
        one = run(p, tmp_path / f"w1{fmt}", rows_per_shard=6, output_format=fmt)
        two = run(p, tmp_path / f"w2{fmt}", rows_per_shard=6, output_format=fmt, num_workers=2)
        assert one.shards_written == two.shards_written == 7
        assert two.rows_written == len(texts)
        a = sorted((tmp_path / f"w1{fmt}").glob("shard-0*" + suffix))
        b = sorted((tmp_path / f"w2{fmt}").glob("shard-0*" + suffix))
        assert [x.name for x in a] == [x.name for x in b] and len(a) == 7
        for x, y in zip(a, b):
            assert x.read_bytes() == y.read_bytes(), x.name


# ---------------------------------------------------------------------------------------------
# bad rows


def test_bad_rows_are_skipped_and_reported(tmp_path):
    lines = [
        json.dumps({"text": "good 0"}).encode(),
        json.dumps({"text": None}).encode(),
        json.dumps({"text": 17}).encode(),
        json.dumps({"other": "x"}).encode(),
        b"{not json",
        json.dumps(["a", "list"]).encode(),
        b'{"text": "bad \xff byte"}',
        b"",
        json.dumps({"text": "good 8"}).encode(),
        json.dumps({"text": "lone \ud800 surrogate"}).encode(),
    ]
    p = tmp_path / "c.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    summary = run(p, tmp_path / "out", rows_per_shard=4, num_workers=1)
    reasons = {s.row: s.reason for s in summary.skipped_rows}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7]
    assert reasons[1] == "null value"
    assert reasons[2] == "not a string (int)"
    assert reasons[3] == "missing column 'text'"
    assert reasons[4].startswith("invalid JSON")
    assert reasons[5] == "not a JSON object (list)"
    assert reasons[6].startswith("undecodable UTF-8")
    assert reasons[7] == "empty line"
    assert summary.rows == 10 and summary.rows_written == 3
    members = read_all_tars(tmp_path / "out")
    assert {k.split(".")[0] for k in members} == {key(0), key(8), key(9)}  # rows keep their numbers
    assert members[f"{key(9)}.txt"].decode() == "lone \ufffd surrogate"
    table = summary.format_table()
    assert "rows skipped         7" in table and "missing column 'text'" in table


def test_bad_rows_text_csv_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "c.txt").write_bytes(b"ok\nbad \xc3\x28\nok too\n")
    s = run(tmp_path / "c.txt", tmp_path / "o1")
    assert [(r.row, r.reason) for r in s.skipped_rows] == [(1, "undecodable UTF-8 at byte 4")]
    (tmp_path / "c.csv").write_bytes(b'id,text\n0,fine\n1\n2,"multi\nline"\n3,bad \xff\n')
    with pytest.warns(CorpusWarning, match=r"c\.csv: lines 4-5 are one record"):
        s = run(CorpusSource(str(tmp_path / "c.csv")), tmp_path / "o2")
    assert [(r.row, r.reason) for r in s.skipped_rows] == [
        (1, "missing column 'text' (1 fields)"),
        (3, "undecodable UTF-8"),
    ]
    assert read_all_tars(tmp_path / "o2")[f"{key(2)}.txt"] == b"multi\nline"
    pq.write_table(pa.table({"text": ["a", None, "c"]}), tmp_path / "c.parquet")
    s = run(tmp_path / "c.parquet", tmp_path / "o3")
    assert [(r.row, r.reason) for r in s.skipped_rows] == [(1, "null value")]
    pq.write_table(
        pa.table({"text": pa.array([b"x", b"\xff"], pa.binary())}), tmp_path / "b.parquet"
    )
    s = run(tmp_path / "b.parquet", tmp_path / "o4")
    assert [(r.row, r.reason) for r in s.skipped_rows] == [(1, "undecodable UTF-8 at byte 0")]


def test_coerce_text():
    assert coerce_text("a") == "a"
    assert coerce_text(b"caf\xc3\xa9") == "café"
    assert coerce_text(None) == BadRow("null value")
    assert coerce_text(1.5) == BadRow("not a string (float)")
    assert coerce_text("x\udcffy") == "x\ufffdy"


def test_render_failure_loses_only_that_row():
    class Fragile(UnifontRenderer):
        def render_batch(self, texts):
            if "boom" in texts:
                raise RuntimeError("cannot draw")
            return super().render_batch(texts)

    out = _render_rows(Fragile(image_size=32), ["a", "boom", "c"])
    real = UnifontRenderer(image_size=32).render_batch(["a", "c"])[..., 0]
    np.testing.assert_array_equal(out[0], real[0])
    np.testing.assert_array_equal(out[2], real[1])
    assert out[1] == "render error: RuntimeError: cannot draw"


# ---------------------------------------------------------------------------------------------
# preview, CLI, imports


def test_image_grid_layout():
    imgs = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3) + 1
    grid = image_grid(imgs, columns=2, gap=1, gap_value=0)
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1)
    for i in range(5):
        r, c = divmod(i, 2)
        np.testing.assert_array_equal(grid[1 + 3 * r : 3 + 3 * r, 1 + 4 * c : 4 + 4 * c], imgs[i])
    assert (grid[7:9, 5:8] == 0).all()  # the empty sixth cell
    assert (grid[0] == 0).all() and (grid[:, 0] == 0).all()


def test_cli_render_preview_and_summary(tmp_path, capsys):
    p = write_text(tmp_path / "c.txt", TEXTS)
    out = tmp_path / "out"
    rc = main(
        [
            "render",
            str(p),
            str(out),
            "--rows-per-shard",
            "4",
            "--image-size",
            "48",
            "--no-lower",
            "--monospace",
            "--max-chars",
            "20",
            "--preview",
            "5",
            str(tmp_path / "prev.png"),
            "--no-progress",
        ]
    )
    assert rc == 0
    cfg = RenderConfig(image_size=48, lower=False, monospace=True, max_chars=20)
    members = read_all_tars(out)
    assert json.loads(members[f"{key(0)}.json"])["render"] == cfg.to_dict()
    expected = UnifontRenderer.from_config(cfg).render_batch(TEXTS)[..., 0]
    np.testing.assert_array_equal(png_pixels(members[f"{key(1)}.png"]), expected[1])
    summary = json.loads((out / "shard-summary.json").read_text())
    assert summary["rows_written"] == len(TEXTS) and summary["shards_written"] == 2
    assert summary["render"] == cfg.to_dict() and summary["skipped_rows"] == []
    printed = capsys.readouterr().out
    assert "rows written         8" in printed and "preview of 5 texts" in printed
    grid = np.asarray(Image.open(tmp_path / "prev.png"))
    np.testing.assert_array_equal(grid, image_grid(expected[:5]))
    assert preview_texts(CorpusSource(str(p)), 3) == TEXTS[:3]


def test_cli_options_mirror_render_config(tmp_path):
    import dataclasses

    from clippo.cli import build_parser

    args = build_parser().parse_args(["render", "in.txt", "out"])
    assert RenderConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(RenderConfig)}
    ) == (RenderConfig())
    with pytest.raises(SystemExit) as info:  # neither OUTPUT_DIR nor --preview: a usage error
        main(["render", "in.txt"])
    assert info.value.code == 2


def test_cli_reports_bad_settings_without_traceback(tmp_path, capsys):
    p = write_text(tmp_path / "c.txt", ["a"])

    def error_line() -> str:
        err = capsys.readouterr().err
        assert err.startswith("clippo render: error: ") and len(err.splitlines()) == 1, err
        return err

    assert main(["render", str(p), str(tmp_path / "o"), "--image-size", "30"]) == 1
    assert "multiple of 16" in error_line()
    assert (
        main(["render", str(p), str(tmp_path / "o"), "--shard-index", "2", "--num-shards", "2"])
        == 1
    )
    assert "job_index" in error_line()
    assert main(["render", str(tmp_path / "missing.txt"), str(tmp_path / "o")]) == 1
    assert "missing.txt" in error_line()


def test_cli_job_split_flags(tmp_path):
    p = write_text(tmp_path / "c.txt", [f"t{i}" for i in range(9)])
    for i in range(3):
        assert (
            main(
                [
                    "render",
                    str(p),
                    str(tmp_path / "o"),
                    "--rows-per-shard",
                    "2",
                    "--image-size",
                    "32",
                    "--shard-index",
                    str(i),
                    "--num-shards",
                    "3",
                    "--format",
                    "parquet",
                    "--no-progress",
                ]
            )
            == 0
        )
    assert len(list((tmp_path / "o").glob("shard-0*.parquet"))) == 5
    assert len(list((tmp_path / "o").glob("shard-summary-job*-of-000003.json"))) == 3


def test_import_stays_light():
    code = (
        "import sys, clippo.render.corpus, clippo.render.preview, clippo.commands.render\n"
        "heavy = [m for m in ('torch', 'pyarrow', 'datasets', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
