"""The VQAv2 suite on frozen features: question band + photo, encode once (cached), a soft
multi-label head per seed, the official accuracy.

`run_vqa(model, options, out_dir)` reads the train split (with answers) and the eval split
(`clippo.eval.vqa_data`, the official layout), builds the answer vocabulary from the train
answers (the top K after the official normalisation), and renders each (photo, question) as one
image with `render_on_image` and the model's own renderer: the question in a band of
`options.band` px at the top (None: half the image), the photo squashed into the rest. It takes
`model.pooled` features (`clippo.eval.features`, cached under `cache_dir`) and per seed fits a
`soft_multilabel` head (binary cross-entropy against min(#annotators / 3, 1)) with selection on
a slice held out from train (`clippo.eval.heads`). The predicted answer is the vocabulary entry
with the highest score.

A token baseline (CLIP*, 1T-CLIP: no renderer, its image tower never learned to read) is
evaluated as two-tower models are: the feature of a question is `[image tower's pooled photo,
text side's pooled question]`, float32 [N, 2 * width], the photo whole (no band) and the
question through its tokenizer (`extract_text_features`), each cached apart (a photo once,
however many questions ask about it). `band` does not apply to it (an error when given, and
`band` is null in the results), nor does `mode="finetune"`, which tunes on rendered questions.

With `mode="finetune"`, per seed a copy of the model is fine-tuned with the answer head through
the trainer (`clippo.eval.finetune`; run folder `out_dir/finetune/vqa/seed<k>`, resumed when it
already holds the finished run, `max_train_steps` steps when > 0), selected on the same held-out
slice and proxy, and answers the eval split with the tuned model; no features are cached.

Selection proxy: on the held-out slice a head is scored by the mean soft-target value of its
argmax answer, i.e. min(#annotators who gave that answer, after normalisation / 3, 1). That is
the credit the official metric is built on, but not its leave-one-out average (one matching
annotator earns 1/3 here and 0.3 officially, two 2/3 vs 0.6, three 1 vs 0.9), so it ranks
heads as the official score does without being the number reported.

An image that cannot be decoded is an error naming the file and the question: the official
results file must answer every question of the split, so skipping one would make it unusable.

Writes `OUT_DIR/vqa_OpenEnded_mscoco_<eval split>_clippo_results.json` (seed 0's answers, every
evaluated question). Returns the `results.json` body: for an annotated eval split,
`metrics.overall`, `metrics.per_answer_type.<type>`, `metrics.per_question_type.<type>`, each
{seeds, mean, std} as in the GLUE suite, and `baseline.majority` (the most frequent train answer
for every question, scored the same way); for a test split no metrics. Also the model's architecture, the
vocabulary size, the eval split's answer coverage, the rows read, and each seed's selection.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from clippo.data.images import ImageDecodeError, decode_image
from clippo.errors import DataError
from clippo.eval.features import (
    Encoder,
    combine_photo_question,
    data_fingerprint,
    extract_features,
    extract_text_features,
)
from clippo.eval.finetune import FinetuneConfig, config_dict, finetune
from clippo.eval.heads import FittedHead, HeadConfig, fit_head
from clippo.eval.vqa_data import (
    DEFAULT_VOCAB_SIZE,
    AnswerVocab,
    VQARecord,
    build_answer_vocab,
    is_test_split,
    questions_file,
    read_vqa,
    soft_target,
    write_results,
)
from clippo.eval.vqa_metric import normalize_answer, vqa_accuracy
from clippo.model.architectures import architecture_of
from clippo.model.one_tower import CLIPPO
from clippo.model.token_model import TokenModel
from clippo.render import render_on_image

# One learning rate x two weight decays, 10 epochs (at least 200 steps): per seed two fits on
# 90% of train for the selection, then the refit on all of it. One fit on N = 5,000 rows of
# B/16 features (D = 768) with K = 3,129 answers took 29 s on one shared CPU core here, so
# about 1.5 minutes per seed; HeadConfig's default 6-point, 20-epoch grid would take about 5x.
DEFAULT_HEAD = HeadConfig(
    kind="soft_multilabel", learning_rates=(1e-3,), weight_decays=(1e-4, 1e-2), epochs=10
)
_GROUPS = ("per_answer_type", "per_question_type")


@dataclass(frozen=True)
class VqaOptions:
    """What `run_vqa` evaluates and how. `max_examples` caps the train rows and the evaluated
    rows (the first N of each file, in order); 0 = all. `band`: height in px of the question
    band (None: half the image, `render_on_image`'s default). `num_workers`: photo decoding
    threads (0: decode in the feature extractor's rendering thread). The head is trained as
    `head` says, with its kind set to soft_multilabel. mode: "frozen" (a head on cached
    features) or "finetune" (encoder and head as `finetune` says, with `max_train_steps` steps
    when > 0)."""

    data_dir: str
    train_split: str = "train2014"
    eval_split: str = "val2014"
    seeds: int = 3
    max_examples: int = 0
    answers: int = DEFAULT_VOCAB_SIZE
    band: int | None = None
    cache_dir: str | None = None
    batch_size: int = 64
    num_workers: int = 4
    head: HeadConfig = DEFAULT_HEAD
    mode: Literal["frozen", "finetune"] = "frozen"
    max_train_steps: int = 0
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("frozen", "finetune"):
            raise ValueError(f"mode={self.mode!r}: expected 'frozen' or 'finetune'")
        if self.max_train_steps < 0:
            raise ValueError(f"max_train_steps={self.max_train_steps} must be >= 0")
        if self.seeds < 1 or self.batch_size < 1 or self.answers < 1:
            raise ValueError("seeds, batch_size and answers must be >= 1")
        if self.max_examples < 0 or self.num_workers < 0:
            raise ValueError("max_examples and num_workers must be >= 0")
        if self.band is not None and self.band < 0:
            raise ValueError(f"band={self.band}: must be >= 0 px (or None for half the image)")
        if is_test_split(self.train_split):
            raise ValueError(
                f"train_split={self.train_split!r} is a test split: it has no answers to train on"
            )


class _Photos:
    """(photo, question) records -> uint8 [B, S, S, 3]: photos decoded and resized to the
    band's complement in `pool`, then drawn under the question by `render_on_image`; for a
    token model (no renderer; `band` 0) the photos alone."""

    def __init__(self, model: Encoder, band: int, pool: Executor | None) -> None:
        self.renderer = model.renderer if isinstance(model, CLIPPO) else None
        self.band, self.pool = band, pool
        self.size = model.config.vit.image_size

    def _photo(self, record: VQARecord) -> Image.Image | np.ndarray:
        if self.band >= self.size:  # the band covers the image: the photo is not shown
            return np.zeros((1, 1, 3), np.uint8)
        try:
            img = decode_image(record.image_path)
        except ImageDecodeError as e:
            raise DataError(
                f"{record.image_path}: image of question {record.question_id} unreadable ({e})"
            ) from None
        # The resize render_on_image does, done here in the pool: its own resize then finds
        # the size already right, and Pillow returns a copy (same pixels as a direct call).
        return img.resize((self.size, self.size - self.band), Image.Resampling.BILINEAR)

    def __call__(self, batch: Sequence[VQARecord]) -> np.ndarray:
        photos = list(self.pool.map(self._photo, batch) if self.pool else map(self._photo, batch))
        if self.renderer is None:  # a token model: the photo alone, whole
            return np.stack([np.asarray(photo, np.uint8) for photo in photos])
        return np.stack(
            [
                render_on_image(self.renderer, photo, r.question, self.band)
                for photo, r in zip(photos, batch)
            ]
        )


def _data_key(split: str, records: Sequence[VQARecord]) -> str:
    """What the features of a split depend on besides the model: the split, each question's id
    and text, and its image's path, size and modification time (the pixels are not hashed)."""
    rows = []
    for r in records:
        st = os.stat(r.image_path)
        rows.append((r.question_id, r.question, str(r.image_path), st.st_size, st.st_mtime_ns))
    return data_fingerprint([split, rows])


def _soft_targets(records: Sequence[VQARecord], vocab: AnswerVocab) -> torch.Tensor:
    """Sparse float32 [N, K] soft targets (rows without a vocabulary answer stay all zero)."""
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for i, r in enumerate(records):
        t = soft_target(r.answers, vocab)
        rows += [i] * len(t.indices)
        cols += t.indices
        vals += t.scores
    index = torch.tensor([rows, cols], dtype=torch.int64).reshape(2, -1)
    values = torch.tensor(vals, dtype=torch.float32)
    return torch.sparse_coo_tensor(index, values, (len(records), len(vocab)), check_invariants=True)


def selection_score(scores: np.ndarray, targets: np.ndarray) -> float:
    """The selection proxy: mean soft-target value of each row's argmax answer.
    scores, targets float [N, K] -> float in [0, 1]."""
    best = scores.argmax(-1)
    return float(targets[np.arange(len(best)), best].mean())


def answer_coverage(records: Sequence[VQARecord], vocab: AnswerVocab) -> float:
    """The fraction of questions whose most common (normalised) human answer is in the
    vocabulary (ties: the answer given first), an upper bound's proxy for the head."""
    hits = 0
    for r in records:
        top = Counter(normalize_answer(a) for a in r.answers).most_common(1)[0][0]
        hits += top in vocab.index
    return hits / len(records)


def _summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """vqa_accuracy of each seed -> {overall: {seeds, mean, std}, per_answer_type: {type: ...},
    per_question_type: {type: ...}}."""

    def stats(values: list[float]) -> dict[str, Any]:
        return {"seeds": values, "mean": float(np.mean(values)), "std": float(np.std(values))}

    out: dict[str, Any] = {"overall": stats([m["overall"] for m in per_seed])}
    for group in _GROUPS:
        out[group] = {t: stats([m[group][t] for m in per_seed]) for t in per_seed[0][group]}
    return out


def finetune_config(options: VqaOptions) -> FinetuneConfig:
    """`options.finetune` with `max_train_steps` applied."""
    steps = options.max_train_steps or options.finetune.max_steps
    return replace(options.finetune, max_steps=steps)


# per seed: (the head's sigmoid scores on the eval split [N, K], the seed's selection)
SeedScores = Iterator[tuple[np.ndarray, dict[str, Any]]]


def _token_features(
    model: TokenModel,
    o: VqaOptions,
    split: str,
    records: list[VQARecord],
    to_images: _Photos,
    device: Any,
    bf16: bool,
) -> np.ndarray:
    """A token model's features of `records`: [image tower's pooled photo, text side's pooled
    question], float32 [N, 2 * width]; each distinct photo and question encoded once."""
    row_of: dict[Path, int] = {}  # photo -> its row in `photos`
    photos: list[VQARecord] = []
    for r in records:
        if r.image_path not in row_of:
            row_of[r.image_path] = len(photos)
            photos.append(r)
    questions = list(dict.fromkeys(r.question for r in records))
    common = dict(batch_size=o.batch_size, device=device, bf16=bf16, cache_dir=o.cache_dir)
    z_photo = extract_features(
        model,
        photos,
        to_images,
        key={"suite": "vqa", "part": "photo"},
        data_key=_data_key(split, photos),
        desc=f"vqa {split} photos",
        **common,
    )
    z_question = extract_text_features(
        model,
        questions,
        key={"suite": "vqa", "part": "question"},
        desc=f"vqa {split} questions",
        **common,
    )
    q_row = {q: i for i, q in enumerate(questions)}
    return combine_photo_question(
        z_photo,
        [row_of[r.image_path] for r in records],
        z_question,
        [q_row[r.question] for r in records],
    )


def _frozen(
    model: Encoder,
    o: VqaOptions,
    train: list[VQARecord],
    y_train: torch.Tensor,
    evaluated: list[VQARecord],
    to_images: _Photos,
    vocab: AnswerVocab,
    band: int,
    device: Any,
    bf16: bool,
) -> SeedScores:
    """Frozen mode: features once per split (cached), then a head per seed."""

    def features(split: str, records: list[VQARecord]) -> np.ndarray:
        if isinstance(model, TokenModel):
            return _token_features(model, o, split, records, to_images, device, bf16)
        return extract_features(
            model,
            records,
            to_images,
            batch_size=o.batch_size,
            device=device,
            bf16=bf16,
            cache_dir=o.cache_dir,
            key={"suite": "vqa", "band": band},
            data_key=_data_key(split, records),
            desc=f"vqa {split}",
        )

    x_train = features(o.train_split, train)
    x_eval = features(o.eval_split, evaluated)
    config = replace(o.head, kind="soft_multilabel")
    out = []
    for seed in range(o.seeds):
        head: FittedHead = fit_head(
            x_train,
            y_train,
            config,
            seed=seed,
            select_metric=selection_score,
            num_outputs=len(vocab),
        )
        out.append((head.predict(x_eval), head.selection))
    return iter(out)


def _finetuned(
    model: CLIPPO,
    o: VqaOptions,
    train: list[VQARecord],
    y_train: torch.Tensor,
    evaluated: list[VQARecord],
    to_images: _Photos,
    vocab: AnswerVocab,
    out_dir: str | os.PathLike,
    device: Any,
    bf16: bool,
    log: Callable[[str], None],
) -> SeedScores:
    """Finetune mode: per seed a fine-tuned copy of the model with its answer head."""
    out = []
    for seed in range(o.seeds):
        tuned = finetune(
            model,
            train,
            y_train,
            to_images,
            "soft_multilabel",
            len(vocab),
            finetune_config(o),
            seed=seed,
            run_dir=Path(out_dir) / "finetune" / "vqa" / f"seed{seed}",
            select_metric=selection_score,
            device=device,
            log=log,
        )
        scores = tuned.predict(
            evaluated,
            to_images,  # the tuned model's renderer is the original's
            batch_size=o.batch_size,
            device=device,
            bf16=bf16,
            desc=f"vqa {o.eval_split} (fine-tuned)",
        )
        out.append((scores, {**tuned.selection, "run_dir": str(tuned.run_dir)}))
    return iter(out)


def check_model(model: Encoder, options: VqaOptions) -> None:
    """Raise ValueError, naming the option, when `model` cannot run `options`: a token model
    reads the question as tokens, so no band is drawn and nothing is fine-tuned on it."""
    if not isinstance(model, TokenModel):
        return
    name = architecture_of(model)
    if options.mode == "finetune":
        raise ValueError(
            f"mode 'finetune' (--mode finetune) tunes the encoder on rendered questions; a "
            f"{name} model reads tokens: use mode 'frozen'"
        )
    if options.band is not None:
        raise ValueError(
            f"band={options.band} (--band): a {name} model reads the question as tokens, "
            "beside the whole photo; leave band unset"
        )


def run_vqa(
    model: Encoder,
    options: VqaOptions,
    out_dir: str | os.PathLike,
    *,
    device: Any = None,
    bf16: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train heads on `options.train_split`, answer `options.eval_split`; write the official
    results file under `out_dir` and return the results.json body (module docstring)."""
    check_model(model, options)
    o = options
    size = model.config.vit.image_size
    tokens = isinstance(model, TokenModel)
    band = 0 if tokens else size // 2 if o.band is None else o.band
    if band > size:
        raise ValueError(f"band={band} px is taller than the model's {size} px image")
    cap = o.max_examples or None
    train = read_vqa(o.data_dir, o.train_split, max_examples=cap)
    evaluated = read_vqa(o.data_dir, o.eval_split, max_examples=cap)
    for split, records in ((o.train_split, train), (o.eval_split, evaluated)):
        if not records:
            raise DataError(f"{questions_file(o.data_dir, split)}: no questions")
    test = is_test_split(o.eval_split)
    vocab = build_answer_vocab(train, o.answers)
    y_train = _soft_targets(train, vocab)

    pool = ThreadPoolExecutor(o.num_workers) if o.num_workers else None
    try:
        to_images = _Photos(model, band, pool)
        if o.mode == "finetune":
            assert isinstance(model, CLIPPO)  # check_model refused the others
            seeds = _finetuned(
                model, o, train, y_train, evaluated, to_images, vocab, out_dir, device, bf16, log
            )
        else:
            seeds = _frozen(
                model, o, train, y_train, evaluated, to_images, vocab, band, device, bf16
            )
    finally:
        if pool is not None:
            pool.shutdown()

    per_seed: list[dict[str, Any]] = []
    selections = []
    written = None
    for seed, (scores, selection) in enumerate(seeds):
        selections.append(selection)
        best = scores.argmax(-1)
        predictions = {r.question_id: vocab.answers[k] for r, k in zip(evaluated, best)}
        if seed == 0:
            written = write_results(predictions, evaluated, Path(out_dir), o.eval_split)
        if not test:
            per_seed.append(vqa_accuracy(predictions, evaluated))
            log(f"vqa {o.eval_split} seed {seed}: overall {per_seed[-1]['overall']:.4f}")

    result: dict[str, Any] = {
        "architecture": architecture_of(model),
        "results_file": str(written),
        "vocab_size": len(vocab),
        "train": {
            "split": o.train_split,
            "questions_file": str(questions_file(o.data_dir, o.train_split)),
            "rows": len(train),
        },
        "eval": {
            "split": o.eval_split,
            "questions_file": str(questions_file(o.data_dir, o.eval_split)),
            "rows": len(evaluated),
            "answer_coverage": None if test else answer_coverage(evaluated, vocab),
        },
        "band": None if tokens else band,
        "mode": o.mode,
        "selection": selections,
    }
    if o.mode == "finetune":
        result["finetune"] = config_dict(finetune_config(o))
    if test:
        log(f"vqa {o.eval_split}: test split, answers in {written} (no metrics)")
        return result
    result["metrics"] = _summary(per_seed)
    majority = vocab.answers[0]
    baseline = vqa_accuracy({r.question_id: majority for r in evaluated}, evaluated)
    result["baseline"] = {"majority": {"answer": majority, **baseline}}
    m = result["metrics"]["overall"]
    log(
        f"vqa {o.eval_split}: overall {m['mean']:.4f} ± {m['std']:.4f} ({o.seeds} seeds), "
        f"majority answer {majority!r} {baseline['overall']:.4f}"
    )
    return result


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for `format_table`: overall and each answer type (mean ± std over seeds, x100 as the
    official code prints), the majority baseline beside each; one row saying where the answers
    are for a test split."""
    metrics = result.get("metrics")
    if metrics is None:
        return [{"task": f"vqa {result['eval']['split']}", "score": "no metrics (test split)"}]
    base = result["baseline"]["majority"]
    entries = [("overall", metrics["overall"], base["overall"])]
    for t, m in metrics["per_answer_type"].items():
        entries.append((t, m, base["per_answer_type"][t]))
    return [
        {
            "task": f"vqa {name}",
            "accuracy": f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}",
            "majority baseline": f"{100 * b:.1f}",
        }
        for name, m, b in entries
    ]


__all__ = [
    "DEFAULT_HEAD",
    "VqaOptions",
    "answer_coverage",
    "run_vqa",
    "selection_score",
    "table_rows",
]
