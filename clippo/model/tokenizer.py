"""The token baselines' tokenizer: trained offline on a run's own texts, saved as `tokenizer.json`.

CLIPPO reads rendered pixels; its baselines CLIP* and 1T-CLIP read tokens. `TextTokenizer`
wraps a Hugging Face `tokenizers.Tokenizer` (the library only: nothing is downloaded):

    tok = TextTokenizer.train(texts, vocab_size=32_000, max_length=64)   # BPE by default
    ids, mask = tok(["a red cube", "two cats"])     # LongTensor [2, 64], bool [2, 64]
    tok.save(folder)                                 # folder/tokenizer.json
    tok = TextTokenizer.load(folder)                 # or TextTokenizer.from_file(any .json)

Every text becomes `max_length` ids: NFKC-normalised, split SentencePiece-style (Metaspace:
spaces become "▁" and stay inside the pieces), truncated to `max_length - 1` pieces, closed by
the end-of-sequence token `</s>` (so no text, not even "", is all padding) and padded with
`<pad>`. The mask is True on real tokens; `<pad>` (id 0) never stands for text, so
`ids != pad_id` is the same mask. The padding and truncation settings are stored in
`tokenizer.json`, which therefore says everything about the encoding.

Kinds: "bpe" (the default) and "unigram" (SentencePiece's default model), both SentencePiece-style
(Metaspace). BPE is the default because its training is deterministic (the same texts give the
same tokenizer.json, so the comparison's seeds reproduce); the `tokenizers` Unigram trainer is
not (pieces of equal score come out in varying order, scores vary in the last bits), so two
Unigram runs on the same texts can tokenise differently. Either way a trained tokenizer is
passed once through its own JSON form, so the one in memory tokenises exactly as the saved
`tokenizer.json` read back does (Unigram scores change in the last bits on the first round trip).

Vocabulary size: 32k by default, as the paper's baselines (a SentencePiece model of that size).
A small corpus cannot fill it: the trainers stop at what the texts support (Unigram keeps the
pieces that occur; BPE stops when no pair is left to merge), so the trained vocabulary is
`min(vocab_size, what the corpus supports)`. `vocab_size` is then the real size (the model's
embedding table is sized from it), and `note` says that the request was clamped and to what.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from clippo.atomic import write_text_atomic
from clippo.model.bigvision import CheckpointError

TOKENIZER_FILE = "tokenizer.json"
DEFAULT_VOCAB_SIZE = 32_000  # the paper's baselines
DEFAULT_MAX_LENGTH = 64
PAD, UNK, EOS = "<pad>", "<unk>", "</s>"
SPECIAL_TOKENS = (PAD, UNK, EOS)  # ids 0, 1, 2 in a trained tokenizer
TokenizerKind = Literal["unigram", "bpe"]
KINDS: tuple[TokenizerKind, ...] = ("unigram", "bpe")

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_VOCAB_SIZE",
    "EOS",
    "KINDS",
    "PAD",
    "TOKENIZER_FILE",
    "TextTokenizer",
]


def _positive(name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str | bytes):
        raise TypeError("expected a list of strings, not a single string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
    return out


class TextTokenizer:
    """A `tokenizers.Tokenizer` with fixed-length padding: texts -> (ids [B, L], mask [B, L]).

    Build one with `train`, `from_file` or `load`; the wrapped tokenizer must know `<pad>` and
    `</s>` (every tokenizer `train` makes does).
    """

    def __init__(self, tokenizer: object, max_length: int, note: str = "") -> None:
        from tokenizers import Tokenizer
        from tokenizers.processors import TemplateProcessing

        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        # 2: at least one piece besides the closing </s>
        self.max_length = _positive("max_length", max_length, 2)
        pad_id, eos_id = tokenizer.token_to_id(PAD), tokenizer.token_to_id(EOS)
        if pad_id is None or eos_id is None:
            raise ValueError(f"the tokenizer has no {PAD!r} or {EOS!r} token")
        self.pad_id: int = pad_id
        self.eos_id: int = eos_id
        tokenizer.post_processor = TemplateProcessing(
            single=f"$A {EOS}", special_tokens=[(EOS, eos_id)]
        )
        # truncation leaves room for the </s> the post-processor adds
        tokenizer.enable_truncation(self.max_length)
        tokenizer.enable_padding(length=self.max_length, pad_id=pad_id, pad_token=PAD)
        self._tokenizer = tokenizer
        self.note = note

    @property
    def vocab_size(self) -> int:
        """Entries in the vocabulary, special tokens included (the embedding table's rows)."""
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        max_length: int = DEFAULT_MAX_LENGTH,
        kind: TokenizerKind = "bpe",
    ) -> TextTokenizer:
        """Train on `texts` (any iterable of strings, read once), offline.

        kind: "bpe" (deterministic) or "unigram" (not run-to-run deterministic; see the module
        docstring). The vocabulary is at most
        `vocab_size` (see the module docstring: a small corpus gives fewer, noted in `note`).
        """
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        _positive("vocab_size", vocab_size, len(SPECIAL_TOKENS) + 1)
        if kind not in KINDS:
            raise ValueError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
        corpus = _check_texts(list(texts))
        if not any(t.strip() for t in corpus):
            raise ValueError("cannot train a tokenizer on no text (every text is empty)")
        special = list(SPECIAL_TOKENS)
        if kind == "unigram":
            tok = Tokenizer(models.Unigram())
            trainer: object = trainers.UnigramTrainer(
                vocab_size=vocab_size, special_tokens=special, unk_token=UNK, show_progress=False
            )
        else:
            tok = Tokenizer(models.BPE(unk_token=UNK))
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size,
                special_tokens=special,
                # BPE starts from every character seen: at most this many (the most frequent;
                # the rest become <unk>), so a small request is not exceeded
                limit_alphabet=vocab_size - len(special),
                show_progress=False,
            )
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(corpus, trainer=trainer)  # type: ignore[arg-type]
        got = tok.get_vocab_size(with_added_tokens=True)
        note = ""
        if got < vocab_size:
            note = (
                f"vocabulary clamped from {vocab_size} to {got}: the {len(corpus)} training "
                f"texts support no more {kind} pieces"
            )
        # through JSON once: what a later load gives, bit for bit (see the module docstring)
        return cls(Tokenizer.from_str(tok.to_str()), max_length, note)

    @classmethod
    def from_file(cls, path: str | os.PathLike, max_length: int | None = None) -> TextTokenizer:
        """A `tokenizer.json` (ours, or any `tokenizers` file with `<pad>` and `</s>`).

        max_length: the padded length; None takes the one stored in the file (a file without
        fixed-length padding then needs it given). A bad file is a CheckpointError naming it.
        """
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no tokenizer file")
        try:
            tok = Tokenizer.from_str(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{path}: not UTF-8 text ({e})") from e
        except Exception as e:  # tokenizers raises a bare Exception for a bad file
            raise CheckpointError(f"{path}: not a tokenizers file ({e})") from e
        if max_length is None:
            padding = tok.padding
            stored = padding.get("length") if padding else None
            if not isinstance(stored, int):
                raise CheckpointError(
                    f"{path}: no fixed padding length stored; give max_length explicitly"
                )
            max_length = stored
        try:
            return cls(tok, max_length)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextTokenizer:
        """The `tokenizer.json` inside a saved model folder."""
        return cls.from_file(Path(directory) / TOKENIZER_FILE)

    def to_json(self) -> str:
        """The whole tokenizer (vocabulary, model, padding and truncation) as JSON text."""
        return str(self._tokenizer.to_str())

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/tokenizer.json` atomically; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(directory / TOKENIZER_FILE, self.to_json())

    def __call__(self, texts: Sequence[str], pad_to_longest: bool = False) -> tuple[Tensor, Tensor]:
        """B strings -> (ids LongTensor [B, L], mask bool [B, L]) on the CPU; mask is True on
        real tokens (the closing `</s>` included), False on padding. L is `max_length`, or with
        `pad_to_longest` the batch's longest text (less padding to compute; the token models
        mask padding, so their embeddings do not change)."""
        batch = _check_texts(texts)
        if not batch:
            empty = torch.empty(0, self.max_length, dtype=torch.long)
            return empty, empty.bool()
        encodings = self._tokenizer.encode_batch(batch)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)
        if pad_to_longest:
            longest = int(mask.sum(1).max())
            ids, mask = ids[:, :longest].contiguous(), mask[:, :longest].contiguous()
        return ids, mask

    def tokens(self, text: str) -> list[str]:
        """The pieces of one text, padding left out (for reading what the tokenizer does)."""
        enc = self._tokenizer.encode(text)
        return [t for t, m in zip(enc.tokens, enc.attention_mask, strict=True) if m]

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"
