"""GLUE readers and writers on small files written here in every layout, and on the real GLUE
files in ../shared/glue_data when that folder exists."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clippo.eval.glue_data import (
    GLUE_TASKS,
    SUBMISSION_FILES,
    GlueDataError,
    read_split,
    write_predictions,
    write_submission,
)
from clippo.eval.glue_metrics import task_metrics

REAL = Path(__file__).resolve().parents[2] / "../shared/glue_data"
T = "\t"


def write(path: Path, rows: list[list[str]], *, bom: bool = False, final_newline: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(T.join(r) for r in rows) + ("\n" if final_newline else "")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def texts(split) -> list[tuple]:
    return [(e.text_a, e.text_b, e.label) for e in split.examples]


# ---- the glue_data layout, file by file --------------------------------------------------------


def test_cola_train_dev_have_no_header_but_test_has_one(tmp_path):
    rows = [["gj04", "1", "", "The sailors rode."], ["gj04", "0", "*", 'He said "so.']]
    write(tmp_path / "CoLA/train.tsv", rows)
    write(tmp_path / "CoLA/dev.tsv", rows, final_newline=False)  # as distributed
    write(tmp_path / "CoLA/test.tsv", [["index", "sentence"], ["0", "Bill left."]])
    for split in ("train", "dev"):
        s = read_split(tmp_path, "cola", split)
        assert texts(s) == [("The sailors rode.", None, 1), ('He said "so.', None, 0)]
        assert [e.index for e in s.examples] == [0, 1] and s.layout == "glue_data"
    test = read_split(tmp_path, "cola", "test")
    assert texts(test) == [("Bill left.", None, None)] and test.examples[0].file_id == "0"


def test_mrpc_bom_header_and_both_tokenisations(tmp_path):
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    untok = 'Amrozi accused his brother, whom he called "the witness", of lying.'
    tok = 'Amrozi accused his brother , whom he called " the witness " , of lying .'
    for name, text in (("untok", untok), ("tok", tok)):
        rows = [
            header,
            ["1", "702876", "702977", text, '"Unbalanced quote.'],
            ["0", "1", "2", "a", "b"],
        ]
        write(tmp_path / name / "MRPC/dev.tsv", rows, bom=True)
        s = read_split(tmp_path / name, "mrpc", "dev")
        assert texts(s) == [(text, '"Unbalanced quote.', 1), ("a", "b", 0)]
    write(tmp_path / "t/MRPC/test.tsv", [["index", *header[1:]], ["7", "1", "2", "x", "y"]])
    test = read_split(tmp_path / "t", "mrpc", "test")
    assert texts(test) == [("x", "y", None)] and test.examples[0].file_id == "7"


def test_stsb_ten_columns_float_scores(tmp_path):
    header = "index genre filename year old_index source1 source2 sentence1 sentence2 score"
    row = ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none"]
    write(
        tmp_path / "STS-B/dev.tsv",
        [header.split(), [*row, "A plane.", "An air plane.", "5.000"], [*row, "a", "b", "0.250"]],
    )
    s = read_split(tmp_path, "stsb", "dev")
    assert texts(s) == [("A plane.", "An air plane.", 5.0), ("a", "b", 0.25)]
    write(tmp_path / "bad/STS-B/dev.tsv", [header.split(), [*row, "a", "b", "5.5"]])
    with pytest.raises(GlueDataError, match=r"dev\.tsv: line 2: .*5\.5"):
        read_split(tmp_path / "bad", "stsb", "dev")


MNLI_DEV = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "label1",
    "label2",
    "label3",
    "label4",
    "label5",
    "gold_label",
]


def mnli_row(i: int, a: str, b: str, *labels: str) -> list[str]:
    return [
        str(i),
        "63735",
        "63735n",
        "slate",
        "( a )",
        "( b )",
        "(ROOT a)",
        "(ROOT b)",
        a,
        b,
        *labels,
    ]


def test_mnli_12_and_16_columns_test_and_diagnostic(tmp_path):
    train_header = [*MNLI_DEV[:11], "gold_label"]
    write(tmp_path / "MNLI/train.tsv", [train_header, mnli_row(0, "p", "h", "neutral", "neutral")])
    dev = [MNLI_DEV, mnli_row(0, "p0", "h0", *["contradiction"] * 6)]
    dev.append(
        mnli_row(1, "p1", "h1", "neutral", "entailment", "entailment", "x", "y", "entailment")
    )
    write(tmp_path / "MNLI/dev_matched.tsv", dev)
    write(tmp_path / "MNLI/dev_mismatched.tsv", dev[:2])
    write(tmp_path / "MNLI/test_matched.tsv", [MNLI_DEV[:10], mnli_row(5, "tp", "th")])
    write(
        tmp_path / "diagnostic/diagnostic.tsv",
        [["index", "sentence1", "sentence2"], ["0", "a", "b"]],
    )
    assert texts(read_split(tmp_path, "mnli", "train")) == [("p", "h", 1)]
    # the gold label is the last column, not label1
    assert texts(read_split(tmp_path, "mnli", "dev_matched")) == [("p0", "h0", 2), ("p1", "h1", 0)]
    assert len(read_split(tmp_path, "mnli", "dev_mismatched").examples) == 1
    test = read_split(tmp_path, "mnli", "test_matched")
    assert texts(test) == [("tp", "th", None)] and test.examples[0].file_id == "5"
    assert texts(read_split(tmp_path, "mnli", "diagnostic")) == [("a", "b", None)]


def test_pair_tasks_find_columns_by_header_and_keep_quotes(tmp_path):
    write(tmp_path / "QQP/dev.tsv", [
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        ["201359", "1", "2", "Why?", 'Why "not?', "1"],
    ])  # fmt: skip
    write(tmp_path / "QNLI/dev.tsv", [
        ["index", "question", "sentence", "label"],
        ["0", "What?", '" The stray quote', "not_entailment"],
        ["1", "Who?", "He.", "entailment"],
    ])  # fmt: skip
    for folder in ("RTE", "WNLI"):
        label = "entailment" if folder == "RTE" else "1"
        write(tmp_path / f"{folder}/dev.tsv", [["index", "sentence1", "sentence2", "label"],
                                               ["0", "a", "b", label]])  # fmt: skip
    write(tmp_path / "SST-2/dev.tsv", [["sentence", "label"], ["it 's fine . ", "1"]])
    assert texts(read_split(tmp_path, "qqp", "dev")) == [("Why?", 'Why "not?', 1)]
    assert texts(read_split(tmp_path, "qnli", "dev")) == [
        ("What?", '" The stray quote', 1),
        ("Who?", "He.", 0),
    ]
    assert texts(read_split(tmp_path, "rte", "dev")) == [("a", "b", 0)]
    assert texts(read_split(tmp_path, "wnli", "dev")) == [("a", "b", 1)]
    assert texts(read_split(tmp_path, "sst2", "dev")) == [("it 's fine . ", None, 1)]


# ---- bad rows, missing files, max_examples -----------------------------------------------------


def rte_with_bad_rows(tmp_path: Path) -> Path:
    write(tmp_path / "RTE/dev.tsv", [
        ["index", "sentence1", "sentence2", "label"],
        ["0", "a", "b", "entailment"],
        ["1", "too", "few"],                       # line 3: 3 fields
        ["2", "c", "d", "contradiction"],          # line 4: not an RTE label
        ["3", "e", "f", "not_entailment"],
    ])  # fmt: skip
    return tmp_path


def test_bad_rows_raise_naming_file_and_line(tmp_path):
    with pytest.raises(GlueDataError, match=r"RTE/dev\.tsv: line 3: 3 fields, expected 4"):
        read_split(rte_with_bad_rows(tmp_path), "rte", "dev")


def test_skip_bad_rows_records_line_numbers_and_keeps_file_indices(tmp_path):
    s = read_split(rte_with_bad_rows(tmp_path), "rte", "dev", skip_bad_rows=True)
    assert s.skipped == (3, 4)
    assert [(e.index, e.text_a, e.label) for e in s.examples] == [(0, "a", 0), (3, "e", 1)]
    # max_examples stops reading at the N-th good row: no bad row reached yet
    first = read_split(tmp_path, "rte", "dev", skip_bad_rows=True, max_examples=1)
    assert len(first.examples) == 1 and first.skipped == ()
    (tmp_path / "RTE/dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n"
    )
    with pytest.raises(GlueDataError, match=r"line 2: label 'contradiction' is not one of rte"):
        read_split(tmp_path, "rte", "dev")


def test_max_examples_takes_the_first_rows(tmp_path):
    write(
        tmp_path / "SST-2/train.tsv",
        [["sentence", "label"]] + [[f"s{i}", str(i % 2)] for i in range(9)],
    )
    s = read_split(tmp_path, "sst2", "train", max_examples=3)
    assert [e.text_a for e in s.examples] == ["s0", "s1", "s2"]


def test_missing_files_and_columns_name_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MRPC/dev\.tsv.*glue_data layout.*Hugging Face"):
        read_split(tmp_path, "mrpc", "dev")
    write(tmp_path / "MRPC/train.tsv", [["Quality", "#1 String", "#2 String"]])
    with pytest.raises(FileNotFoundError, match=r"MRPC/dev\.tsv: no such file.*glue_data"):
        read_split(tmp_path, "mrpc", "dev")
    write(tmp_path / "SST-2/dev.tsv", [["text", "label"], ["a", "1"]])
    with pytest.raises(GlueDataError, match=r"SST-2/dev\.tsv: line 1: .*\['sentence'\]"):
        read_split(tmp_path, "sst2", "dev")
    with pytest.raises(GlueDataError, match="no split 'validation'"):
        read_split(tmp_path, "sst2", "validation")


def test_not_utf8_is_a_bad_row(tmp_path):
    path = tmp_path / "SST-2/dev.tsv"
    path.parent.mkdir()
    path.write_bytes(b"sentence\tlabel\nok\t1\n\xff\xfe bad\t0\n")
    with pytest.raises(GlueDataError, match="line 3: the line is not valid UTF-8"):
        read_split(tmp_path, "sst2", "dev")
    assert read_split(tmp_path, "sst2", "dev", skip_bad_rows=True).skipped == (3,)


# ---- Hugging Face layouts ----------------------------------------------------------------------

# MNLI dev in HF's columns and integer labels: 0 entailment, 1 neutral, 2 contradiction
HF_MNLI = {
    "premise": ["p0", "p1", "p2"],
    "hypothesis": ["h0", "h1", "h2"],
    "label": [2, 0, 1],
    "idx": [0, 1, 2],
}
TSV_MNLI = [MNLI_DEV] + [
    mnli_row(i, f"p{i}", f"h{i}", *[lab] * 6)
    for i, lab in enumerate(["contradiction", "entailment", "neutral"])
]


def test_hf_save_to_disk_matches_the_tsv_labels(tmp_path):
    names = ["entailment", "neutral", "contradiction"]
    features = datasets.Features({
        "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
        "label": datasets.ClassLabel(names=names), "idx": datasets.Value("int32"),
    })  # fmt: skip
    test = {**HF_MNLI, "label": [-1, -1, -1]}
    datasets.DatasetDict({
        "validation_matched": datasets.Dataset.from_dict(HF_MNLI, features=features),
        "test_matched": datasets.Dataset.from_dict(test, features=features),
    }).save_to_disk(str(tmp_path / "hf/mnli"))  # fmt: skip
    write(tmp_path / "tsv/MNLI/dev_matched.tsv", TSV_MNLI)
    hf = read_split(tmp_path / "hf", "mnli", "dev_matched")
    assert hf.layout == "hf_disk"
    assert texts(hf) == texts(read_split(tmp_path / "tsv", "mnli", "dev_matched"))
    assert texts(hf) == [("p0", "h0", 2), ("p1", "h1", 0), ("p2", "h2", 1)]
    test_split = read_split(tmp_path / "hf", "mnli", "test_matched")
    assert [e.label for e in test_split.examples] == [None] * 3
    assert [e.file_id for e in test_split.examples] == ["0", "1", "2"]
    with pytest.raises(FileNotFoundError, match="no split 'validation_mismatched'"):
        read_split(tmp_path / "hf", "mnli", "dev_mismatched")


def test_hf_parquet_shards_in_order(tmp_path):
    (tmp_path / "mrpc").mkdir()
    rows = {"sentence1": ["a", "b", "c"], "sentence2": ["x", "y", "z"], "label": [1, 0, 1]}
    for k, sl in reversed(list(enumerate((slice(0, 2), slice(2, 3))))):  # written out of order
        table = pa.table({c: v[sl] for c, v in rows.items()})
        pq.write_table(table, tmp_path / f"mrpc/validation-0000{k}-of-00002.parquet")
    pq.write_table(pa.table({"sentence1": ["t"], "sentence2": ["u"], "label": [-1]}),
                   tmp_path / "mrpc/test-00000-of-00001.parquet")  # fmt: skip
    s = read_split(tmp_path, "mrpc", "dev")
    assert s.layout == "parquet"
    assert texts(s) == [("a", "x", 1), ("b", "y", 0), ("c", "z", 1)]
    assert texts(read_split(tmp_path, "mrpc", "test")) == [("t", "u", None)]
    with pytest.raises(FileNotFoundError, match=r"mrpc/train\.parquet: no such file"):
        read_split(tmp_path, "mrpc", "train")


def test_hf_parquet_missing_column(tmp_path):
    (tmp_path / "rte").mkdir()
    pq.write_table(pa.table({"premise": ["a"], "label": [0]}), tmp_path / "rte/validation.parquet")
    with pytest.raises(GlueDataError, match=r"validation\.parquet: no column\(s\) \['sentence1'"):
        read_split(tmp_path, "rte", "dev")


def test_hf_jsonl_floats_and_bad_rows(tmp_path):
    lines = [
        {"sentence1": "a", "sentence2": "b", "label": 4.25, "idx": 0},
        {"sentence1": "c", "sentence2": "d", "label": -1, "idx": 1},  # line 2: -1 outside dev
        {"sentence1": "e", "label": 1.0, "idx": 2},  # line 3: no sentence2
        {"sentence1": "f", "sentence2": "g", "label": 0.5, "idx": 3},
    ]
    path = tmp_path / "stsb/validation.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + "{not json\n")
    with pytest.raises(GlueDataError, match=r"validation\.jsonl: line 2: label -1 is outside"):
        read_split(tmp_path, "stsb", "dev")
    s = read_split(tmp_path, "stsb", "dev", skip_bad_rows=True)
    assert s.layout == "jsonl" and s.skipped == (2, 3, 5)
    assert [(e.index, e.text_a, e.label) for e in s.examples] == [(0, "a", 4.25), (3, "f", 0.5)]


# ---- predictions and submissions ---------------------------------------------------------------


def test_predictions_file_recomputes_the_metrics(tmp_path):
    write(tmp_path / "MNLI/dev_matched.tsv", TSV_MNLI)
    split = read_split(tmp_path, "mnli", "dev_matched")
    out = write_predictions(split, [2, 1, 1], tmp_path / "out/mnli_m.dev_matched.tsv")
    lines = out.read_text().splitlines()
    assert lines == [
        "index\tlabel\tprediction",
        "0\tcontradiction\tcontradiction",
        "1\tentailment\tneutral",
        "2\tneutral\tneutral",
    ]
    labels = GLUE_TASKS["mnli"].labels
    rows = [line.split(T) for line in lines[1:]]
    gold = [labels.index(r[1]) for r in rows]
    pred = [labels.index(r[2]) for r in rows]
    assert task_metrics("mnli_m", pred, gold) == task_metrics("mnli_m", [2, 1, 1], split.labels())
    with pytest.raises(ValueError, match="2 predictions for 3 rows"):
        write_predictions(split, [0, 1], tmp_path / "x.tsv")
    with pytest.raises(ValueError, match="not a class index"):
        write_predictions(split, [0, 1, 3], tmp_path / "x.tsv")
    assert not (tmp_path / "x.tsv").exists()


def test_stsb_predictions_are_floats(tmp_path):
    jsonl = tmp_path / "stsb/validation.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text('{"sentence1": "a", "sentence2": "b", "label": 3.8}\n')
    split = read_split(tmp_path, "stsb", "dev")
    out = write_predictions(split, [2.125], tmp_path / "stsb.dev.tsv")
    assert out.read_text().splitlines()[1] == "0\t3.8\t2.125"


def test_submission_files_and_zip(tmp_path):
    write(tmp_path / "CoLA/test.tsv", [["index", "sentence"], ["0", "a"], ["1", "b"]])
    write(tmp_path / "MNLI/test_mismatched.tsv", [MNLI_DEV[:10], mnli_row(7, "p", "h")])
    write(
        tmp_path / "diagnostic/diagnostic.tsv",
        [["index", "sentence1", "sentence2"], ["0", "a", "b"]],
    )
    cola = read_split(tmp_path, "cola", "test")
    mm = read_split(tmp_path, "mnli", "test_mismatched")
    ax = read_split(tmp_path, "mnli", "diagnostic")
    out = tmp_path / "submission"
    zpath = write_submission(out, [(ax, [1]), (cola, [1, 0]), (mm, [2])])
    assert (out / "CoLA.tsv").read_text() == "index\tprediction\n0\t1\n1\t0\n"
    assert (out / "MNLI-mm.tsv").read_text() == "index\tprediction\n7\tcontradiction\n"
    assert (out / "AX.tsv").read_text() == "index\tprediction\n0\tneutral\n"
    with zipfile.ZipFile(zpath) as zf:
        assert zf.namelist() == ["CoLA.tsv", "MNLI-mm.tsv", "AX.tsv"]
        assert zf.read("AX.tsv").decode() == (out / "AX.tsv").read_text()
    assert set(SUBMISSION_FILES) == {
        *(
            f"{n}.tsv"
            for n in [
                "CoLA",
                "SST-2",
                "MRPC",
                "STS-B",
                "QQP",
                "MNLI-m",
                "MNLI-mm",
                "QNLI",
                "RTE",
                "WNLI",
                "AX",
            ]
        )
    }
    write(tmp_path / "CoLA/dev.tsv", [["s", "1", "", "a"]])
    with pytest.raises(ValueError, match="not a GLUE test split"):
        write_submission(out, [(read_split(tmp_path, "cola", "dev"), [1])])


# ---- the real GLUE files -----------------------------------------------------------------------

# (task, split): data rows in ../shared/glue_data (SOURCES.md: official dev sizes; train capped)
REAL_ROWS = {
    ("cola", "dev"): 1043, ("sst2", "dev"): 872, ("mrpc", "dev"): 408, ("stsb", "dev"): 1500,
    ("rte", "dev"): 277, ("wnli", "dev"): 71, ("qnli", "dev"): 2000, ("qqp", "dev"): 9,
    ("mnli", "dev_matched"): 2, ("mnli", "dev_mismatched"): 2,
    ("cola", "train"): 5000, ("sst2", "train"): 5000, ("mrpc", "train"): 3668,
    ("stsb", "train"): 5000, ("rte", "train"): 2490, ("wnli", "train"): 635,
    ("qnli", "train"): 3, ("qqp", "train"): 9, ("mnli", "train"): 3,
}  # fmt: skip


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/glue_data is not present")
@pytest.mark.parametrize("task, split", list(REAL_ROWS))
def test_real_glue_files_parse_whole_with_official_counts(task, split):
    s = read_split(REAL, task, split)  # any bad row raises
    assert len(s.examples) == REAL_ROWS[task, split] and s.skipped == ()
    assert [e.index for e in s.examples] == list(range(len(s.examples)))
    spec = GLUE_TASKS[task]
    assert all(
        e.text_a and (e.text_b is None) == (spec.text_columns[1] is None) for e in s.examples
    )
    if spec.kind == "classification":  # every class occurs in the larger files
        assert {e.label for e in s.examples} == set(range(len(spec.labels))) or len(s.examples) < 10


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/glue_data is not present")
def test_real_quirks():
    mrpc = read_split(REAL, "mrpc", "dev")  # BOM before the header
    assert (
        mrpc.examples[0].text_b
        == '"The foodservice pie business does not fit our long-term growth strategy.'
    )
    qnli = read_split(REAL, "qnli", "dev")  # the stray leading quote of index 694 is kept
    assert qnli.examples[694].file_id == "694" and qnli.examples[694].text_b.startswith('"')
    assert (
        read_split(REAL, "sst2", "dev").examples[0].text_a
        == "it 's a charming and often affecting journey . "
    )
