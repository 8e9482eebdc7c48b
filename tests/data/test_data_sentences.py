"""split_sentences: abbreviations, numbers, initials, quotes and non-Latin terminators."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clippo.data.sentences import split_sentences

CASES = [
    # (text, expected sentences)
    ("", []),
    ("   \n  ", []),
    ("no terminator at all", ["no terminator at all"]),
    ("One. Two. Three.", ["One.", "Two.", "Three."]),
    ("Dr. Smith paid $3.14. He left!", ["Dr. Smith paid $3.14.", "He left!"]),
    (
        "Mr. and Mrs. Jones met Prof. Lee. They talked.",
        ["Mr. and Mrs. Jones met Prof. Lee.", "They talked."],
    ),
    (
        "J. K. Rowling wrote it. George W. Bush read it.",
        ["J. K. Rowling wrote it.", "George W. Bush read it."],
    ),
    (
        "Pi is 3.14159 or so. The value 1.5e3 is big.",
        ["Pi is 3.14159 or so.", "The value 1.5e3 is big."],
    ),
    ("Fruit, e.g. apples, i.e. red ones. Fine.", ["Fruit, e.g. apples, i.e. red ones.", "Fine."]),
    (
        "Use e.g. Apples or cf. Smith et al. for details.",
        ["Use e.g. Apples or cf. Smith et al. for details."],
    ),
    ("The U.S. Army is big. It grew.", ["The U.S. Army is big.", "It grew."]),
    (
        "She moved to the U.S. The weather was fine.",
        ["She moved to the U.S.", "The weather was fine."],
    ),
    ("We left at 5 p.m. yesterday. It rained.", ["We left at 5 p.m. yesterday.", "It rained."]),
    ("Pens, pencils, etc. Then paper.", ["Pens, pencils, etc.", "Then paper."]),
    ("See Fig. 3 and No. 5 on pp. 12. Done.", ["See Fig. 3 and No. 5 on pp. 12.", "Done."]),
    ("It happened in 1999. The end.", ["It happened in 1999.", "The end."]),
    ("Visit example.com today. Or not.", ["Visit example.com today.", "Or not."]),
    ("What?! Really?? Yes!!!", ["What?!", "Really??", "Yes!!!"]),
    ("Wait... What happened… Nothing.", ["Wait...", "What happened…", "Nothing."]),
    ("Well... maybe not.", ["Well... maybe not."]),
    ('He said "hi." Then he left.', ['He said "hi."', "Then he left."]),
    ("“Help!” she cried. Nobody came.", ["“Help!” she cried.", "Nobody came."]),
    ("(This is quoted.) And this is not.", ["(This is quoted.)", "And this is not."]),
    ("Line one\nstill one. Line two.", ["Line one still one.", "Line two."]),
    ("Para one\n\nPara two", ["Para one", "Para two"]),
    ("First para ends here\n  \n\nsecond para.", ["First para ends here", "second para."]),
    # non-Latin terminal punctuation
    ("今天天气很好。我们去公园吧！好吗？", ["今天天气很好。", "我们去公园吧！", "好吗？"]),
    ("これはペンです。あれは本です｡", ["これはペンです。", "あれは本です｡"]),
    ("「こんにちは。」と言った。", ["「こんにちは。」", "と言った。"]),
    ("كيف حالك؟ أنا بخير. شكرا", ["كيف حالك؟", "أنا بخير.", "شكرا"]),
    ("یہ ایک جملہ ہے۔ دوسرا جملہ۔", ["یہ ایک جملہ ہے۔", "دوسرا جملہ۔"]),
    ("यह एक वाक्य है। यह दूसरा है॥ तीसरा", ["यह एक वाक्य है।", "यह दूसरा है॥", "तीसरा"]),
    ("Սա նախադասություն է։ Սա էլ", ["Սա նախադասություն է։", "Սա էլ"]),
    ("ይህ ዓረፍተ ነገር ነው። ሁለተኛ", ["ይህ ዓረፍተ ነገር ነው።", "ሁለተኛ"]),
    ("Это предложение. Ещё одно! Да?", ["Это предложение.", "Ещё одно!", "Да?"]),
    ("Mixed 中文。English here. Ok", ["Mixed 中文。", "English here.", "Ok"]),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_cases(text, expected):
    assert split_sentences(text) == expected


def test_rejects_non_text():
    with pytest.raises(TypeError):
        split_sentences(b"bytes")


text_alphabet = st.sampled_from(list('abc XYZ.!?\n\t。؟।…"”)(31ə中') + ["Dr.", "e.g.", "U.S."])


@settings(max_examples=300, deadline=None)
@given(st.lists(text_alphabet, max_size=60).map("".join))
def test_nothing_lost_or_reordered(text):
    # Invariant: the sentences, concatenated, hold exactly the non-space characters of the input.
    sentences = split_sentences(text)
    assert "".join(sentences).replace(" ", "") == re.sub(r"\s", "", text)
    assert all(s == s.strip() and s and "  " not in s and "\n" not in s for s in sentences)


words = st.sampled_from(["alpha", "beta", "gamma", "3.5", "x", "Delta", "2024"])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(words, min_size=2, max_size=6), min_size=1, max_size=4))
def test_plain_sentences_recovered(sentence_words):
    # Sentences of two or more plain words, starting with a capital, ending in "." come back
    # one by one (a single capital letter before "." would be read as an initial).
    sentences = [("Start " + " ".join(ws) + ".") for ws in sentence_words]
    assert split_sentences(" ".join(sentences)) == sentences
