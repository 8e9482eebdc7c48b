"""The GLUE suite end to end: `clippo eval glue` on small glue_data / Hugging Face folders written
here, results.json's layout, predictions that recompute the metrics, the submission, the cache,
a task a random tiny model can learn, and the real GLUE files when ../shared is present."""

from __future__ import annotations

import csv
import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import clippo
from clippo.cli import main
from clippo.eval.glue import GlueOptions, run_glue
from clippo.eval.glue_metrics import task_metrics
from clippo.eval.glue_tasks import GLUE_TASKS

SHARED_GLUE = Path(__file__).resolve().parents[3] / "shared" / "glue_data"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny"
    clippo.CLIPPO.from_variant("tiny-test", image_size=64).save(path)
    return path


def _write_tsv(path: Path, header: list[str] | None, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _sentence(label: int, i: int) -> str:
    # the class is written in the pixels: long runs of one glyph vs another
    return ("XXXX XXXX XXXX " if label else "ii ii ii ii ") + str(i)


def _glue_folder(root: Path, n_train: int = 80, n_dev: int = 30) -> Path:
    """SST-2, CoLA (headerless), RTE (pairs) and STS-B in the glue_data layout, plus test files."""
    rng = np.random.default_rng(0)
    for folder, n in (("train", n_train), ("dev", n_dev)):
        labels = rng.integers(0, 2, n)
        _write_tsv(
            root / "SST-2" / f"{folder}.tsv",
            ["sentence", "label"],
            [[_sentence(int(y), i), str(y)] for i, y in enumerate(labels)],
        )
        _write_tsv(
            root / "CoLA" / f"{folder}.tsv",
            None,
            [["gj04", str(y), "", _sentence(int(y), i)] for i, y in enumerate(labels)],
        )
        _write_tsv(
            root / "RTE" / f"{folder}.tsv",
            ["index", "sentence1", "sentence2", "label"],
            [
                [str(i), _sentence(int(y), i), "a hypothesis", ("not_entailment", "entailment")[y]]
                for i, y in enumerate(labels)
            ],
        )
        scores = rng.uniform(0, 5, n)
        _write_tsv(
            root / "STS-B" / f"{folder}.tsv",
            ["index", "genre", "filename", "year", "old_index", "source1", "source2"]
            + ["sentence1", "sentence2", "score"],
            [
                [str(i), "g", "f", "y", "o", "s", "s", _sentence(int(s > 2.5), i), "b", f"{s:.3f}"]
                for i, s in enumerate(scores)
            ],
        )
    _write_tsv(root / "SST-2" / "test.tsv", ["index", "sentence"], [["0", "a"], ["1", "b"]])
    return root


def test_cli_writes_results_predictions_and_recomputable_metrics(
    tmp_path: Path, model_dir: Path
) -> None:
    data = _glue_folder(tmp_path / "glue_data")
    out = tmp_path / "out"
    code = main(
        ["eval", "--model", str(model_dir), "--out", str(out), "glue", "--data-dir", str(data)]
        + ["--tasks", "sst2,cola,rte,stsb", "--seeds", "2", "--batch-size", "32"]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    assert set(metrics) == {"cola", "sst2", "rte", "stsb", "average_clippo", "average_glue"}
    assert (
        metrics["average_clippo"] is None
        and "mrpc" in results["averages"]["average_clippo"]["missing"]
    )
    assert set(metrics["stsb"]["mean"]) == {"pearson", "spearman"}
    assert set(metrics["cola"]["mean"]) == {"matthews_corrcoef"}
    for entry in ("cola", "sst2", "rte", "stsb"):
        seeds = metrics[entry]["seeds"]
        assert len(seeds) == 2
        for k, mean in metrics[entry]["mean"].items():
            assert mean == pytest.approx(np.mean([s[k] for s in seeds]))
            assert metrics[entry]["std"][k] == pytest.approx(np.std([s[k] for s in seeds]))
        # seed 0's metrics recomputed from its predictions file alone
        task = GLUE_TASKS[entry]
        with open(out / "predictions" / f"{entry}.dev.tsv", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        assert len(rows) == 30 and [int(r["index"]) for r in rows] == list(range(30))

        def decode(value: str, kind: str = task.kind, labels: tuple = task.labels) -> float:
            return float(value) if kind == "regression" else labels.index(value)

        pred = np.array([decode(r["prediction"]) for r in rows])
        gold = np.array([decode(r["label"]) for r in rows])
        again = task_metrics(entry, pred, gold)
        assert again == pytest.approx(seeds[0])
    assert results["options"]["seeds"] == 2 and results["options"]["tasks"] == [
        "cola",
        "sst2",
        "stsb",
        "rte",
    ]
    assert results["tasks"]["cola"]["train"]["layout"] == "glue_data"
    assert "majority" in results["baseline"] and "cola" in results["baseline"]["majority"]


def test_a_visible_class_is_learned_well_above_the_majority(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = clippo.CLIPPO.from_variant("tiny-test", image_size=64)
    data = _glue_folder(tmp_path / "glue_data", n_train=200, n_dev=60)
    options = GlueOptions(data_dir=str(data), tasks=("sst2",), seeds=1, batch_size=64)
    result = run_glue(model, options, tmp_path / "out", log=lambda _: None)
    accuracy = result["metrics"]["sst2"]["mean"]["accuracy"]
    majority = result["baseline"]["majority"]["sst2"]["accuracy"]
    assert accuracy >= 0.9 and accuracy > majority + 0.3


def test_the_cache_skips_the_model_and_gives_the_same_metrics(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = clippo.CLIPPO.from_variant("tiny-test", image_size=64)
    calls = []
    model.vit.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    data = _glue_folder(tmp_path / "glue_data", n_train=40, n_dev=20)
    options = GlueOptions(
        data_dir=str(data), tasks=("rte",), seeds=1, cache_dir=str(tmp_path / "cache")
    )
    first = run_glue(model, options, tmp_path / "a", log=lambda _: None)
    assert calls
    calls.clear()
    second = run_glue(model, options, tmp_path / "b", log=lambda _: None)
    assert not calls
    assert second["metrics"] == first["metrics"]
    concat = GlueOptions(**{**options.__dict__, "pair_mode": "concat"})
    run_glue(model, concat, tmp_path / "c", log=lambda _: None)
    assert calls  # another pair mode is another key


def test_predict_test_writes_the_submission(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = clippo.CLIPPO.from_variant("tiny-test", image_size=32)
    data = _glue_folder(tmp_path / "glue_data", n_train=30, n_dev=10)
    options = GlueOptions(data_dir=str(data), tasks=("sst2",), seeds=1, predict_test=True)
    result = run_glue(model, options, tmp_path / "out", log=lambda _: None)
    with zipfile.ZipFile(result["submission"]) as zf:
        assert zf.namelist() == ["SST-2.tsv"]
        lines = zf.read("SST-2.tsv").decode().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 3
    assert all(line.split("\t")[1] in ("0", "1") for line in lines[1:])


def test_the_hugging_face_layout_gives_the_same_rows(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = clippo.CLIPPO.from_variant("tiny-test", image_size=32)
    tsv = _glue_folder(tmp_path / "glue_data", n_train=30, n_dev=10)
    hf = tmp_path / "hf" / "sst2"
    hf.mkdir(parents=True)
    for split, name in (("train", "train"), ("dev", "validation")):
        with open(tsv / "SST-2" / f"{split}.tsv") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        with open(hf / f"{name}.jsonl", "w") as f:
            for i, r in enumerate(rows):
                f.write(json.dumps({"sentence": r["sentence"], "label": int(r["label"]), "idx": i}))
                f.write("\n")
    a = run_glue(
        model, GlueOptions(str(tsv), ("sst2",), seeds=1), tmp_path / "a", log=lambda _: None
    )
    b = run_glue(
        model, GlueOptions(str(tmp_path / "hf"), ("sst2",), seeds=1), tmp_path / "b", log=print
    )
    assert b["tasks"]["sst2"]["train"]["layout"] == "jsonl"
    assert a["metrics"] == b["metrics"]


def test_a_missing_task_folder_is_one_line(tmp_path: Path, model_dir: Path, capsys) -> None:
    data = _glue_folder(tmp_path / "glue_data", n_train=10, n_dev=5)
    code = main(
        ["eval", "--model", str(model_dir), "--out", str(tmp_path / "o"), "glue"]
        + ["--data-dir", str(data), "--tasks", "mrpc"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "MRPC/train.tsv" in err and "Traceback" not in err


@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="../shared/glue_data is not present")
def test_the_real_glue_files_run_end_to_end(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "out"
    code = main(
        ["eval", "--model", str(model_dir), "--out", str(out), "glue"]
        + ["--data-dir", str(SHARED_GLUE), "--tasks", "all", "--max-examples", "40"]
        + ["--seeds", "1"]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["average_clippo"] is not None
    assert results["metrics"]["average_glue"] is not None
    for entry in ("mnli_m", "mnli_mm", "qqp", "qnli"):
        assert entry in results["metrics"]


def _finetune_options(data: Path, **kw: object) -> GlueOptions:
    from clippo.eval.finetune import FinetuneConfig

    return GlueOptions(
        data_dir=str(data),
        tasks=("sst2",),
        seeds=1,
        batch_size=64,
        mode="finetune",
        max_train_steps=30,
        finetune=FinetuneConfig(learning_rates=(1e-3,), batch_size=16),
        **kw,  # type: ignore[arg-type]
    )


def test_finetune_beats_the_majority_checkpoints_and_repeats_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = clippo.CLIPPO.from_variant("tiny-test", image_size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = _glue_folder(tmp_path / "glue_data", n_train=120, n_dev=40)
    options = _finetune_options(data)
    result = run_glue(model, options, tmp_path / "a", log=lambda _: None)
    accuracy = result["metrics"]["sst2"]["mean"]["accuracy"]
    majority = result["baseline"]["majority"]["sst2"]["accuracy"]
    assert accuracy > majority + 0.2, (accuracy, majority)
    assert result["mode"] == "finetune" and result["finetune"]["max_steps"] == 30
    selection = result["tasks"]["sst2"]["selection"][0]
    assert selection["note"].startswith("no selection") and selection["learning_rate"] == 1e-3
    run = tmp_path / "a" / "finetune" / "sst2" / "seed0"
    assert selection["run_dir"] == str(run)
    (ckpt,) = (run / "checkpoints").iterdir()
    assert ckpt.name == "step_000000030" and (ckpt / "manifest.json").is_file()
    # the caller's model is untouched: fine-tuning trains a copy
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # the same seed on CPU: the same predictions, bit for bit
    run_glue(model, options, tmp_path / "b", log=lambda _: None)
    first = (tmp_path / "a" / "predictions" / "sst2.dev.tsv").read_text()
    assert first == (tmp_path / "b" / "predictions" / "sst2.dev.tsv").read_text()
    # a finished run folder is resumed, not trained again: same predictions, still one checkpoint
    again = run_glue(model, options, tmp_path / "a", log=lambda _: None)
    assert again["metrics"] == result["metrics"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == [ckpt.name]


def test_finetune_refuses_a_run_folder_of_other_rows(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = clippo.CLIPPO.from_variant("tiny-test", image_size=64)
    data = _glue_folder(tmp_path / "glue_data", n_train=40, n_dev=10)
    options = _finetune_options(data, max_examples=0)
    options = dataclasses.replace(options, max_train_steps=3)
    run_glue(model, options, tmp_path / "out", log=lambda _: None)
    fewer = dataclasses.replace(options, max_examples=30)
    with pytest.raises(ValueError, match="fine-tuned on other rows"):
        run_glue(model, fewer, tmp_path / "out", log=lambda _: None)


def test_finetune_needs_rendered_pairs() -> None:
    with pytest.raises(ValueError, match="pair_mode='render'"):
        GlueOptions(data_dir="x", mode="finetune", pair_mode="concat")
    with pytest.raises(ValueError, match="mode="):
        GlueOptions(data_dir="x", mode="tuned")  # type: ignore[arg-type]


def test_cli_finetune_end_to_end(tmp_path: Path, model_dir: Path) -> None:
    data = _glue_folder(tmp_path / "glue_data", n_train=40, n_dev=12)
    out = tmp_path / "out"
    code = main(
        ["eval", "--model", str(model_dir), "--out", str(out), "glue", "--data-dir", str(data)]
        + ["--tasks", "rte,stsb", "--seeds", "1", "--mode", "finetune"]
        + ["--max-train-steps", "20", "--batch-size", "16"]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "finetune" and results["options"]["mode"] == "finetune"
    assert results["options"]["max_train_steps"] == 20
    assert results["finetune"]["max_steps"] == 20 and results["finetune"]["optimizer"] == "adamw"
    assert set(results["metrics"]) >= {"rte", "stsb"}
    for task in ("rte", "stsb"):
        ckpt = out / "finetune" / task / "seed0" / "checkpoints" / "step_000000020"
        assert (ckpt / "manifest.json").is_file()
    rows = (out / "predictions" / "stsb.dev.tsv").read_text().splitlines()
    assert len(rows) == 13  # header + 12 rows
