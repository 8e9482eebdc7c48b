"""VQA accuracy as a local `evaluate` metric: `evaluate.load(clippo.eval.vqa_metric.evaluate_module_path())`.

A thin wrapper over the pure functions in `clippo.eval.vqa_metric` (the official GT-Vision-Lab
`vqaEval.py` accuracy, 2017 version): a local path loads without the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate

from clippo.eval.vqa_metric import vqa_scores

_DESCRIPTION = (
    "VQA accuracy (GT-Vision-Lab vqaEval.py, v2.0 version): the predicted answer is normalised "
    "(punctuation, lower case, number words to digits, articles, contractions), the human "
    "answers get the punctuation step when they disagree; a prediction scores min(#matching "
    "human answers / 3, 1) averaged over the ten leave-one-out subsets of nine annotators. "
    "Returns the mean over predictions as a fraction in [0, 1]."
)

_INPUTS = """
Args:
    predictions: list of str, one predicted answer per question.
    references: list of lists of str, the (ten) human answers of each question.
Returns:
    overall: float in [0, 1], the mean VQA accuracy.
Example:
    >>> metric = evaluate.load(path)
    >>> metric.compute(predictions=["two"], references=[["2"] * 10])
    {'overall': 1.0}
"""

_CITATION = """@inproceedings{goyal2017making,
  title={Making the V in VQA Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={CVPR},
  year={2017}
}"""


class VqaAccuracy(evaluate.Metric):
    """The official VQA accuracy, averaged over the predictions given."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/GT-Vision-Lab/VQA"],
        )

    def _compute(
        self, predictions: Sequence[str], references: Sequence[Sequence[str]]
    ) -> dict[str, float]:
        if not predictions:
            raise ValueError("vqa_accuracy: no predictions to score")
        return {"overall": float(vqa_scores(predictions, references).mean())}
