"""VQAv2 as distributed: questions, annotations and COCO images in the official layout; the answer
vocabulary and soft targets for a classification head; the official results file.

Layout (`LAYOUT`), with `split` e.g. train2014, val2014, test2015, test-dev2015:

    DIR/v2_OpenEnded_mscoco_{split}_questions.json
    DIR/v2_mscoco_{split}_annotations.json            (absent for the test splits)
    DIR/{image_split}/COCO_{image_split}_{image_id:012d}.jpg

where `image_split` is the split itself, except test-dev2015, whose questions use the test2015
images.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from clippo.atomic import write_json_atomic
from clippo.errors import DataError, read_utf8
from clippo.eval.datasets import read_json
from clippo.eval.vqa_metric import normalize_answer

__all__ = [
    "LAYOUT",
    "AnswerVocab",
    "SoftTarget",
    "VQARecord",
    "annotations_file",
    "build_answer_vocab",
    "dense_targets",
    "image_path",
    "image_split",
    "is_test_split",
    "questions_file",
    "read_results",
    "read_vqa",
    "results_file",
    "soft_target",
    "write_results",
]

LAYOUT = (
    "DIR/v2_OpenEnded_mscoco_<split>_questions.json, DIR/v2_mscoco_<split>_annotations.json "
    "(not for test splits), images DIR/<image split>/COCO_<image split>_<image_id:012d>.jpg "
    "(test-dev2015 uses the test2015 images)"
)
DEFAULT_VOCAB_SIZE = 3129  # the answer set of Teney et al. 2018, used by most VQAv2 heads


@dataclass(frozen=True)
class VQARecord:
    """One question. `answers` holds the (ten) human answers as written, `question_type` and
    `answer_type` the annotation's; for a test split the three are empty."""

    question_id: int
    image_id: int
    image_path: Path
    question: str
    question_type: str
    answer_type: str
    answers: tuple[str, ...]


def is_test_split(split: str) -> bool:
    """test2015 and test-dev2015 (and any other test*) ship questions without annotations."""
    return split.startswith("test")


def image_split(split: str) -> str:
    """The image folder of a split's questions: the split itself, test2015 for test-dev2015."""
    return "test2015" if split == "test-dev2015" else split


def questions_file(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"v2_OpenEnded_mscoco_{split}_questions.json"


def annotations_file(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"v2_mscoco_{split}_annotations.json"


def image_path(data_dir: str | Path, split: str, image_id: int) -> Path:
    folder = image_split(split)
    return Path(data_dir) / folder / f"COCO_{folder}_{image_id:012d}.jpg"


def results_file(out_dir: str | Path, split: str) -> Path:
    """The official results name: `vqa_OpenEnded_mscoco_<split>_clippo_results.json`."""
    return Path(out_dir) / f"vqa_OpenEnded_mscoco_{split}_clippo_results.json"


def _load_json(path: Path, what: str, split: str) -> Any:
    return read_json(path, f"VQAv2 {split}: no {what} file {path} (expected layout: {LAYOUT})")


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    """obj[key], checked to be a `kind` (bool does not pass for int)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise DataError(f"{where}: no key {key!r} (keys: {sorted(obj)})")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(f"{where}: {key!r} must be {kind.__name__}, got {value!r:.60}")
    return value


def _annotated(path: Path, ann: Any, where: str) -> tuple[str, str, tuple[str, ...], int]:
    answers = _field(ann, "answers", list, where)
    if not answers:
        raise DataError(f"{path}: {where}: empty 'answers' list")
    texts = tuple(_field(a, "answer", str, f"{path}: {where}.answers[{j}]") for j, a in enumerate(answers))  # fmt: skip
    return (
        _field(ann, "question_type", str, f"{path}: {where}"),
        _field(ann, "answer_type", str, f"{path}: {where}"),
        texts,
        _field(ann, "image_id", int, f"{path}: {where}"),
    )


def read_vqa(
    data_dir: str | Path,
    split: str,
    max_examples: int | None = None,
    check_images: bool = True,
) -> list[VQARecord]:
    """The questions of `split` in file order (the first `max_examples` if given), joined with
    their annotations (not for test splits). Missing files raise FileNotFoundError naming the
    file and the layout; malformed JSON raises DataError naming the file and key."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"VQAv2 data folder not found: {data_dir} (expected: {LAYOUT})")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be positive, got {max_examples}")
    qpath = questions_file(data_dir, split)
    questions = _field(_load_json(qpath, "questions", split), "questions", list, str(qpath))
    questions = questions[:max_examples]
    by_id: dict[int, Any] = {}
    apath = annotations_file(data_dir, split)
    if not is_test_split(split):
        raw = _field(_load_json(apath, "annotations", split), "annotations", list, str(apath))
        for i, ann in enumerate(raw):
            by_id[_field(ann, "question_id", int, f"{apath}: annotations[{i}]")] = (i, ann)
    records = []
    for i, q in enumerate(questions):
        where = f"{qpath}: questions[{i}]"
        qid = _field(q, "question_id", int, where)
        image_id = _field(q, "image_id", int, where)
        text = _field(q, "question", str, where)
        qtype, atype = "", ""
        answers: tuple[str, ...] = ()
        if not is_test_split(split):
            if qid not in by_id:
                raise DataError(f"{apath}: no annotation for question_id {qid} of {qpath}")
            j, ann = by_id[qid]
            qtype, atype, answers, ann_image = _annotated(apath, ann, f"annotations[{j}]")
            if ann_image != image_id:
                raise DataError(
                    f"{apath}: annotations[{j}] (question_id {qid}) has image_id {ann_image}, "
                    f"the questions file {image_id}"
                )
        path = image_path(data_dir, split, image_id)
        records.append(VQARecord(qid, image_id, path, text, qtype, atype, answers))
    if check_images:
        missing = [r for r in records if not r.image_path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"VQAv2 {split}: image {missing[0].image_path} of question "
                f"{missing[0].question_id} not found ({len(missing)} of {len(records)} images "
                f"missing; expected layout: {LAYOUT})"
            )
    return records


@dataclass(frozen=True)
class AnswerVocab:
    """The answer classes: `answers[i]` (normalised) was given `counts[i]` times."""

    answers: tuple[str, ...]
    counts: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.answers)

    @cached_property
    def index(self) -> dict[str, int]:
        """answer -> class index."""
        return {answer: i for i, answer in enumerate(self.answers)}


def build_answer_vocab(records: Iterable[VQARecord], size: int = DEFAULT_VOCAB_SIZE) -> AnswerVocab:
    """The `size` most frequent training answers after `normalize_answer`.

    Every human answer counts (ten votes per question), as the soft targets are built from all
    ten. (Code derived from bottom-up-attention counts each question's `multiple_choice_answer`
    instead and keeps the answers seen at least 9 times over train+val, which gives its 3,129.)
    Answers that normalise to the empty string are left out. Ties are broken by the answer
    string, so the vocabulary does not depend on file order.
    """
    if size < 1:
        raise ValueError(f"answer vocabulary size must be positive, got {size}")
    counts = Counter(normalize_answer(a) for r in records for a in r.answers)
    counts.pop("", None)
    if not counts:
        raise ValueError("no human answers to build an answer vocabulary from (a test split?)")
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:size]
    return AnswerVocab(tuple(a for a, _ in ranked), tuple(c for _, c in ranked))


@dataclass(frozen=True)
class SoftTarget:
    """A sparse target over the vocabulary: `scores[k]` at class `indices[k]`, 0 elsewhere."""

    indices: tuple[int, ...]
    scores: tuple[float, ...]


def soft_target(answers: Sequence[str], vocab: AnswerVocab) -> SoftTarget:
    """min(#annotators who gave the answer / 3, 1) for each vocabulary answer among the
    (normalised) human answers; answers outside the vocabulary are dropped. Indices ascending.
    (Bottom-up-attention code uses min(0.3 * count, 1) instead, the leave-one-out average that
    `vqa_score` computes.)"""
    counts = Counter(normalize_answer(a) for a in answers)
    hits = sorted((vocab.index[a], min(c / 3, 1.0)) for a, c in counts.items() if a in vocab.index)
    return SoftTarget(tuple(i for i, _ in hits), tuple(s for _, s in hits))


def dense_targets(targets: Sequence[SoftTarget], num_answers: int) -> np.ndarray:
    """The soft targets as a float32 [N, num_answers] array, for binary cross-entropy."""
    out = np.zeros((len(targets), num_answers), dtype=np.float32)
    for row, target in enumerate(targets):
        out[row, list(target.indices)] = target.scores
    return out


def write_results(
    predictions: Mapping[int, str],
    questions: Iterable[VQARecord],
    out_dir: str | Path,
    split: str,
) -> Path:
    """Write the official results file `[{"question_id": int, "answer": str}]` (in question order)
    for every question given, atomically. A question without a prediction, or a prediction for a
    question not given, is an error (the official scorer and server reject both)."""
    ids = [q.question_id for q in questions]
    missing = [i for i in ids if i not in predictions]
    extra = set(predictions) - set(ids)
    if missing or extra:
        raise ValueError(
            f"VQAv2 {split} results: {len(missing)} question(s) without a prediction "
            f"(first: {missing[:3]}), {len(extra)} prediction(s) for unknown question ids "
            f"(first: {sorted(extra)[:3]})"
        )
    rows = [{"question_id": int(i), "answer": str(predictions[i])} for i in ids]
    return write_json_atomic(rows, results_file(out_dir, split))


def read_results(path: str | Path) -> dict[int, str]:
    """A results file in the official format, as question id -> answer."""
    path = Path(path)
    try:
        rows = json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of {{question_id, answer}} objects")
    out: dict[int, str] = {}
    for i, row in enumerate(rows):
        qid = _field(row, "question_id", int, f"{path}: [{i}]")
        if qid in out:
            raise DataError(f"{path}: [{i}]: question_id {qid} appears twice")
        out[qid] = _field(row, "answer", str, f"{path}: [{i}]")
    return out
