"""The official VQA accuracy, as GT-Vision-Lab's `vqaEval.py` computes it, in pure Python/numpy.

Reproduced from the "updated for v2.0" version (2017, github.com/GT-Vision-Lab/VQA commit
a4f1afd), the one most projects vendor:

- The predicted answer is always normalised (`normalize_answer`): newlines and tabs become
  spaces and the ends are stripped; then the punctuation step (`process_punctuation`); then lower
  case, number words to digits, articles dropped and contractions restored
  (`process_digits_articles`).
- The human answers are used as written, except that when the annotators of a question disagree
  (more than one distinct answer) each gets the punctuation step. They are neither stripped nor
  lower-cased nor given the digit/article step.
- A prediction scores min(#matching human answers / 3, 1), averaged over the ten leave-one-out
  subsets of nine annotators (`vqa_score`): 1, 2, 3 and 4+ matching annotators give 0.3, 0.6,
  0.9 and 1.0.
- `vqa_accuracy` averages over questions, overall, per answer type and per question type. The
  official code prints percentages rounded to 2 decimals; these are fractions in [0, 1] at full
  precision.

The 2021 revision ("Fixed processing answers bug", commit a013f00, the repository's head) differs:
it strips newlines, tabs and the ends of the human answers always; and the prediction gets the
punctuation and digit/article steps only when the annotators disagree, in which case the human
answers get both steps too. So when all ten annotators agree the prediction is compared stripped
but otherwise raw ("Two" or "two" no longer matches ten "2"); when they disagree both sides are
fully normalised. Results published before 2021 used the 2017 behaviour, which this module
keeps.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "AnnotatedQuestion",
    "evaluate_module_path",
    "human_answers_for_matching",
    "normalize_answer",
    "process_digits_articles",
    "process_punctuation",
    "vqa_accuracy",
    "vqa_score",
    "vqa_scores",
]

# Removed (or turned into a space) by the punctuation step. Not here, as in the official list:
# the apostrophe (contractions keep it), the period (its own rule below), ':', '#', '$', '%',
# '&', '*', '~', '^', '|'.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")  # fmt: skip
# A comma between two digits ("1,000") anywhere in the text switches every mark to deletion.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a look-ahead for the text
# "<=" followed by a digit (a mistyped look-behind), which never matches at a period, so the
# pattern removes every period not followed by a digit ("5." -> "5", "1.5" and ".5" kept).
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official call passes `re.UNICODE` (= 32) positionally as `count`: at most 32 periods go.
_PERIOD_COUNT = int(re.UNICODE)

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
# Answers written without the apostrophe, mapped to the spelling with it. The table is the
# official one, oddities included: keys with capitals ("Im", "Ive", "Id've", "I'dve") never
# match (words are lower-cased first), and "somebody'd" maps to "somebodyd".
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip


def process_punctuation(text: str) -> str:
    """The official punctuation step. Each listed mark is deleted when it touches a space
    somewhere in `text` ("yes, it" -> "yes it") or when `text` has a digit-comma-digit anywhere
    ("1,000" -> "1000"), and otherwise becomes a space ("black/white" -> "black white"); then
    periods not followed by a digit are deleted ("5." -> "5", "1.5" kept). Whitespace is left
    as it falls (no collapsing)."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        # The test reads the original text, not the partly processed one, as the official does.
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_COUNT)


def process_digits_articles(text: str) -> str:
    """The official word step: lower case, split on whitespace, number words "none" and
    "zero".."ten" to digits, articles (a, an, the) dropped, contractions restored ("dont" ->
    "don't"), words joined by single spaces."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_answer(text: str) -> str:
    """The full normalisation of a predicted answer (and of answers for the vocabulary):
    newlines and tabs to spaces, ends stripped, punctuation step, word step."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digits_articles(process_punctuation(text))


def human_answers_for_matching(human_answers: Sequence[str]) -> list[str]:
    """The human answers as the official code compares them: given the punctuation step only
    when they are not all the same, otherwise untouched."""
    if len(set(human_answers)) > 1:
        return [process_punctuation(answer) for answer in human_answers]
    return list(human_answers)


def vqa_score(prediction: str, human_answers: Sequence[str]) -> float:
    """One prediction's VQA accuracy in [0, 1] against its (ten) human answers: min(#matches / 3,
    1) averaged over the leave-one-out subsets (each annotator left out once)."""
    humans = human_answers_for_matching(human_answers)
    if not humans:
        raise ValueError("vqa_score needs at least one human answer (test splits have none)")
    predicted = normalize_answer(prediction)
    matches = sum(answer == predicted for answer in humans)
    # Leaving out one of the `matches` agreeing annotators leaves matches - 1 matches; leaving
    # out any of the others leaves all of them.
    total = matches * min((matches - 1) / 3, 1.0) + (len(humans) - matches) * min(matches / 3, 1.0)
    return total / len(humans)


def vqa_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """`vqa_score` of each prediction against its human answers: float64 [N]."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} lists of human answers"
        )
    return np.array([vqa_score(p, r) for p, r in zip(predictions, references)], dtype=np.float64)


class AnnotatedQuestion(Protocol):
    """What `vqa_accuracy` reads of a question (`clippo.eval.vqa_data.VQARecord` has it)."""

    @property
    def question_id(self) -> int: ...
    @property
    def question_type(self) -> str: ...
    @property
    def answer_type(self) -> str: ...
    @property
    def answers(self) -> Sequence[str]: ...


def _ids_excerpt(ids: Iterable[Any], limit: int = 5) -> str:
    ids = sorted(ids, key=str)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(map(str, ids[:limit])) + more


def vqa_accuracy(
    predictions: Mapping[int, str], questions: Iterable[AnnotatedQuestion]
) -> dict[str, Any]:
    """The official VQA accuracy of `predictions` (question id -> answer) on annotated questions.

    As the official code requires, the predictions cover exactly the questions given (a missing
    or an extra question id is an error). Returns fractions in [0, 1]:
    {"overall": float, "per_answer_type": {type: float}, "per_question_type": {type: float}},
    each the mean of the per-question scores in that group (types sorted by name).
    """
    questions = list(questions)
    if not questions:
        raise ValueError("vqa_accuracy: no questions to score")
    ids = [q.question_id for q in questions]
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise ValueError(f"vqa_accuracy: question id(s) given twice: {_ids_excerpt(repeated)}")
    missing = set(ids) - set(predictions)
    if missing:
        raise ValueError(f"vqa_accuracy: no prediction for question id(s) {_ids_excerpt(missing)}")
    extra = set(predictions) - set(ids)
    if extra:
        raise ValueError(
            f"vqa_accuracy: predictions for question id(s) not in the questions: "
            f"{_ids_excerpt(extra)}"
        )
    unannotated = [q.question_id for q in questions if not q.answers]
    if unannotated:
        raise ValueError(
            f"vqa_accuracy: question id(s) {_ids_excerpt(unannotated)} have no human answers "
            "(a test split is scored by the evaluation server, not here)"
        )
    scores = vqa_scores([predictions[i] for i in ids], [q.answers for q in questions])
    return {
        "overall": float(scores.mean()),
        "per_answer_type": _group_means(scores, [q.answer_type for q in questions]),
        "per_question_type": _group_means(scores, [q.question_type for q in questions]),
    }


def _group_means(scores: np.ndarray, groups: Sequence[str]) -> dict[str, float]:
    members: dict[str, list[int]] = {}
    for row, group in enumerate(groups):
        members.setdefault(group, []).append(row)
    return {group: float(scores[members[group]].mean()) for group in sorted(members)}


def evaluate_module_path() -> str:
    """The folder of the local `evaluate` module `vqa_accuracy` shipped with the package, for
    `evaluate.load(evaluate_module_path())` (offline: nothing is fetched for a local path)."""
    return str(Path(__file__).resolve().parent / "metric_modules" / "vqa_accuracy")
