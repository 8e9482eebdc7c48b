"""Every distributed dataset layout, written tiny by the test in that layout, end to end through
`clippo eval` (a tiny saved model), against metrics computed directly on the decoded images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clippo
from clippo.cli import main
from clippo.data.images import decode_image
from clippo.eval.datasets_classification import (
    bundled_class_names,
    classification_source,
    imagenet_wnids,
    read_imagenet_devkit,
)
from clippo.eval.datasets_retrieval import read_karpathy, read_translations, read_xm3600
from clippo.eval.encoders import as_encoders, embed
from clippo.eval.retrieval import evaluate_retrieval
from clippo.eval.zeroshot import evaluate_zeroshot
from clippo.preprocess import resize_uint8
from clippo.typed_config import ConfigError

RECALL_KEYS = [f"{d}/r@{k}" for d in ("img2txt", "txt2img") for k in (1, 5, 10)]
TEMPLATES = ["{}.", "{}!"]  # the class name first: a 32 px prompt shows ~8 characters


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny"
    model.save(out)
    return out


@pytest.fixture(scope="module")
def loaded(model_dir):
    return clippo.load(model_dir).eval()


def run(model_dir: Path, out: Path, *suite_args: str) -> dict:
    argv = ["eval", "--model", str(model_dir), "--out", str(out), "--device", "cpu",
            "--batch-size", "3", *suite_args]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def pixels(files: list) -> np.ndarray:
    return np.stack([resize_uint8(decode_image(f), 32) for f in files])


def direct_retrieval(model, files: list, captions: list[list[str]]) -> dict:
    texts = [c for caps in captions for c in caps]
    ids = np.array([i for i, caps in enumerate(captions) for _ in caps])
    return evaluate_retrieval(*as_encoders(model), pixels(files), texts, ids, batch_size=2)


def direct_zeroshot(model, images: np.ndarray, labels, names, templates=TEMPLATES) -> dict:
    return evaluate_zeroshot(model, images, np.asarray(labels), names, templates, batch_size=2)


def write_png(path: Path, seed: int, size: tuple[int, int] = (24, 40)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # PNG bytes whatever the suffix: lossless
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def assert_recalls(got: dict, want: dict) -> None:
    assert {k: got[k] for k in RECALL_KEYS} == pytest.approx({k: want[k] for k in RECALL_KEYS})
    assert got["modality_gap"] == pytest.approx(want["modality_gap"], abs=1e-5)


CAPTIONS = [["red 1", "sun", "hot"], ["blue 2"], ["cat 3", "big"], ["dog 4"], ["owl 5", "far"]]


# ---- retrieval ---------------------------------------------------------------------------------


def test_karpathy_coco_test_split_every_caption(model_dir, loaded, tmp_path, capsys):
    root = tmp_path / "coco"
    images = []
    for i, caps in enumerate(CAPTIONS):
        write_png(root / "val2014" / f"im{i}.jpg", i)
        images.append({"filepath": "val2014", "filename": f"im{i}.jpg", "split": "test",
                       "sentences": [{"raw": c, "tokens": c.split()} for c in caps]})  # fmt: skip
    write_png(root / "train2014" / "t.jpg", 9)
    images.insert(2, {"filepath": "train2014", "filename": "t.jpg", "split": "restval",
                      "sentences": [{"raw": "not in test"}]})  # fmt: skip
    (root / "val2014" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    images.append({"filepath": "val2014", "filename": "broken.jpg", "split": "test",
                   "sentences": [{"raw": "lost"}]})  # fmt: skip
    split_file = tmp_path / "dataset_coco.json"
    split_file.write_text(json.dumps({"images": images, "dataset": "coco"}))

    res = run(model_dir, tmp_path / "out", "retrieval", "--karpathy", str(split_file),
              "--images", str(root))  # fmt: skip
    m = res["metrics"]
    assert res["spec"]["format"] == "karpathy" and res["spec"]["split"] == "test"
    assert (m["n_images"], m["n_texts"]) == (5, 9)  # three captions for image 0, all kept
    assert m["n_skipped"] == 1 and m["skipped"][0][0] == "val2014/broken.jpg"
    files = [root / "val2014" / f"im{i}.jpg" for i in range(5)]
    assert_recalls(m, direct_retrieval(loaded, files, CAPTIONS))
    assert "modality_gap" in capsys.readouterr().out
    assert (tmp_path / "out" / "retrieval_examples.png").is_file()
    assert len(read_karpathy(split_file, root, split="restval")) == 1


def test_karpathy_flickr_has_no_filepath_and_errors(tmp_path):
    write_png(tmp_path / "imgs" / "1000092795.jpg", 0)
    doc = {"images": [{"filename": "1000092795.jpg", "split": "test",
                       "sentences": [{"raw": "Two young guys"}, {"raw": "Two men"}]}]}  # fmt: skip
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(doc))
    d = read_karpathy(tmp_path / "dataset_flickr30k.json", tmp_path / "imgs")
    assert d.images == (tmp_path / "imgs" / "1000092795.jpg",)
    assert d.texts == ("Two young guys", "Two men") and d.image_ids_for_text.tolist() == [0, 0]
    with pytest.raises(ValueError, match=r"no images in split 'val' \(splits: \['test'\]\)"):
        read_karpathy(tmp_path / "dataset_flickr30k.json", tmp_path / "imgs", split="val")
    with pytest.raises(FileNotFoundError, match="dataset_coco.json.*Karpathy's split file"):
        read_karpathy(tmp_path / "dataset_coco.json", tmp_path / "imgs")
    with pytest.raises(NotADirectoryError, match="nowhere"):
        read_karpathy(tmp_path / "dataset_flickr30k.json", tmp_path / "nowhere")


def write_xm3600(tmp_path: Path) -> tuple[Path, Path, dict[str, list[list[str]]]]:
    caps = {"en": CAPTIONS, "de": [["rot 1"], ["blau 2", "hell"], ["Katze 3"], ["Hund 4"],
                                   ["Eule 5"]]}  # fmt: skip
    lines = []
    for i in range(5):
        key = f"00{i}abc"
        write_png(tmp_path / "images" / f"{key}.jpg", 10 + i)
        record = {"image/key": key, "image/locale": "en"}
        for lang, c in caps.items():
            record[lang] = {"caption": c[i], "caption/tokenized": c[i]}
        record["fr"] = {"caption": ["une"], "caption/tokenized": ["une"]}
        lines.append(json.dumps(record, ensure_ascii=False))
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "captions.jsonl", tmp_path / "images", caps


def test_xm3600_per_language_and_mean(model_dir, loaded, tmp_path, capsys):
    path, images, caps = write_xm3600(tmp_path)
    assert read_xm3600(path, images).languages() == ["en", "de", "fr"]  # "all": the file's
    res = run(model_dir, tmp_path / "out", "retrieval", "--xm3600", str(path),
              "--images", str(images), "--languages", "en,de")  # fmt: skip
    m = res["metrics"]
    assert m["languages"] == ["en", "de"] and set(m["per_language"]) == {"en", "de"}
    files = [images / f"00{i}abc.jpg" for i in range(5)]
    for lang in ("en", "de"):
        assert_recalls(m["per_language"][lang], direct_retrieval(loaded, files, caps[lang]))
    for k in [*RECALL_KEYS, "modality_gap"]:
        assert m[k] == pytest.approx((m["per_language"]["en"][k] + m["per_language"]["de"][k]) / 2)
    assert m["n_texts"] == 9 + 6
    table = capsys.readouterr().out
    assert "| de " in table and "| mean " in table
    with pytest.raises(ValueError, match=r"captions\.jsonl:1: no captions in language 'xx'"):
        read_xm3600(path, images, languages=["xx"])


def test_translations_tsv_and_aligned_files(model_dir, loaded, tmp_path, capsys):
    src = ["the cat", "a dog runs", "red sun", "blue sky"]
    tgt = ["die Katze", "ein Hund", "rote Sonne", "blauer Himmel"]
    tsv = tmp_path / "en-de.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in zip(src, tgt)), encoding="utf-8")
    res = run(model_dir, tmp_path / "out", "retrieval", "--translations", str(tsv),
              "--src-lang", "en", "--tgt-lang", "de")  # fmt: skip
    m = res["metrics"]
    assert (m["src_lang"], m["tgt_lang"], m["n_pairs"]) == ("en", "de", 4)
    _, encode_texts = as_encoders(loaded)
    zs, zt = embed(encode_texts, src, 2), embed(encode_texts, tgt, 2)
    sim = zs @ zt.T
    s2t = np.mean([sim[i, i] > np.delete(sim[i], i).max() for i in range(4)])
    t2s = np.mean([sim[i, i] > np.delete(sim[:, i], i).max() for i in range(4)])
    assert m["src2tgt/r@1"] == pytest.approx(s2t) and m["tgt2src/r@1"] == pytest.approx(t2s)
    assert m["src2tgt/r@5"] == 1.0
    assert "| en->de" in capsys.readouterr().out
    assert not (tmp_path / "out" / "retrieval_examples.png").exists()
    (tmp_path / "en.txt").write_text("\n".join(src) + "\n")
    (tmp_path / "de.txt").write_text("\n".join(tgt) + "\n\n")
    aligned = read_translations(tmp_path / "en.txt", tmp_path / "de.txt")
    assert (aligned.src, aligned.tgt) == (tuple(src), tuple(tgt))
    (tmp_path / "bad.tsv").write_text("one\ttwo\nno tab here\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:2: expected 'source<TAB>target'"):
        read_translations(tmp_path / "bad.tsv")


def hf_caption_rows(tmp_path: Path) -> tuple[list[dict], list[Path]]:
    files = [tmp_path / "src" / f"im{i}.png" for i in range(5)]
    rows = [{"bytes": write_png(f, 20 + i), "path": None} for i, f in enumerate(files)]
    return rows, files


def test_hf_dataset_folder_and_parquet_captions(model_dir, loaded, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows, files = hf_caption_rows(tmp_path)
    rows.insert(1, {"bytes": b"not an image", "path": None})
    captions = [CAPTIONS[0], ["lost"], *CAPTIONS[1:]]
    features = datasets.Features(
        {"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string"))}
    )
    ds = datasets.Dataset.from_dict({"image": rows, "caption": captions}, features=features)
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "hf"))
    res = run(model_dir, tmp_path / "out", "retrieval", "--hf-dataset", str(tmp_path / "hf"))
    m = res["metrics"]
    assert (m["n_images"], m["n_texts"], m["n_skipped"]) == (5, 9, 1)
    assert m["skipped"][0][0] == "hf[1]"
    assert_recalls(m, direct_retrieval(loaded, files, CAPTIONS))
    ds.to_parquet(str(tmp_path / "pq" / "test.parquet"))
    again = run(model_dir, tmp_path / "out2", "retrieval", "--hf-dataset", str(tmp_path / "pq"))
    assert {k: again["metrics"][k] for k in RECALL_KEYS} == {k: m[k] for k in RECALL_KEYS}


# ---- zero-shot ---------------------------------------------------------------------------------


def write_templates(tmp_path: Path) -> Path:
    (tmp_path / "templates.txt").write_text("{c}.\n{}!\n")  # CLIP_benchmark's slot too
    return tmp_path / "templates.txt"


def zeroshot(model_dir: Path, tmp_path: Path, *source: str) -> dict:
    out = tmp_path / "out"
    return run(model_dir, out, "zeroshot", *source, "--templates", str(write_templates(tmp_path)))


def write_meta_mat(path: Path) -> None:
    """A tiny devkit meta.mat: IDs 1..3 are leaves whose WordNet IDs are *not* in ID order,
    ID 4 an ancestor (num_children 3), as in the real file's 1,860 synsets."""
    scipy_io = pytest.importorskip("scipy.io")
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]  # fmt: skip
    syn = np.zeros((4,), dtype=[(f, "O") for f in fields])
    rows = [("n02000000", 0), ("n01000000", 0), ("n03000000", 0), ("n00000001", 3)]
    for i, (wnid, kids) in enumerate(rows):
        children = np.array([1, 2, 3]) if kids else np.array([], dtype=np.int64)
        syn[i] = (i + 1, wnid, "w", "g", kids, children, 0, 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(str(path), {"synsets": syn.reshape(-1, 1)})


def write_flat_val(folder: Path, n: int) -> list[Path]:
    files = [folder / f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, n + 1)]
    for i, f in enumerate(files):
        write_png(f, 30 + i)
    return files


def test_imagenet_devkit_mapping(tmp_path):
    write_meta_mat(tmp_path / "devkit" / "data" / "meta.mat")
    id_to_wnid, classes = read_imagenet_devkit(tmp_path / "devkit")
    assert id_to_wnid == {1: "n02000000", 2: "n01000000", 3: "n03000000"}  # leaves only
    assert classes == ["n01000000", "n02000000", "n03000000"]
    with pytest.raises(FileNotFoundError, match=r"nodevkit/data/meta\.mat"):
        read_imagenet_devkit(tmp_path / "nodevkit")


def test_imagenet_val_ground_truth_through_the_devkit(model_dir, loaded, tmp_path):
    files = write_flat_val(tmp_path / "val", 5)
    write_meta_mat(tmp_path / "devkit" / "data" / "meta.mat")
    gt = tmp_path / "devkit" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("1\n2\n3\n3\n1\n")  # IDs -> n02, n01, n03, n03, n02 -> sorted index 1,0,2,2,1
    names = ["alpha", "beta", "gamma"]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    res = zeroshot(model_dir, tmp_path, "--imagenet-val", str(tmp_path / "val"),
                   "--devkit", str(tmp_path / "devkit"), "--class-names", str(tmp_path / "names.txt"))  # fmt: skip
    want = direct_zeroshot(loaded, pixels(files), [1, 0, 2, 2, 1], names)
    m = res["metrics"]
    assert m["accuracy"] == pytest.approx(want["accuracy"])
    assert m["per_class"] == pytest.approx(want["per_class"])
    assert m["n"] == 5 and m["n_classes"] == 3
    data = classification_source("imagenet_val", tmp_path / "val", devkit=tmp_path / "devkit",
                                 class_names=names)  # fmt: skip
    assert data.labels.tolist() == [1, 0, 2, 2, 1]
    gt.write_text("1\n2\n4\n3\n1\n")
    with pytest.raises(ValueError, match=r"ground_truth\.txt:3: '4' is not an ILSVRC2012_ID"):
        classification_source("imagenet_val", tmp_path / "val", devkit=tmp_path / "devkit")
    with pytest.raises(ValueError, match="pass the devkit folder"):
        classification_source("imagenet_val", tmp_path / "val", labels=gt)


def test_imagenet_val_loc_solution(model_dir, loaded, tmp_path):
    files = write_flat_val(tmp_path / "val", 3)
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    rows = [
        "ImageId,PredictionString",
        f"ILSVRC2012_val_00000002,{wnids[999]} 1 2 3 4 {wnids[999]} 5 6 7 8",
        f"ILSVRC2012_val_00000001,{wnids[1]} 10 20 30 40",
        f"ILSVRC2012_val_00000003,{wnids[0]} 1 1 2 2",
        f"ILSVRC2012_val_00000099,{wnids[5]} 1 1 2 2",
    ]  # fmt: skip  (an image not here)
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    data = classification_source("imagenet_val", tmp_path / "val")  # the CSV found beside
    assert data.labels.tolist() == [1, 999, 0] and len(data.class_names) == 1000
    assert data.class_names[:2] == ("tench", "goldfish")  # CLIP's names, sorted-WordNet order
    assert data.class_names[999] == "toilet paper"
    # through the CLI, with the devkit's classes (3 of them) to keep the prompts few
    write_meta_mat(tmp_path / "devkit" / "data" / "meta.mat")
    rows = ["ImageId,PredictionString", "ILSVRC2012_val_00000001,n03000000 1 1 2 2",
            "ILSVRC2012_val_00000002,n01000000 1 1 2 2",
            "ILSVRC2012_val_00000003,n02000000 1 1 2 2"]  # fmt: skip
    (tmp_path / "loc.csv").write_text("\n".join(rows) + "\n")
    names = ["alpha", "beta", "gamma"]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    res = zeroshot(model_dir, tmp_path, "--imagenet-val", str(tmp_path / "val"),
                   "--labels", str(tmp_path / "loc.csv"), "--devkit", str(tmp_path / "devkit"),
                   "--class-names", str(tmp_path / "names.txt"))  # fmt: skip
    want = direct_zeroshot(loaded, pixels(files), [2, 0, 1], names)
    assert res["metrics"]["accuracy"] == pytest.approx(want["accuracy"])
    assert res["metrics"]["per_class"] == pytest.approx(want["per_class"])


def test_imagenet_val_missing_labels_names_the_layout(model_dir, tmp_path, capsys):
    write_flat_val(tmp_path / "val", 1)
    rc = main(["eval", "--model", str(model_dir), "--out", str(tmp_path / "o"), "--device", "cpu",
               "zeroshot", "--imagenet-val", str(tmp_path / "val")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "LOC_val_solution.csv" in err and "ground_truth" in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_imagenet_synset_folders(model_dir, loaded, tmp_path):
    files = []
    for label, wnid in enumerate(["n01440764", "n01443537"]):
        for j in range(2):
            files.append(tmp_path / "train" / wnid / f"{wnid}_{j}.JPEG")
            write_png(files[-1], 40 + 2 * label + j)
    res = zeroshot(model_dir, tmp_path, "--imagenet-folder", str(tmp_path / "train"))
    names = ["tench", "goldfish"]
    want = direct_zeroshot(loaded, pixels(files), [0, 0, 1, 1], names)
    assert set(res["metrics"]["per_class"]) == set(names)
    assert res["metrics"]["accuracy"] == pytest.approx(want["accuracy"])


def test_cifar10_binary_with_bundled_names(model_dir, loaded, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    labels = np.array([3, 9, 0, 3])
    records = np.concatenate([labels[:, None].astype(np.uint8),
                              images.transpose(0, 3, 1, 2).reshape(4, -1)], axis=1)  # fmt: skip
    (tmp_path / "cifar-10-batches-bin").mkdir()
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(records.tobytes())
    data = classification_source("cifar10", tmp_path)
    np.testing.assert_array_equal(data.images, images)
    assert data.labels.tolist() == labels.tolist()
    res = zeroshot(model_dir, tmp_path, "--cifar10", str(tmp_path))
    names = bundled_class_names("cifar10")
    assert names[3] == "cat" and names[9] == "truck"
    want = direct_zeroshot(loaded, images, labels, names)
    m = res["metrics"]
    assert m["n_classes"] == 10 and m["accuracy"] == pytest.approx(want["accuracy"])
    assert m["top5_accuracy"] == pytest.approx(want["top5_accuracy"])
    assert m["mean_per_class_accuracy"] == pytest.approx(want["mean_per_class_accuracy"])
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin.*CIFAR-10 binary"):
        classification_source("cifar10", tmp_path, split="train")


def test_oxford_pets(model_dir, loaded, tmp_path):
    listing = ["#Image CLASS-ID SPECIES BREED ID", "Abyssinian_100 1 1 1",
               "american_bulldog_10 2 2 1", "yorkshire_terrier_1 37 2 25"]  # fmt: skip
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "test.txt").write_text("\n".join(listing) + "\n")
    files = []
    for i, line in enumerate(listing[1:]):
        files.append(tmp_path / "images" / f"{line.split()[0]}.jpg")
        write_png(files[-1], 50 + i)
    data = classification_source("pets", tmp_path)
    assert data.labels.tolist() == [0, 1, 36] and data.images == tuple(files)
    res = zeroshot(model_dir, tmp_path, "--pets", str(tmp_path))
    names = bundled_class_names("pets")
    assert (names[0], names[1], names[36]) == (
        "Abyssinian",
        "American Bulldog",
        "Yorkshire Terrier",
    )
    want = direct_zeroshot(loaded, pixels(files), [0, 1, 36], names)
    assert res["metrics"]["accuracy"] == pytest.approx(want["accuracy"])
    assert res["metrics"]["top5_accuracy"] == pytest.approx(want["top5_accuracy"])
    with pytest.raises(FileNotFoundError, match=r"annotations/trainval\.txt.*images/<name>\.jpg"):
        classification_source("pets", tmp_path, split="trainval")


def test_hf_dataset_labels(model_dir, loaded, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = [tmp_path / "src" / f"im{i}.png" for i in range(4)]
    images = [{"bytes": write_png(f, 60 + i), "path": None} for i, f in enumerate(files)]
    features = datasets.Features(
        {"img": datasets.Image(), "y": datasets.ClassLabel(names=["apple", "pear", "fig"])}
    )
    ds = datasets.Dataset.from_dict({"img": images, "y": [2, 0, 1, 2]}, features=features)
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "hf"))
    res = zeroshot(model_dir, tmp_path, "--hf-dataset", str(tmp_path / "hf"), "--split",
                   "validation", "--image-column", "img", "--label-column", "y")  # fmt: skip
    want = direct_zeroshot(loaded, pixels(files), [2, 0, 1, 2], ["apple", "pear", "fig"])
    assert res["metrics"]["accuracy"] == pytest.approx(want["accuracy"])
    assert res["metrics"]["per_class"] == pytest.approx(want["per_class"])
    ds.to_parquet(str(tmp_path / "validation.parquet"))  # ClassLabel names kept in the schema
    pq = classification_source("hf", tmp_path / "validation.parquet", image_column="img",
                               label_column="y")  # fmt: skip
    assert pq.class_names == ("apple", "pear", "fig") and pq.labels.tolist() == [2, 0, 1, 2]
    with pytest.raises(ValueError, match=r"no split 'test' \(splits: \['validation'\]\)"):
        classification_source("hf", tmp_path / "hf", image_column="img", label_column="y")
    with pytest.raises(ValueError, match="not one of"):
        classification_source("mnist", tmp_path)


# ---- the training hooks' path: listed, subset, decoded into memory, then the suite -------------


def test_spec_layouts_through_load_images_and_max_examples(model, tmp_path):
    from clippo.eval.datasets import load_images
    from clippo.eval.spec import EvalSpec, specs_from_tables
    from clippo.eval.suites import read_spec_data, retrieval_suite

    path, images, caps = write_xm3600(tmp_path)
    spec = EvalSpec("retrieval", str(path), format="xm3600", images=str(images),
                    languages="de,en", max_examples=3, batch_size=2)  # fmt: skip
    listed = read_spec_data(spec)  # images 0, 1, 3 (evenly spaced), their captions only
    assert listed.names == ("000abc.jpg", "001abc.jpg", "003abc.jpg")
    de = listed.language("de")
    assert de.texts == ("rot 1", "blau 2", "hell", "Hund 4")
    assert de.image_ids_for_text.tolist() == [0, 1, 1, 2]
    from_files = retrieval_suite(model, spec)
    in_memory = retrieval_suite(model, spec, data=load_images(listed, 32))
    assert from_files["languages"] == in_memory["languages"] == ["de", "en"]
    for k in RECALL_KEYS:
        assert from_files[k] == pytest.approx(in_memory[k])
    with pytest.raises(ValueError, match="translation pairs have no images"):
        read_spec_data(EvalSpec("retrieval", str(path), format="translations"))
    with pytest.raises(ValueError, match="needs images"):
        EvalSpec("retrieval", str(path), format="xm3600")
    # CLIP_benchmark's "{c}" in a template list is read as "{}"
    assert EvalSpec("zeroshot", "x", templates=("a {c}.", "{}")).templates == ("a {}.", "{}")
    with pytest.raises(ValueError, match="exactly one"):
        EvalSpec("zeroshot", "x", templates=("no slot",))
    # an [[eval]] table's bad template names its key (it named none: the config fuzz found it)
    with pytest.raises(ConfigError, match=r"^eval\.0\.templates: template '' must contain"):
        specs_from_tables([{"kind": "zeroshot", "path": "x", "templates": [""]}])


def test_hf_images_decode_into_memory_with_the_bad_one_listed(tmp_path):
    datasets = pytest.importorskip("datasets")
    from clippo.eval.datasets import load_images
    from clippo.eval.datasets_hf import read_hf_captions

    rows, files = hf_caption_rows(tmp_path)
    rows[2] = {"bytes": b"\x89PNG broken", "path": None}
    ds = datasets.Dataset.from_dict(
        {"image": rows, "text": [f"caption {i}" for i in range(5)]},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "single"))  # a Dataset, not a DatasetDict: no split needed
    listed = read_hf_captions(tmp_path / "single", caption_column="text")
    decoded = load_images(listed.subset([4, 2, 0]), 32)
    assert decoded.names == ("single[4]", "single[0]")
    # texts keep their file order, pointing at the images' new positions
    assert decoded.texts == ("caption 0", "caption 4")
    assert decoded.image_ids_for_text.tolist() == [1, 0]
    np.testing.assert_array_equal(decoded.images, pixels([files[4], files[0]]))
    assert [name for name, _ in decoded.skipped] == ["single[2]"]
    with pytest.raises(ValueError, match=r"no column\(s\) \['caption'\]"):
        read_hf_captions(tmp_path / "single")
