"""The VQA suite end to end on a tiny VQAv2 folder in the official layout, written here: flat
photos whose colour answers "what color is it?" and whose brightness answers "is it bright?",
encoded by the random tiny-test model, heads trained per seed, the official results file and
accuracy, the feature cache, a test-dev split, and a learnable task beating the majority answer.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.data.images import decode_image
from clippo.errors import DataError
from clippo.eval.heads import HeadConfig
from clippo.eval.results import format_table
from clippo.eval.vqa import (
    VqaOptions,
    answer_coverage,
    run_vqa,
    selection_score,
    table_rows,
)
from clippo.eval.vqa_data import (
    AnswerVocab,
    VQARecord,
    read_results,
    read_vqa,
    results_file,
)
from clippo.eval.vqa_metric import vqa_accuracy
from clippo.model.one_tower import CLIPPO
from clippo.render import render_on_image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
# Two of ten annotators name a neighbouring colour, one of ten gives the other yes/no answer.
DISSENT = {"red": "orange", "green": "yellow", "blue": "purple", "yes": "no", "no": "yes"}
DARK = 0.3  # a dark photo is its colour x 0.3: still that colour, but not bright
# Three colour questions (two phrasings) for every brightness question.
QUESTIONS = ("What color is it?", "What colour is the photo?", "Is it bright?", "What color?")


def _scene(index: int) -> tuple[str, bool]:
    """Image `index` -> (colour name, bright), cycling through every combination."""
    names = list(COLOURS)
    return names[index % len(names)], (index // len(names)) % 2 == 0


def _rows(first_qid: int, first_image: int, n: int) -> list[dict]:
    """n questions, one per image, about images first_image..: the annotation fields and the
    ten human answers."""
    rows = []
    for k in range(n):
        image_id = first_image + k
        colour, bright = _scene(image_id)
        question = QUESTIONS[k % len(QUESTIONS)]
        if question.startswith("Is"):
            right = "yes" if bright else "no"
            answers = [right] * 9 + [DISSENT[right]]
            qtype, atype = "is it", "yes/no"
        else:
            answers = [colour] * 8 + [DISSENT[colour]] * 2
            qtype, atype = "what color", "other"
        rows.append(
            dict(qid=first_qid + k, image_id=image_id, question=question, qtype=qtype,
                 atype=atype, answers=answers)
        )  # fmt: skip
    return rows


def write_split(root: Path, split: str, rows: list[dict], annotated: bool = True) -> None:
    """Questions (+ annotations) JSON in the official schema and one JPEG per image."""
    folder = "test2015" if split == "test-dev2015" else split
    questions = [
        {"image_id": r["image_id"], "question": r["question"], "question_id": r["qid"]}
        for r in rows
    ]
    doc = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}}
    (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(
        json.dumps({**doc, "data_subtype": split, "questions": questions})
    )
    if annotated:
        annotations = [
            {
                "question_type": r["qtype"],
                "multiple_choice_answer": r["answers"][0],
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                    for j, a in enumerate(r["answers"])
                ],
                "image_id": r["image_id"],
                "answer_type": r["atype"],
                "question_id": r["qid"],
            }
            for r in rows
        ]
        (root / f"v2_mscoco_{split}_annotations.json").write_text(
            json.dumps({**doc, "data_subtype": split, "annotations": annotations})
        )
    (root / folder).mkdir(exist_ok=True)
    for r in rows:
        colour, bright = _scene(r["image_id"])
        rgb = np.array(COLOURS[colour], np.float64) * (1.0 if bright else DARK)
        pixels = np.broadcast_to(rgb.astype(np.uint8), (24, 32, 3))
        path = root / folder / f"COCO_{folder}_{r['image_id']:012d}.jpg"
        Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="JPEG", quality=95)


TRAIN_ROWS = _rows(1000, 0, 60)
VAL_ROWS = _rows(5000, 100, 30)


@pytest.fixture
def vqa_dir(tmp_path: Path) -> Path:
    root = tmp_path / "vqa"
    root.mkdir()
    write_split(root, "train2014", TRAIN_ROWS)
    write_split(root, "val2014", VAL_ROWS)
    return root


@pytest.fixture(scope="module")
def model() -> CLIPPO:
    """The tiny-test tower at 32 px, seeded (random weights)."""
    torch.manual_seed(0)
    return CLIPPO.from_variant("tiny-test", image_size=32).eval()


# A small grid keeps a fit well under a second on 60 rows; min_holdout 5 lets the 6-row slice
# of 60 train rows select between the two weight decays.
HEAD = HeadConfig(
    kind="soft_multilabel",
    learning_rates=(1e-2,),
    weight_decays=(1e-4, 1e-2),
    epochs=30,
    min_steps=150,
    batch_size=32,
    min_holdout=5,
)


def _options(root: Path, **kw) -> VqaOptions:
    kw = {"seeds": 2, "head": HEAD, "batch_size": 16, **kw}
    return VqaOptions(data_dir=str(root), **kw)


class Counter:
    """Counts images through the model (`pooled` runs `vit.forward_features`, which calls the
    patch embedding once per batch)."""

    def __init__(self, model: CLIPPO) -> None:
        self.images = 0
        self.handle = model.vit.patch_embed.register_forward_hook(self.hook)

    def hook(self, module, args, output) -> None:
        self.images += args[0].shape[0]


def _ids(rows: list[dict]) -> list[int]:
    return [r["qid"] for r in rows]


def test_results_file_metrics_and_seeds(vqa_dir, model, tmp_path):
    out = tmp_path / "out"
    result = run_vqa(model, _options(vqa_dir), out, log=lambda line: None)
    path = results_file(out, "val2014")
    assert path.name == "vqa_OpenEnded_mscoco_val2014_clippo_results.json"
    rows = json.loads(path.read_text())
    assert [r["question_id"] for r in rows] == _ids(VAL_ROWS)  # every question, in file order
    assert all(set(r) == {"question_id", "answer"} and isinstance(r["answer"], str) for r in rows)
    assert result["results_file"] == str(path)

    metrics = result["metrics"]
    assert set(metrics) == {"overall", "per_answer_type", "per_question_type"}
    assert set(metrics["per_answer_type"]) == {"yes/no", "other"}
    assert set(metrics["per_question_type"]) == {"is it", "what color"}
    entries = [metrics["overall"], *metrics["per_answer_type"].values()]
    entries += list(metrics["per_question_type"].values())
    for m in entries:
        assert set(m) == {"seeds", "mean", "std"} and len(m["seeds"]) == 2
        assert m["mean"] == pytest.approx(np.mean(m["seeds"]))
        assert m["std"] == pytest.approx(np.std(m["seeds"]))
    # Seed 0's numbers are the official accuracy of the file it wrote.
    official = vqa_accuracy(read_results(path), read_vqa(vqa_dir, "val2014"))
    assert metrics["overall"]["seeds"][0] == pytest.approx(official["overall"])
    for group in ("per_answer_type", "per_question_type"):
        for t, v in official[group].items():
            assert metrics[group][t]["seeds"][0] == pytest.approx(v)

    # Majority answer: the three colours have 8 x 15 train votes each, more than "yes" or "no"
    # (at most 9 x 15) or a dissenting colour (2 x 15); the tie goes to the first by name. Each
    # val question whose eight annotators said "blue" scores 1, every other 0 ("blue" is
    # nobody's dissenting answer).
    base = result["baseline"]["majority"]
    assert base["answer"] == "blue"
    blue = sum(r["answers"][0] == "blue" for r in VAL_ROWS)
    assert base["overall"] == pytest.approx(blue / len(VAL_ROWS))
    assert base["per_answer_type"]["yes/no"] == 0.0

    assert result["vocab_size"] == 8  # 3 colours, 3 dissenting colours, yes, no
    assert result["eval"]["answer_coverage"] == 1.0
    assert result["train"]["rows"] == 60 and result["eval"]["rows"] == 30
    assert len(result["selection"]) == 2
    for s in result["selection"]:
        assert [g["weight_decay"] for g in s["grid"]] == [1e-4, 1e-2]
        assert s["holdout_rows"] == 6

    table = format_table(table_rows(result))
    assert "vqa overall" in table and "vqa yes/no" in table and "vqa other" in table
    assert f"{100 * base['overall']:.1f}" in table


def test_cache_makes_a_second_run_skip_the_model(vqa_dir, model, tmp_path):
    count = Counter(model)
    try:
        options = _options(vqa_dir, cache_dir=str(tmp_path / "cache"), seeds=1)
        first = run_vqa(model, options, tmp_path / "a", log=lambda line: None)
        assert count.images == 90
        again = run_vqa(model, options, tmp_path / "b", log=lambda line: None)
        assert count.images == 90  # no forward pass
        assert again["metrics"] == first["metrics"]
        a = results_file(tmp_path / "a", "val2014").read_bytes()
        assert results_file(tmp_path / "b", "val2014").read_bytes() == a
        # Another band is another input: both splits are encoded again.
        run_vqa(model, replace(options, band=8), tmp_path / "c", log=lambda line: None)
        assert count.images == 180
        # A rewritten photo (new mtime) invalidates its split's features only.
        photo = vqa_dir / "val2014" / "COCO_val2014_000000000100.jpg"
        st = photo.stat()
        os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        run_vqa(model, options, tmp_path / "d", log=lambda line: None)
        assert count.images == 210
    finally:
        count.handle.remove()


def test_test_dev_split_writes_results_without_metrics(tmp_path, model):
    root = tmp_path / "vqa"
    root.mkdir()
    write_split(root, "train2014", TRAIN_ROWS)
    test_rows = _rows(9000, 200, 12)
    write_split(root, "test-dev2015", test_rows, annotated=False)
    assert (root / "test2015" / "COCO_test2015_000000000200.jpg").is_file()
    out = tmp_path / "out"
    result = run_vqa(model, _options(root, eval_split="test-dev2015"), out, log=lambda x: None)
    path = out / "vqa_OpenEnded_mscoco_test-dev2015_clippo_results.json"
    assert result["results_file"] == str(path)
    answers = read_results(path)
    assert list(answers) == _ids(test_rows)
    assert set(answers.values()) <= set(COLOURS) | set(DISSENT.values())
    assert "metrics" not in result and "baseline" not in result
    assert result["eval"]["answer_coverage"] is None and result["eval"]["rows"] == 12
    assert table_rows(result) == [{"task": "vqa test-dev2015", "score": "no metrics (test split)"}]


def test_learnable_colour_task_beats_the_majority_baseline(vqa_dir, model, tmp_path):
    """Features of the random tiny model still carry a flat photo's colour and brightness and
    the question's kind: every run measured here (model seeds 0-2, 32 and 64 px) scored 1.0 on
    every seed, against 0.27 for the majority answer. With the band covering the whole image
    (band = 32 px, no photo) the same heads can only guess from the question: 0.42 and 0.45
    measured (a colour question's likeliest colour, or "yes")."""
    result = run_vqa(model, _options(vqa_dir), tmp_path / "a", log=lambda line: None)
    learned = result["metrics"]["overall"]["mean"]
    baseline = result["baseline"]["majority"]["overall"]
    assert baseline < 0.3
    assert learned >= 0.9
    blind = run_vqa(model, _options(vqa_dir, band=32), tmp_path / "b", log=lambda line: None)
    assert blind["metrics"]["overall"]["mean"] < 0.6


def test_max_examples_and_a_small_vocabulary(vqa_dir, model, tmp_path):
    options = _options(vqa_dir, max_examples=20, answers=3, seeds=1)
    result = run_vqa(model, options, tmp_path / "out", log=lambda line: None)
    assert result["train"]["rows"] == 20 and result["eval"]["rows"] == 20
    assert list(read_results(results_file(tmp_path / "out", "val2014"))) == _ids(VAL_ROWS[:20])
    # The first 20 train questions (k = 0..19): colour questions about 6 green, 5 red and 4
    # blue photos (8 votes each) and 5 yes/no questions, 4 of them "yes" (9 votes + 1 dissent):
    # green 48, red 40, yes 37, blue 32 votes.
    vocab = {"green", "red", "yes"}
    assert result["vocab_size"] == 3
    covered = sum(r["answers"][0] in vocab for r in VAL_ROWS[:20])
    assert result["eval"]["answer_coverage"] == pytest.approx(covered / 20)
    answers = read_results(results_file(tmp_path / "out", "val2014"))
    assert set(answers.values()) <= vocab


def test_unreadable_image_is_an_error_naming_file_and_question(vqa_dir, model, tmp_path):
    photo = vqa_dir / "val2014" / "COCO_val2014_000000000103.jpg"
    photo.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"COCO_val2014_000000000103\.jpg.*question 5003"):
        run_vqa(model, _options(vqa_dir, seeds=1), tmp_path / "out", log=lambda line: None)
    assert not results_file(tmp_path / "out", "val2014").exists()


def test_missing_split_names_the_file_and_layout(vqa_dir, model, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"v2_OpenEnded_mscoco_val2015_questions\.json"):
        run_vqa(model, _options(vqa_dir, eval_split="val2015"), tmp_path, log=lambda x: None)


def test_options_are_checked():
    with pytest.raises(ValueError, match="test split"):
        VqaOptions(data_dir="x", train_split="test2015")
    with pytest.raises(ValueError, match="band"):
        VqaOptions(data_dir="x", band=-1)
    with pytest.raises(ValueError, match="seeds"):
        VqaOptions(data_dir="x", seeds=0)


def test_selection_score_and_coverage_by_hand():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.4, 0.3], [0.0, 0.1, 0.9]], np.float32)
    targets = np.array([[0, 1, 0], [1 / 3, 1, 0], [0, 0, 2 / 3]], np.float32)
    # argmax answers 1, 0, 2 -> soft targets 1, 1/3, 2/3
    assert selection_score(scores, targets) == pytest.approx((1 + 1 / 3 + 2 / 3) / 3)

    vocab = AnswerVocab(("yes", "2"), (10, 5))

    def record(qid: int, answers: list[str]) -> VQARecord:
        return VQARecord(qid, 1, Path("x.jpg"), "q", "t", "other", tuple(answers))

    records = [
        record(1, ["Yes"] * 6 + ["no"] * 4),  # normalised "yes": covered
        record(2, ["two"] * 4 + ["3"] * 3 + ["2"] * 3),  # "two" and "2" are one answer: covered
        record(3, ["no"] * 6 + ["yes"] * 4),  # "no" is not in the vocabulary
        record(4, ["red"] * 10),
    ]
    assert answer_coverage(records, vocab) == 0.5


def test_features_are_the_question_band_over_the_photo(vqa_dir, model, tmp_path):
    """The cached eval features equal a per-question loop: decode the JPEG, `render_on_image`
    with the model's renderer and a 12 px band, `pooled` (decoding in 3 threads keeps order)."""
    cache = tmp_path / "cache"
    options = _options(vqa_dir, cache_dir=str(cache), max_examples=8, seeds=1, band=12)
    run_vqa(model, replace(options, num_workers=3), tmp_path / "out", log=lambda line: None)
    [sidecar] = [p for p in cache.glob("*.json") if json.loads(p.read_text())["desc"] == "vqa val2014"]  # fmt: skip
    assert json.loads(sidecar.read_text())["key"]["extra"] == {"suite": "vqa", "band": 12}
    got = np.load(sidecar.with_suffix(".npy"))
    want = []
    with torch.no_grad():
        for r in read_vqa(vqa_dir, "val2014", max_examples=8):
            image = render_on_image(model.renderer, decode_image(r.image_path), r.question, 12)
            pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255 * 2 - 1
            want.append(model.pooled(pixels[None])[0].numpy())
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-5)


def test_cli_runs_the_suite_and_writes_results(vqa_dir, model, tmp_path):
    from clippo.cli import main

    model.save(tmp_path / "model")
    out = tmp_path / "cli"
    code = main(
        ["eval", "--model", str(tmp_path / "model"), "--out", str(out), "vqa"]
        + ["--data-dir", str(vqa_dir), "--seeds", "1", "--answers", "8", "--band", "12"]
        + ["--batch-size", "16", "--max-examples", "40"]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "vqa" and results["options"]["band"] == 12
    assert results["options"]["answers"] == 8 and results["options"]["max_examples"] == 40
    assert set(results["metrics"]["overall"]) == {"seeds", "mean", "std"}
    assert "overall" in results["baseline"]["majority"]
    answers = json.loads((out / "vqa_OpenEnded_mscoco_val2014_clippo_results.json").read_text())
    assert [a["question_id"] for a in answers] == _ids(VAL_ROWS)[:40]


def test_finetune_selects_a_learning_rate_on_train_and_beats_the_majority(vqa_dir, model, tmp_path):
    """Fine-tuning through the trainer: two learning rates tried on 54 train rows and scored
    on the 6 held out (min_holdout 5), the better one trained on all 60, checkpointed."""
    from clippo.eval.finetune import FinetuneConfig

    tune = FinetuneConfig(learning_rates=(1e-3, 1e-5), batch_size=16, min_holdout=5)
    options = _options(vqa_dir, seeds=1, mode="finetune", max_train_steps=40, finetune=tune)
    result = run_vqa(model, options, tmp_path / "out", log=lambda line: None)
    assert result["mode"] == "finetune" and result["finetune"]["max_steps"] == 40
    (selection,) = result["selection"]
    assert [g["learning_rate"] for g in selection["grid"]] == [1e-3, 1e-5]
    assert selection["holdout_rows"] == 6
    best = max(selection["grid"], key=lambda g: g["score"])
    assert selection["learning_rate"] == best["learning_rate"]
    run = tmp_path / "out" / "finetune" / "vqa" / "seed0"
    assert (run / "checkpoints" / "step_000000040" / "manifest.json").is_file()
    assert (run / "select-lr0.001" / "checkpoints" / "step_000000040").is_dir()
    learned = result["metrics"]["overall"]["mean"]
    assert learned > result["baseline"]["majority"]["overall"] + 0.2, learned
