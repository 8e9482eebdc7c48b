"""`clippo eval` end to end on a tiny saved model, and `clippo train` with `[[eval]]` tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clippo
from clippo.cli import main
from clippo.preprocess import preprocess
from clippo.train.log import read_metrics

RECALL_KEYS = [f"{d}/r@{k}" for d in ("img2txt", "txt2img") for k in (1, 5, 10)]


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny"
    model.save(out)
    return out


@pytest.fixture()
def pairs(tmp_path, helpers) -> Path:
    """A COCO-style CSV (several captions per image) with one unreadable image."""
    rows = ["image,caption"]
    for i, caps in enumerate(helpers.captions):
        helpers.write_image(tmp_path / "images" / f"im{i}.png", i)
        rows += [f"images/im{i}.png,{c}" for c in caps]
    (tmp_path / "images/broken.jpg").write_bytes(b"\xff\xd8 truncated")
    rows.insert(3, "images/broken.jpg,lost")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "pairs.csv"


def test_eval_retrieval_writes_results_table_and_png(model_dir, pairs, tmp_path, capsys, helpers):
    out = tmp_path / "out"
    argv = ["eval", "--model", str(model_dir), "retrieval", "--pairs", str(pairs)]
    rc = main([*argv, "--out", str(out), "--batch-size", "4", "--device", "cpu"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["suite"] == "retrieval"
    assert res["model"] == str(model_dir.resolve())
    assert res["data"] == str(pairs.resolve())
    assert res["spec"]["batch_size"] == 4 and res["spec"]["max_examples"] == 0
    assert res["options"]["device"] == "cpu"
    assert res["model_config"]["vit"]["image_size"] == 32

    m = res["metrics"]
    want = helpers.direct_retrieval(clippo.load(model_dir), tmp_path / "images", batch_size=3)
    assert {k: m[k] for k in RECALL_KEYS} == pytest.approx({k: want[k] for k in RECALL_KEYS})
    assert (m["n_images"], m["n_texts"]) == (5, 8)
    assert m["n_skipped"] == 1 and m["skipped"][0][0] == "images/broken.jpg"

    printed = capsys.readouterr()
    assert "| img2txt" in printed.out and f"{m['img2txt/r@1']:.4f}" in printed.out
    assert "images/broken.jpg" in printed.err
    with Image.open(out / "retrieval_examples.png") as png:
        assert png.format == "PNG" and png.size[1] > 5 * 128


def test_eval_options_before_or_after_the_suite_and_max_examples(model_dir, pairs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--max-examples", "3", "--device", "cpu"]
    assert main(["eval", "--model", str(model_dir), "--out", str(a), *common,
                 "retrieval", "--pairs", str(pairs)]) == 0  # fmt: skip
    assert main(["eval", "retrieval", "--pairs", str(pairs), "--model", str(model_dir),
                 "--out", str(b), *common]) == 0  # fmt: skip
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["metrics"] == rb["metrics"] and ra["spec"] == rb["spec"]
    assert ra["spec"]["max_examples"] == 3
    # 6 images listed (the broken one is the 2nd); evenly spaced 3 of them: 0, 2, 4
    assert ra["metrics"]["n_images"] == 3 and ra["metrics"]["n_skipped"] == 0


def test_eval_zeroshot_cifar100_with_a_template_file(model_dir, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.array([2, 0, 1, 1, 0, 2])
    records = np.zeros((6, 3074), dtype=np.uint8)
    records[:, 1] = labels
    records[:, 2:] = images.transpose(0, 3, 1, 2).reshape(6, -1)
    cifar = tmp_path / "cifar" / "cifar-100-binary"
    cifar.mkdir(parents=True)
    (cifar / "test.bin").write_bytes(records.tobytes())
    (cifar / "fine_label_names.txt").write_text("apple\naquarium_fish\nbaby\n")
    # the class name comes first: a 32 px image shows only the first 8 characters of a prompt
    (tmp_path / "templates.txt").write_text("{}.\n{}!\n")
    out = tmp_path / "out"
    rc = main(["eval", "--model", str(model_dir), "--out", str(out), "--device", "cpu",
               "zeroshot", "--cifar100", str(tmp_path / "cifar"),
               "--templates", str(tmp_path / "templates.txt")])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["suite"] == "zeroshot" and res["spec"]["format"] == "cifar100"
    assert res["spec"]["canonical"] is False  # a user template list is used as given
    model = clippo.load(model_dir)
    with torch.no_grad():
        cls = model.class_embeddings(["apple", "aquarium_fish", "baby"], ["{}.", "{}!"])
        assert (cls @ cls.T).triu(1).max() < 0.999  # three different class embeddings
        pred = (model.encode(preprocess(list(images), 32)) @ cls.T).argmax(1).numpy()
    assert res["metrics"]["accuracy"] == pytest.approx(float((pred == labels).mean()))
    assert set(res["metrics"]["per_class"]) == {"apple", "aquarium_fish", "baby"}
    assert not (out / "retrieval_examples.png").exists()


def test_eval_errors(model_dir, tmp_path, capsys):
    assert main(["eval", "retrieval", "--pairs", "x.csv", "--out", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err
    missing = tmp_path / "missing.csv"
    rc = main(["eval", "--model", str(model_dir), "--out", str(tmp_path / "o"),
               "retrieval", "--pairs", str(missing)])  # fmt: skip
    assert rc == 1 and "missing.csv" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()
    with pytest.raises(SystemExit):  # argparse: exactly one zero-shot source
        main(["eval", "--model", str(model_dir), "--out", str(tmp_path), "zeroshot"])


# ---- clippo train with [[eval]] ----------------------------------------------------------------

# The demo preset, shrunk: 32 px, batch 4, 2 steps, fp32, no workers, evaluation every step.
TINY = [
    "loop.steps=2",
    "loop.batch_size=4",
    "loop.precision=fp32",
    "model.image_size=32",
    "schedule.warmup_steps=1",
    "schedule.cooldown_steps=0",
    "data.num_workers=0",
    "checkpoint.every_steps=0",
    "logging.every_steps=1",
    "logging.eval_every_steps=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "logging.loss_png=false",
]


def test_train_logs_eval_metrics(pairs, tmp_path, helpers):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'preset = "demo"\n\n[[eval]]\nkind = "retrieval"\n'
        f"path = {json.dumps(str(pairs))}\nbatch_size = 4\n"
    )
    run = tmp_path / "run"
    sets = [f"logging.run_dir={json.dumps(str(run))}", *TINY]
    assert main(["train", str(toml), *[a for s in sets for a in ("--set", s)]]) == 0
    records = [r for r in read_metrics(run / "metrics.jsonl") if "eval/retrieval/img2txt/r@1" in r]
    assert [r["step"] for r in records] == [1, 2]
    last = records[-1]
    assert last["eval/retrieval/n_images"] == 5 and last["eval/retrieval/n_skipped"] == 1
    # the step-2 evaluation saw the final weights, which the step-2 checkpoint holds
    (ckpt,) = sorted((run / "checkpoints").iterdir())
    saved = json.loads((ckpt / "train_config.json").read_text())
    assert saved["eval"][0]["path"] == str(pairs)
    want = helpers.direct_retrieval(clippo.load(ckpt), tmp_path / "images", batch_size=3)
    got = {k: last[f"eval/retrieval/{k}"] for k in RECALL_KEYS}
    assert got == pytest.approx({k: want[k] for k in RECALL_KEYS})


def test_train_stops_before_training_on_bad_eval_data(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "demo"\n\n[[eval]]\nkind = "retrieval"\npath = "nope.csv"\n')
    run = tmp_path / "run"
    sets = [f"logging.run_dir={json.dumps(str(run))}", *TINY]
    assert main(["train", str(toml), *[a for s in sets for a in ("--set", s)]]) == 1
    err = capsys.readouterr().err  # one line: the file, and where in the config it was named
    assert err.startswith("clippo train: error: [[eval]]: pairs file not found: nope.csv"), err
    assert len(err.splitlines()) == 1
    assert not run.exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be > 0, got 0"),
        ("batch_size", True, "batch_size must be an integer, got True"),
        ("batch_size", 2.5, "batch_size must be an integer, got 2.5"),
        ("max_examples", -1, "max_examples must be >= 0 (0: all), got -1"),
    ],
)
def test_eval_spec_checks_its_sizes_and_counts(field, value, message):
    from clippo.eval.spec import EvalSpec, specs_from_tables

    with pytest.raises(ValueError, match=re.escape(message)):
        EvalSpec("retrieval", "pairs.csv", **{field: value})
    if not isinstance(value, bool | float):  # from a table the type check names the key first
        with pytest.raises(ValueError, match=re.escape(f"eval.0.{message}")):
            specs_from_tables([{"kind": "retrieval", "path": "p.csv", field: value}])
