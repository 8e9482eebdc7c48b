"""`clippo embed --layout clip-retrieval`: the folder clip-retrieval's inference writes (part
names and numbering, float16 unit vectors, metadata parquet per part), read back by faiss
directly and by `clippo index`."""

from __future__ import annotations

import io
import tarfile

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from clippo.cli import main as cli_main
from clippo.data.image_text import TarShards
from clippo.embed import (
    embed_clip_retrieval,
    embed_images,
    embed_texts,
    part_label,
    read_clip_retrieval,
)
from clippo.search import Index, normalize


@pytest.fixture(scope="module")
def imgs(random_pngs):
    """A folder of 7 distinct random 32 px images in two sub-folders: a/0-3.png, b/4-6.png."""
    return random_pngs([f"{'a' if i < 4 else 'b'}/{i}.png" for i in range(7)], size=32, seed=0)


def test_part_numbering_is_clip_retrievals():
    # str(part).zfill(int(log10(part_count)) + 1)
    assert [part_label(0, 1), part_label(2, 9), part_label(3, 10), part_label(99, 100)] == [
        "0",
        "2",
        "03",
        "099",
    ]


def test_image_folder_layout_read_by_faiss_and_clippo_index(tiny_saved_model, imgs, tmp_path):
    model = tiny_saved_model.model
    out = tmp_path / "emb"
    run = embed_clip_retrieval(model, out, images=imgs, part_size=3, num_workers=0, progress=False)
    assert (run.parts, run.written, run.rows) == (3, 3, 7)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "img_emb/img_emb_0.npy",
        "img_emb/img_emb_1.npy",
        "img_emb/img_emb_2.npy",
        "metadata/metadata_0.parquet",
        "metadata/metadata_1.parquet",
        "metadata/metadata_2.parquet",
    ]
    parts = [np.load(out / "img_emb" / f"img_emb_{i}.npy") for i in range(3)]
    assert [p.shape[0] for p in parts] == [3, 3, 1]
    assert all(p.dtype == np.float16 for p in parts)
    x = np.concatenate(parts).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=2e-3)
    # the vectors are the model's, normalised (float16 precision)
    files = sorted(imgs.rglob("*.png"))
    ref = embed_images(model, files, num_workers=0, progress=False).vectors
    np.testing.assert_allclose(x, normalize(ref), atol=2e-3)
    paths = [
        v
        for i in range(3)
        for v in pq.read_table(out / "metadata" / f"metadata_{i}.parquet")
        .column("image_path")
        .to_pylist()
    ]
    assert paths == [str(imgs / f.relative_to(imgs)) for f in files]
    # faiss over the parts as clip-retrieval users load them: each vector finds itself
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, ids = index.search(x, 1)
    assert ids[:, 0].tolist() == list(range(7))
    # our reader and `clippo index`
    vectors, meta = read_clip_retrieval(out)
    np.testing.assert_array_equal(vectors, x)
    assert meta == {"image_path": paths}
    assert cli_main(["index", str(out), "--out", str(tmp_path / "ix")]) == 0
    loaded = Index.load(tmp_path / "ix")
    _, hits = loaded.query(ref[4], 1)
    assert loaded.rows(hits[0]) == [{"image_path": paths[4]}]
    with pytest.raises(FileNotFoundError, match="text_emb_0.npy"):
        read_clip_retrieval(out, "text")


def test_resume_skips_written_parts(tiny_saved_model, imgs, tmp_path):
    model = tiny_saved_model.model
    out = tmp_path / "emb"
    embed_clip_retrieval(model, out, images=imgs, part_size=3, num_workers=0, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "metadata" / "metadata_1.parquet").unlink()  # part 1 interrupted before its metadata
    run = embed_clip_retrieval(model, out, images=imgs, part_size=3, num_workers=0, progress=False)
    assert (run.written, run.resumed, run.rows) == (1, 2, 3)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_texts_and_pairs(tiny_saved_model, imgs, tmp_path):
    model = tiny_saved_model.model
    texts = tmp_path / "t.txt"
    texts.write_text("a cat\na dog\na bird\n")
    run = embed_clip_retrieval(model, tmp_path / "te", texts=texts, part_size=2, progress=False)
    assert run.rows == 3
    vectors, meta = read_clip_retrieval(tmp_path / "te", "text")
    assert meta == {"caption": ["a cat", "a dog", "a bird"]}
    ref = embed_texts(model, ["a cat", "a dog", "a bird"], progress=False).vectors
    np.testing.assert_allclose(vectors, normalize(ref), atol=2e-3)

    # a webdataset shard with one bad sample: both towers, key as image_path
    shard = tmp_path / "s.tar"
    files = sorted(imgs.rglob("*.png"))[:3]
    with tarfile.open(shard, "w") as tar:
        for i, f in enumerate(files):
            members = {"png": f.read_bytes(), "txt": f"photo {i}".encode()}
            if i == 1:
                members["png"] = b"broken"
            for ext, data in members.items():
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    source = TarShards(str(shard), image_size=32, shuffle=False)
    run = embed_clip_retrieval(model, tmp_path / "pe", pairs=source, part_size=2, progress=False)
    assert (run.parts, run.rows, len(run.skipped)) == (2, 2, 1)
    img, meta = read_clip_retrieval(tmp_path / "pe", "image")
    txt, meta_t = read_clip_retrieval(tmp_path / "pe", "text")
    assert meta == meta_t == {"image_path": ["k0", "k2"], "caption": ["photo 0", "photo 2"]}
    ref_img = embed_images(model, [files[0], files[2]], num_workers=0, progress=False).vectors
    np.testing.assert_allclose(img, normalize(ref_img), atol=2e-3)
    assert txt.shape == img.shape
    # `clippo index` beyond --exact-up-to measures recall with the captions as held-out queries
    ix = tmp_path / "ix"
    argv = ["index", str(tmp_path / "pe"), "--out", str(ix), "--exact-up-to", "1"]
    assert cli_main(argv) == 0
    index = Index.load(ix)
    assert index.kind == "hnsw" and index.meta["recall_queries"] == "held-out (2)"
    assert index.metadata == meta


def test_embed_command_clip_retrieval(tiny_saved_model, imgs, tmp_path, capsys):
    model_dir = tiny_saved_model.path
    out = tmp_path / "emb"
    images = ["embed", "--model", str(model_dir), "--images", str(imgs)]
    layout = ["--layout", "clip-retrieval", "--part-size", "5", "--num-workers", "0"]
    assert cli_main([*images, *layout, "--out", str(out)]) == 0
    assert (out / "img_emb" / "img_emb_1.npy").is_file()
    assert "2 parts (2 written, 0 already there)" in capsys.readouterr().err
    argv = [*images, "--out", str(tmp_path / "x.txt")]
    with pytest.raises(SystemExit):  # a usage error, as before the layouts
        cli_main(argv)
    assert "must end in .npy or .parquet" in capsys.readouterr().err
    argv[-1] = str(tmp_path / "folder")  # a folder is for the clip-retrieval layout only
    assert cli_main(argv) == 1
    assert "must end in .npy or .parquet (--layout files)" in capsys.readouterr().err
    assert cli_main([*argv[:-1], str(tmp_path / "e.npy"), "--layout", "clip-retrieval"]) == 1
    assert "--layout clip-retrieval writes a folder" in capsys.readouterr().err
