"""Text/text pair sources: consecutive sentences, word dropout, pair files, aligned files."""

from __future__ import annotations

import collections
import gzip
import json

import numpy as np
import pytest

from clippo.data.mixer import BatchMixer, MixerConfig
from clippo.data.sources import SkipSample, TextPair
from clippo.data.text_pairs import (
    AlignedFiles,
    ConsecutiveSentences,
    PairFile,
    WordDropoutPairs,
    drop_words,
    read_documents,
    read_lines,
)
from clippo.errors import DataError

CORPUS = """First doc one. First doc two. First doc three.
First doc four, wrapped
over a line.

Second doc one! Second doc two?

Lonely sentence.

Third doc: Dr. Who came. He left.
"""


def unit_records(src):
    out, problems = [], collections.Counter()
    for u in range(src.num_units()):
        unit = src.read_unit(u)
        problems.update(kind for kind, _ in unit.problems)
        out += list(unit)
    return out, problems


def test_consecutive_sentences_never_cross_documents(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    src = ConsecutiveSentences(str(path))
    records, _ = unit_records(src)
    assert [(r.text_a, r.text_b) for r in records] == [
        ("First doc one.", "First doc two."),
        ("First doc three.", "First doc four, wrapped over a line."),
        ("Second doc one!", "Second doc two?"),
        ("Third doc: Dr. Who came.", "He left."),
    ]
    assert [r.key for r in records] == [
        "corpus.txt:0:0",
        "corpus.txt:0:2",
        "corpus.txt:1:0",
        "corpus.txt:3:0",
    ]
    overlap, _ = unit_records(ConsecutiveSentences(str(path), overlap=True))
    assert [(r.text_a, r.text_b) for r in overlap][:3] == [
        ("First doc one.", "First doc two."),
        ("First doc two.", "First doc three."),
        ("First doc three.", "First doc four, wrapped over a line."),
    ]
    assert len(overlap) == 3 + 1 + 1


def test_jsonl_corpus_gz_and_bad_lines(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    lines = [
        json.dumps({"text": "A one. A two.", "url": "u"}),
        "{broken",
        json.dumps({"body": "no text field"}),
        "",
        json.dumps({"text": "B 一。B 二。"}),
    ]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    records, problems = unit_records(ConsecutiveSentences(str(path)))
    assert [(r.text_a, r.text_b, r.key) for r in records] == [
        ("A one.", "A two.", "c.jsonl.gz:1:0"),
        ("B 一。", "B 二。", "c.jsonl.gz:5:0"),
    ]
    assert dict(problems) == {"bad_json": 1, "missing_text": 1}
    docs, _ = read_documents(str(path), text_field="url")
    assert docs == [("c.jsonl.gz:1", "u")]


def test_read_lines_splits_on_newline_only(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes("a\r\nb\u2028still b\x0bstill\nc".encode())
    assert read_lines(path) == ["a", "b\u2028still b\x0bstill", "c"]


def naive_drop(sentence, drop, seed):
    words = sentence.split()
    n = len(words)
    k = min(max(int(np.floor(drop * n + 0.5)), 1), n - 1)
    gone = set(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())
    return [w for i, w in enumerate(words) if i not in gone]


def test_drop_words():
    s = "the quick brown fox jumps over the lazy dog today"
    for seed in range(20):
        out = drop_words(s, 0.3, np.random.default_rng(seed)).split()
        assert out == naive_drop(s, 0.3, seed)
        assert len(out) == 7
        it = iter(s.split())  # the kept words are a subsequence, order kept
        assert all(w in it for w in out)
    assert drop_words("two words", 0.01, np.random.default_rng(0)) in ("two", "words")
    assert drop_words("single", 0.5, np.random.default_rng(0)) == "single"
    assert drop_words("a  b\tc", 0.0, np.random.default_rng(0)) == "a b c"


def test_word_dropout_source_is_seeded(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("One two three four five six. Seven eight nine ten.\n\nShort.\n")
    src = WordDropoutPairs(str(path), drop=0.25, min_words=2)
    records, _ = unit_records(src)
    assert [r[0] for r in records] == ["One two three four five six.", "Seven eight nine ten."]
    a = src.decode(records[0], 123)
    assert a == src.decode(records[0], 123)
    assert a.text_a == "One two three four five six." and a.text_b.split() == naive_drop(
        a.text_a, 0.25, 123
    )
    outs = {src.decode(records[0], seed).text_b for seed in range(30)}
    assert len(outs) > 3  # different positions drop different words
    with pytest.raises(ValueError):
        WordDropoutPairs(str(path), drop=1.0)


def test_pair_file_tsv_and_jsonl(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("hello\thallo\textra\nonly one field\n\tempty left\nbye\ttschüss\n")
    src = PairFile(str(tsv))
    assert len(src) == 4
    assert src.load(0, 0) == TextPair("hello", "hallo", "1")
    assert src.load(3, 0) == TextPair("bye", "tschüss", "4")
    for i, kind in [(1, "bad_row"), (2, "empty_text")]:
        with pytest.raises(SkipSample) as info:
            src.load(i, 0)
        assert info.value.kind == kind and f"p.tsv:{i + 1}" in info.value.message
    assert PairFile(str(tsv), columns=(2, 0)).load(0, 0).text_a == "extra"
    with pytest.raises(ValueError, match="p.tsv:1"):
        PairFile(str(tsv), columns=(0, 5))

    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"src": "a", "tgt": "b"}) + "\n" + "{oops\n")
    src = PairFile(str(jl), columns=("src", "tgt"))
    assert src.load(0, 0) == TextPair("a", "b", "1")
    with pytest.raises(SkipSample):
        src.load(1, 0)
    with pytest.raises(ValueError, match="text_a"):
        PairFile(str(jl))
    with pytest.raises(ValueError, match="suffix"):
        PairFile(str(tmp_path / "p.xyz"))


def test_aligned_files(tmp_path):
    a, b, c = tmp_path / "train.en", tmp_path / "train.de", tmp_path / "short.de"
    a.write_text("one\ntwo\nthree\n")
    b.write_text("eins\r\nzwei\r\n\r\n")
    c.write_text("eins\n")
    src = AlignedFiles(str(a), str(b))
    assert [src.load(i, 0) for i in range(2)] == [
        TextPair("one", "eins", "1"),
        TextPair("two", "zwei", "2"),
    ]
    with pytest.raises(SkipSample, match="empty"):
        src.load(2, 0)
    with pytest.raises(ValueError) as info:
        AlignedFiles(str(a), str(c))
    assert str(a) in str(info.value) and str(c) in str(info.value) and "3" in str(info.value)


def _stream(src, rank, world, n, seed=0):
    mixer = BatchMixer(
        MixerConfig(batch_size=1, text_pair_fraction=1.0, seed=seed),
        (),
        [(src, 1.0)],
        rank=rank,
        world_size=world,
    )
    return [(b.left[0], b.right[0]) for b in mixer.batches(0, stop_step=n)]


def test_corpus_is_shard_aware_and_deterministic(tmp_path):
    texts = []
    for f in range(3):
        docs = [f"File{f} doc{d} first. File{f} doc{d} second." for d in range(4)]
        (tmp_path / f"c{f}.txt").write_text("\n\n".join(docs))
        texts += docs
    src = ConsecutiveSentences(str(tmp_path / "c*.txt"))
    every = sorted(_stream(src, 0, 1, 12))
    assert len(set(every)) == 12
    parts = [_stream(src, r, 2, n) for r, n in [(0, 8), (1, 4)]]  # files {0, 2} and {1}
    assert sorted(parts[0] + parts[1]) == every
    assert _stream(src, 0, 2, 8) == parts[0]  # same seed, same order
    assert _stream(src, 0, 2, 8, seed=1) != parts[0]


def test_a_truncated_or_damaged_gz_corpus_is_an_error_naming_the_file(tmp_path):
    whole = gzip.compress(("One sentence. Another one.\n\n" * 200).encode())
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(whole[: len(whole) // 2])  # a download that stopped half way
    with pytest.raises(DataError, match=f"{cut}: truncated or damaged gzip file"):
        read_lines(cut)
    with pytest.raises(DataError, match=f"{cut}: truncated or damaged gzip file"):
        read_documents(str(cut))
    garbage = tmp_path / "garbage.jsonl.gz"
    garbage.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=f"{garbage}: truncated or damaged gzip file"):
        read_documents(str(garbage))
