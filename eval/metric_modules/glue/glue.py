"""GLUE's metrics as a local `evaluate` module, computed by `clippo.eval.glue_metrics`.

    import evaluate
    from clippo.eval.glue_metrics import evaluate_module_path
    metric = evaluate.load(str(evaluate_module_path()), "mrpc")   # offline, from the package
    metric.compute(predictions=[1, 0, 1], references=[1, 1, 1])   # {"f1": 0.8, "accuracy": ...}

The config name is a GLUE task (`cola`, `sst2`, `mrpc`, `stsb`, `qqp`, `mnli`, `qnli`, `rte`,
`wnli`) or an MNLI evaluation name (`mnli_m`, `mnli_mm`), as with the hub's `glue` metric.
Predictions and references are class indices (STS-B: float scores). The metric names are
clippo's (`matthews_corrcoef`, not the hub's `matthews_correlation`); values are fractions.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate

from clippo.eval.glue_metrics import metric_names, task_metrics

_DESCRIPTION = "GLUE's per-task metrics (Wang et al., 2018), computed by clippo.eval.glue_metrics."
_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer
          and Bowman, Samuel R.},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""
_INPUTS = """\
Args:
    predictions: class indices, or float scores for stsb.
    references: the gold class indices, or float scores for stsb.
Returns: accuracy; f1 (mrpc, qqp; class 1); matthews_corrcoef (cola); pearson, spearman (stsb).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class Glue(evaluate.Metric):
    """GLUE's metrics for the task named by `config_name`."""

    def _info(self) -> evaluate.MetricInfo:
        names = metric_names(self.config_name)  # ValueError listing the tasks for a bad name
        dtype = "float64" if "pearson" in names else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}
            ),
            format="numpy",
        )

    def _compute(self, predictions: Any, references: Any) -> dict[str, float]:
        return task_metrics(self.config_name, predictions, references)
