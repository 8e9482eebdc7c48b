"""VQAv2 in the official layout, written tiny in tmp_path: reading, errors, the answer vocabulary,
soft targets and the official results file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clippo.errors import DataError
from clippo.eval.vqa_data import (
    AnswerVocab,
    VQARecord,
    build_answer_vocab,
    dense_targets,
    read_results,
    read_vqa,
    results_file,
    soft_target,
    write_results,
)
from clippo.eval.vqa_metric import vqa_accuracy

# question_id, image_id, question, question_type, answer_type, ten answers
TRAIN = [
    (101, 1, "Is it red?", "is it", "yes/no", ["yes"] * 7 + ["no"] * 3),
    (102, 1, "How many cats?", "how many", "number", ["2"] * 4 + ["two"] * 2 + ["3"] * 4),
    (103, 2, "What color?", "what color", "other", ["Red"] * 5 + ["blue"] * 3 + ["the"] * 2),
]
VAL = [
    (201, 7, "Is it day?", "is it", "yes/no", ["yes"] * 10),
    (202, 8, "How many?", "how many", "number", ["1"] * 3 + ["one"] * 2 + ["2"] * 5),
]


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def _write_split(root: Path, split: str, rows: list, annotated: bool = True) -> None:
    folder = "test2015" if split == "test-dev2015" else split
    questions = [{"image_id": i, "question": q, "question_id": qid} for qid, i, q, *_ in rows]
    (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(
        json.dumps({"data_subtype": split, "questions": questions})
    )
    if annotated:
        anns = [
            {
                "question_type": qt,
                "multiple_choice_answer": a[0],
                "answers": [
                    {"answer": x, "answer_confidence": "yes", "answer_id": k + 1}
                    for k, x in enumerate(a)
                ],
                "image_id": i,
                "answer_type": at,
                "question_id": qid,
            }
            for qid, i, _, qt, at, a in rows
        ]
        (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({"annotations": anns}))
    for _, image_id, *_ in rows:
        _jpeg(root / folder / f"COCO_{folder}_{image_id:012d}.jpg", image_id)


@pytest.fixture
def vqa_dir(tmp_path: Path) -> Path:
    root = tmp_path / "vqa"
    root.mkdir()
    _write_split(root, "train2014", TRAIN)
    _write_split(root, "val2014", VAL)
    _write_split(root, "test-dev2015", [(301, 5, "Where?"), (302, 6, "Who?")], annotated=False)
    return root


def test_reads_train_records_in_file_order(vqa_dir: Path) -> None:
    records = read_vqa(vqa_dir, "train2014")
    assert [r.question_id for r in records] == [101, 102, 103]
    first = records[0]
    assert first == VQARecord(
        question_id=101,
        image_id=1,
        image_path=vqa_dir / "train2014" / "COCO_train2014_000000000001.jpg",
        question="Is it red?",
        question_type="is it",
        answer_type="yes/no",
        answers=("yes",) * 7 + ("no",) * 3,
    )
    assert all(r.image_path.is_file() for r in records)
    assert [r.question_id for r in read_vqa(vqa_dir, "train2014", max_examples=2)] == [101, 102]


def test_test_dev_uses_test2015_images_and_has_no_answers(vqa_dir: Path) -> None:
    records = read_vqa(vqa_dir, "test-dev2015")
    assert [r.image_path for r in records] == [
        vqa_dir / "test2015" / "COCO_test2015_000000000005.jpg",
        vqa_dir / "test2015" / "COCO_test2015_000000000006.jpg",
    ]
    assert all(r.answers == () and r.answer_type == "" for r in records)


def test_missing_files_name_the_expected_file_and_layout(vqa_dir: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match="v2_OpenEnded_mscoco_val2015_questions.json.*layout"
    ):
        read_vqa(vqa_dir, "val2015")
    (vqa_dir / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(FileNotFoundError, match="v2_mscoco_val2014_annotations.json.*layout"):
        read_vqa(vqa_dir, "val2014")
    image = vqa_dir / "test2015" / "COCO_test2015_000000000006.jpg"
    image.unlink()
    with pytest.raises(FileNotFoundError, match=r"COCO_test2015_000000000006.jpg.*1 of 2 images"):
        read_vqa(vqa_dir, "test-dev2015")
    assert len(read_vqa(vqa_dir, "test-dev2015", max_examples=1)) == 1  # only what is read
    assert len(read_vqa(vqa_dir, "test-dev2015", check_images=False)) == 2
    with pytest.raises(FileNotFoundError, match="VQAv2 data folder not found"):
        read_vqa(vqa_dir / "nope", "train2014")


def test_malformed_json_names_file_and_key(vqa_dir: Path) -> None:
    qfile = vqa_dir / "v2_OpenEnded_mscoco_train2014_questions.json"
    afile = vqa_dir / "v2_mscoco_train2014_annotations.json"
    good_q, good_a = qfile.read_text(), afile.read_text()
    qfile.write_text('{"questions": [\n{"image_id": 1,}]}')
    with pytest.raises(DataError, match=rf"{qfile}:2: not valid JSON"):
        read_vqa(vqa_dir, "train2014")
    qfile.write_text(json.dumps({"questions": [{"image_id": 1, "question": "Q?"}]}))
    with pytest.raises(DataError, match=r"questions\[0\]: no key 'question_id'"):
        read_vqa(vqa_dir, "train2014")
    qfile.write_text(json.dumps({"questions": [{"image_id": "1", "question": "Q", "question_id": 101}]}))  # fmt: skip
    with pytest.raises(DataError, match=r"questions\[0\]: 'image_id' must be int"):
        read_vqa(vqa_dir, "train2014")
    qfile.write_text(json.dumps({"questions": [{"image_id": 1, "question": "Q", "question_id": 999}]}))  # fmt: skip
    with pytest.raises(DataError, match=f"{afile}: no annotation for question_id 999"):
        read_vqa(vqa_dir, "train2014")
    qfile.write_text(good_q)
    anns = json.loads(good_a)
    del anns["annotations"][1]["answers"][3]["answer"]
    afile.write_text(json.dumps(anns))
    with pytest.raises(DataError, match=r"annotations\[1\].answers\[3\]: no key 'answer'"):
        read_vqa(vqa_dir, "train2014")
    qfile.write_bytes(b'{"questions": ["\xff"]}')
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_vqa(vqa_dir, "train2014")


def test_answer_vocabulary_counts_normalised_answers(vqa_dir: Path) -> None:
    vocab = build_answer_vocab(read_vqa(vqa_dir, "train2014"))
    # "2" x4 + "two" x2 -> "2": 6; "yes" 7; "Red" -> "red" 5; "3" 4; "no" 3; "blue" 3;
    # "the" normalises to "" and is left out; ties (no/blue: 3) broken alphabetically.
    assert vocab.answers == ("yes", "2", "red", "3", "blue", "no")
    assert vocab.counts == (7, 6, 5, 4, 3, 3)
    assert vocab.index["red"] == 2
    top = build_answer_vocab(read_vqa(vqa_dir, "train2014"), size=3)
    assert top.answers == ("yes", "2", "red") and len(top) == 3
    with pytest.raises(ValueError, match="no human answers"):
        build_answer_vocab(read_vqa(vqa_dir, "test-dev2015"))


def test_soft_targets_by_hand() -> None:
    vocab = AnswerVocab(("yes", "no", "2"), (1, 1, 1))
    answers = ["Yes"] * 2 + ["no"] + ["two"] * 2 + ["2"] * 2 + ["blue"] * 3
    target = soft_target(answers, vocab)
    # yes: 2 annotators -> 2/3; no: 1 -> 1/3; "two"/"2": 4 -> 1; blue: not in the vocabulary
    assert target.indices == (0, 1, 2)
    assert target.scores == pytest.approx((2 / 3, 1 / 3, 1.0))
    dense = dense_targets([target, soft_target(["blue"] * 10, vocab)], len(vocab))
    assert dense.dtype == np.float32 and dense.shape == (2, 3)
    np.testing.assert_allclose(dense, [[2 / 3, 1 / 3, 1.0], [0, 0, 0]], rtol=1e-6)


def test_results_file_round_trip_scores(vqa_dir: Path, tmp_path: Path) -> None:
    records = read_vqa(vqa_dir, "val2014")
    out = tmp_path / "out"
    path = write_results({202: "one", 201: "Yes"}, records, out, "val2014")
    assert path == out / "vqa_OpenEnded_mscoco_val2014_clippo_results.json"
    assert json.loads(path.read_text()) == [
        {"question_id": 201, "answer": "Yes"},
        {"question_id": 202, "answer": "one"},
    ]
    # 201: ten "yes" -> 1. 202: "one" -> "1"; humans disagree, "one" stays "one": 3 match -> 0.9
    result = vqa_accuracy(read_results(path), records)
    assert result["overall"] == pytest.approx((1 + 0.9) / 2)
    assert result["per_answer_type"] == pytest.approx({"number": 0.9, "yes/no": 1.0})


def test_results_need_every_question_and_keep_the_old_file(vqa_dir: Path, tmp_path: Path) -> None:
    records = read_vqa(vqa_dir, "val2014")
    path = write_results({201: "yes", 202: "1"}, records, tmp_path, "val2014")
    before = path.read_text()
    with pytest.raises(
        ValueError, match=r"1 question\(s\) without a prediction \(first: \[202\]\)"
    ):
        write_results({201: "no"}, records, tmp_path, "val2014")
    with pytest.raises(ValueError, match=r"1 prediction\(s\) for unknown question ids"):
        write_results({201: "no", 202: "1", 5: "x"}, records, tmp_path, "val2014")
    assert path.read_text() == before
    assert results_file(tmp_path, "test-dev2015").name == (
        "vqa_OpenEnded_mscoco_test-dev2015_clippo_results.json"
    )
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps([{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}])
    )
    with pytest.raises(DataError, match=r"\[1\]: question_id 1 appears twice"):
        read_results(bad)
