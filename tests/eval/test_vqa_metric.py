"""The official VQA accuracy (vqaEval.py, 2017 version): every normalisation step, the
disagree-only rule for the human answers and the leave-one-out average, worked by hand."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from clippo.eval.vqa_metric import (
    evaluate_module_path,
    human_answers_for_matching,
    normalize_answer,
    process_digits_articles,
    process_punctuation,
    vqa_accuracy,
    vqa_score,
    vqa_scores,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("black/white", "black white"),  # a mark touching no space becomes a space
        ("yes, it is", "yes it is"),  # a mark touching a space is deleted
        ("(left)", " left "),  # no space around either bracket: both become spaces
        ("a-b c -d", "ab c d"),  # one '-' touches a space: every '-' is deleted
        ("a - b", "a  b"),  # deleted, and the two spaces are left as they are
        # the space test reads the original text: the space left by ';' does not make ','
        # "touch a space", so ',' becomes a space too
        ("a;,b", "a  b"),
        ("red/blue 1,5", "redblue 15"),  # a digit-comma-digit anywhere deletes every mark
        ("yes.", "yes"),  # a period not followed by a digit goes
        ("5.", "5"),
        ("1.5", "1.5"),  # a period before a digit stays (decimals)
        (".5", ".5"),
        ("2.5.", "2.5"),
        ("it's 3:00", "it's 3:00"),  # the apostrophe and ':' are not in the official list
        ("what?!", "what  "),  # '?' and '!' each become a space
        ("." * 40, "." * 8),  # re.UNICODE passed as `count`: at most 32 periods go
    ],
)
def test_punctuation_step(text: str, expected: str) -> None:
    assert process_punctuation(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two Dogs", "2 dogs"),  # lower case, number words to digits
        ("none", "0"),
        ("zero", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only none, zero..ten are mapped
        ("the a an cat", "cat"),  # articles dropped
        ("an apple", "apple"),
        ("theater", "theater"),  # whole words only
        ("dont know", "don't know"),  # contractions restored
        ("Im", "im"),  # the table's capitalised keys never match after lower-casing
        ("somebody'd", "somebodyd"),  # an oddity of the official table, kept
        ("  a   big\tdog ", "big dog"),  # split on whitespace, joined by single spaces
    ],
)
def test_digit_article_step(text: str, expected: str) -> None:
    assert process_digits_articles(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\tTwo  Dogs.\n", "2 dogs"),
        ("Yes!", "yes"),
        ("the-end", "end"),  # punctuation first ("the end"), then the article goes
        ("a man's hat", "man's hat"),
        ("1,000", "1000"),
        ("Three.", "3"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_human_answers_get_punctuation_only_when_they_disagree() -> None:
    # all ten agree: used as written, so a normalised prediction cannot match "yes."
    assert human_answers_for_matching(["yes."] * 10) == ["yes."] * 10
    assert vqa_score("yes.", ["yes."] * 10) == 0.0
    # they disagree: punctuation step only (no lower case), so "yes." matches but "Yes." not
    assert human_answers_for_matching(["yes."] * 9 + ["no"]) == ["yes"] * 9 + ["no"]
    assert vqa_score("Yes", ["yes."] * 9 + ["no"]) == pytest.approx(1.0)
    assert vqa_score("yes", ["Yes."] * 9 + ["no"]) == 0.0
    # never the digit step: a prediction "two" (-> "2") matches "2" but not "two"
    assert vqa_score("two", ["two"] * 10) == 0.0
    assert vqa_score("two", ["2"] * 10) == pytest.approx(1.0)
    assert vqa_score("two", ["two"] * 5 + ["2"] * 5) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("matching", "expected"),
    [
        # ten annotators, `matching` of them say "cat". Leaving out a matching one (matching
        # times) leaves matching - 1; leaving out another (10 - matching times) leaves matching.
        (0, 0.0),
        (1, (1 * 0 + 9 * (1 / 3)) / 10),  # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
        (3, (3 * (2 / 3) + 7 * 1) / 10),  # 0.9
        (4, (4 * 1 + 6 * 1) / 10),  # 1.0
        (10, 1.0),
    ],
)
def test_leave_one_out_average(matching: int, expected: float) -> None:
    humans = ["cat"] * matching + ["dog"] * (10 - matching)
    assert vqa_score("cat", humans) == pytest.approx(expected)
    assert vqa_score("cat", humans) == pytest.approx([0, 0.3, 0.6, 0.9, 1, 1, 1, 1, 1, 1, 1][matching])  # fmt: skip


def _naive_score(prediction: str, humans: list[str]) -> float:
    """The ten nine-annotator subsets spelled out (after the same normalisation)."""
    predicted = normalize_answer(prediction)
    humans = human_answers_for_matching(humans)
    subsets = itertools.combinations(range(len(humans)), len(humans) - 1)
    accs = [min(sum(humans[i] == predicted for i in s) / 3, 1) for s in subsets]
    return sum(accs) / len(accs)


def test_matches_naive_subsets_on_random_answers() -> None:
    rng = np.random.default_rng(0)
    pool = ["yes", "no", "2", "two", "red.", "red", "Red"]
    for _ in range(200):
        humans = [str(a) for a in rng.choice(pool, size=10)]
        prediction = str(rng.choice(pool))
        assert vqa_score(prediction, humans) == pytest.approx(_naive_score(prediction, humans))


@dataclass(frozen=True)
class Q:
    question_id: int
    question_type: str
    answer_type: str
    answers: tuple[str, ...]


QUESTIONS = [
    Q(1, "is the", "yes/no", ("yes",) * 10),
    Q(2, "how many", "number", ("2",) * 2 + ("3",) * 8),
    Q(3, "what color", "other", ("red",) * 3 + ("blue",) * 7),
    Q(4, "is the", "yes/no", ("no",) * 10),
]


def test_vqa_accuracy_overall_and_per_type() -> None:
    # scores: 1 (yes), 0.6 (two -> 2, 2 of 10), 0.9 (red, 3 of 10), 0 (yes vs no)
    predictions = {1: "Yes", 2: "two", 3: "red", 4: "yes"}
    result = vqa_accuracy(predictions, QUESTIONS)
    assert set(result) == {"overall", "per_answer_type", "per_question_type"}
    assert result["overall"] == pytest.approx((1 + 0.6 + 0.9 + 0) / 4)
    assert result["per_answer_type"] == pytest.approx({"number": 0.6, "other": 0.9, "yes/no": 0.5})
    assert list(result["per_answer_type"]) == ["number", "other", "yes/no"]
    assert result["per_question_type"] == pytest.approx(
        {"how many": 0.6, "is the": 0.5, "what color": 0.9}
    )


def test_vqa_accuracy_needs_exactly_the_questions() -> None:
    answers = {1: "yes", 2: "2", 3: "red", 4: "no"}
    with pytest.raises(ValueError, match="no prediction for question id.*4"):
        vqa_accuracy({k: v for k, v in answers.items() if k != 4}, QUESTIONS)
    with pytest.raises(ValueError, match="not in the questions: 99"):
        vqa_accuracy({**answers, 99: "x"}, QUESTIONS)
    with pytest.raises(ValueError, match="given twice: 1"):
        vqa_accuracy(answers, [*QUESTIONS, QUESTIONS[0]])
    with pytest.raises(ValueError, match="no human answers"):
        vqa_accuracy({5: "yes"}, [Q(5, "", "", ())])
    with pytest.raises(ValueError, match="no questions"):
        vqa_accuracy({}, [])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        vqa_scores(["a", "b"], [["a"] * 10])


def test_evaluate_module_loads_offline_and_agrees(tmp_path: Path) -> None:
    """`evaluate.load(<package folder>)` in a fresh process with the Hub off and every cache in
    tmp_path gives the pure function's number."""
    predictions = ["Yes", "two", "red", "yes"]
    references = [list(q.answers) for q in QUESTIONS]
    folder = evaluate_module_path()
    assert (Path(folder) / "vqa_accuracy.py").is_file()
    script = (
        "import json, sys, evaluate\n"
        "folder, preds, refs, cache = json.loads(sys.argv[1])\n"
        "metric = evaluate.load(folder, cache_dir=cache)\n"
        "print(json.dumps(metric.compute(predictions=preds, references=refs)))\n"
    )
    arg = json.dumps([folder, predictions, references, str(tmp_path / "metrics")])
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HF_MODULES_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", script, arg], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"overall": pytest.approx(float(vqa_scores(predictions, references).mean()))}
    assert result["overall"] == pytest.approx((1 + 0.6 + 0.9 + 0) / 4)
