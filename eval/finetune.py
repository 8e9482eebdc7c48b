"""Full fine-tuning for the GLUE and VQA suites, through the trainer (`clippo.train`).

`finetune(model, items, targets, to_images, kind, ...)` copies the model, puts a head on its
`pooled` output (`clippo.train.task_step.TaskStep`, with `clippo.eval.heads`' kinds and
`head_loss`) and trains both with the real `Trainer`: its step, AdamW (`clippo.train.optim`),
a warm-up + cosine schedule, bf16 autocast where `choose_precision("auto")` picks it on CUDA
(float32 elsewhere), gradient clipping and checkpoints. The run lives in `run_dir` (the suites
use `OUT/finetune/<task>/seed<k>`) and keeps its last checkpoint (with its manifest), written
at the end: a run folder that already holds one is resumed (`resume="auto"`), so a killed or
finished run is not trained again. The checkpoint records which rows, targets, seed and
pretrained model it was trained on; a run folder of another setup is refused.

Data: step k's batch is rows `order[k*B:(k+1)*B]` of the train rows, `order` being one seeded
permutation per epoch laid end to end (`RowBatches`): a function of (seed, k) only, as the
trainer's data contract asks, so a resumed run sees the data of an uninterrupted one. Rows are
rendered as they are drawn by the suite's `to_images`.

Steps: `max_steps`, else `epochs` passes over the rows. Regression targets are standardised
with the train rows' mean and std (undone at prediction), as for frozen heads.

Model selection (on a slice held out from TRAIN, never dev): with more than one learning rate
in `FinetuneConfig.learning_rates` and a slice of at least `min_holdout` rows, each learning
rate fine-tunes on the rest of train (`run_dir/select-lr<lr>`) and is scored on the slice with
the caller's metric; the best (the first of equal scores) fine-tunes on all of train. Otherwise
the first learning rate is used and `selection["note"]` says why there was no selection (the
default grid has a single point: each grid point costs one more fine-tuning).
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from clippo.eval.features import ToImages, data_fingerprint, extract_features, model_fingerprint
from clippo.eval.heads import FittedHead, HeadKind, SparseRows, head_loss
from clippo.model.config import VARIANTS
from clippo.model.one_tower import CLIPPO
from clippo.train.config import (
    CheckpointConfig,
    ConfigError,
    LoggingConfig,
    LoopConfig,
    ModelSection,
    TrainConfig,
)
from clippo.train.loop import Trainer
from clippo.train.optim import OptimConfig
from clippo.train.schedule import ScheduleConfig
from clippo.train.task_step import TaskHead, TaskStep

SelectMetric = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class FinetuneConfig:
    """How the tower and head are fine-tuned: AdamW at a small peak learning rate (decoupled
    weight decay `weight_decay`, on weight matrices only), linear warm-up over `warmup_fraction`
    of the steps, then cosine decay to 0; global-norm clipping at `clip_grad_norm`.

    max_steps: optimiser steps (0: `epochs` passes over the train rows). learning_rates: the
    selection grid (module docstring); its first point is the default."""

    learning_rates: tuple[float, ...] = (1e-4,)
    weight_decay: float = 1e-4
    epochs: int = 3
    max_steps: int = 0
    batch_size: int = 32
    warmup_fraction: float = 0.1
    clip_grad_norm: float = 1.0
    holdout_fraction: float = 0.1
    min_holdout: int = 20

    def __post_init__(self) -> None:
        if not self.learning_rates or not all(0 < lr < math.inf for lr in self.learning_rates):
            raise ConfigError(f"learning_rates={self.learning_rates}: need values > 0")
        if not 0 <= self.weight_decay < math.inf or not 0 <= self.clip_grad_norm < math.inf:
            raise ConfigError("weight_decay and clip_grad_norm must be >= 0")
        if self.epochs < 1 or self.batch_size < 1 or self.min_holdout < 1 or self.max_steps < 0:
            raise ConfigError("epochs, batch_size and min_holdout must be >= 1, max_steps >= 0")
        if not 0 <= self.warmup_fraction < 1 or not 0 < self.holdout_fraction < 1:
            raise ConfigError("warmup_fraction must be in [0, 1), holdout_fraction in (0, 1)")

    def steps(self, rows: int) -> int:
        """The number of optimiser steps on `rows` train rows."""
        return self.max_steps or self.epochs * math.ceil(rows / min(self.batch_size, rows))


class RowBatches:
    """A trainer `DataFactory` over train rows: `factory(start_step)` yields (uint8 images
    [B,S,S,3], targets [B,...]) for steps start_step, start_step+1, ... (module docstring).

    Its `state_dict` (saved with each checkpoint) fingerprints the rows, targets, seed, batch
    size and the pretrained model; `load_state_dict` refuses a checkpoint of another setup."""

    def __init__(
        self,
        items: Sequence[Any],
        targets: Callable[[np.ndarray], np.ndarray],
        to_images: ToImages,
        batch_size: int,
        seed: int,
        key: str,
    ) -> None:
        self.items, self.targets, self.to_images = items, targets, to_images
        self.batch_size, self.seed, self.key = batch_size, seed, key

    def rows(self, step: int) -> np.ndarray:
        """The row indices of step `step`'s batch, int64 [B]."""
        n, b = len(self.items), self.batch_size
        pos = np.arange(step * b, (step + 1) * b)
        epochs = pos // n
        out = np.empty(b, np.int64)
        for e in np.unique(epochs):
            perm = np.random.default_rng([self.seed, int(e)]).permutation(n)
            out[epochs == e] = perm[pos[epochs == e] % n]
        return out

    def __call__(self, start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        step = start_step
        while True:
            rows = self.rows(step)
            yield np.asarray(self.to_images([self.items[i] for i in rows])), self.targets(rows)
            step += 1

    def state_dict(self, step: int) -> dict[str, Any]:
        return {"finetune": self.key, "step": step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("finetune") != self.key:
            raise ConfigError(
                "the run folder's checkpoint was fine-tuned on other rows, targets, seed or "
                "model: choose another output folder or remove it"
            )


@dataclass
class Finetuned:
    """A fine-tuned copy of the model and its head (`FittedHead` with identity
    standardisation of the pooled features; regression targets' mean/std)."""

    model: CLIPPO
    head: FittedHead
    run_dir: Path
    selection: dict[str, Any] = field(default_factory=dict)

    def predict(
        self,
        items: Sequence[Any],
        to_images: ToImages,
        *,
        batch_size: int = 64,
        device: Any = None,
        bf16: bool = False,
        desc: str = "fine-tuned",
    ) -> np.ndarray:
        """items -> the head's output: softmax [N, C] / values [N] / sigmoid [N, K], float32."""
        x = extract_features(
            self.model, items, to_images, batch_size=batch_size, device=device, bf16=bf16, desc=desc
        )
        return self.head.predict(x)


def _model_section(model: CLIPPO) -> ModelSection:
    """The TrainConfig model section describing `model`'s sizes (recorded with checkpoints)."""
    vit = model.config.vit
    return ModelSection(
        variant=next(iter(VARIANTS)),
        image_size=vit.image_size,
        out_dim=model.config.out_dim,
        width=vit.width,
        depth=vit.depth,
        num_heads=vit.num_heads,
        mlp_dim=vit.mlp_dim,
        patch_size=vit.patch_size,
        temperature_init=model.config.temperature_init,
    )


def train_config(
    model: CLIPPO,
    config: FinetuneConfig,
    lr: float,
    rows: int,
    seed: int,
    run_dir: Path,
    device: Any,
) -> TrainConfig:
    """The trainer's config for one fine-tuning run on `rows` train rows."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    steps = config.steps(rows)
    return TrainConfig(
        model=_model_section(model),
        optim=OptimConfig(name="adamw", lr=lr, wd=config.weight_decay),
        schedule=ScheduleConfig(kind="cosine", warmup_steps=int(config.warmup_fraction * steps)),
        loop=LoopConfig(
            steps=steps,
            batch_size=min(config.batch_size, rows),
            precision="auto" if dev.type == "cuda" else "fp32",
            device=str(dev),
            parallel="auto",
            clip_grad_norm=config.clip_grad_norm,
            seed=seed,
        ),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=1, resume="auto"),
        logging=LoggingConfig(
            run_dir=str(run_dir),
            every_steps=max(1, min(50, steps)),
            tensorboard=False,
            progress=False,
            loss_png=False,
        ),
    )


@dataclass(frozen=True)
class _Targets:
    """Train targets: `rows(idx)` -> int64 [B] / float32 [B] / float32 [B, K] (sparse soft
    targets stay sparse until a batch is drawn); `parts` what the run's fingerprint covers."""

    rows: Callable[[np.ndarray], np.ndarray]
    count: int
    parts: tuple[Any, ...]


def _targets(y: Any, kind: HeadKind) -> _Targets:
    sparse = hasattr(y, "tocsr") or (isinstance(y, torch.Tensor) and y.layout != torch.strided)
    if kind == "soft_multilabel" and sparse:
        t = SparseRows.of(y)
        return _Targets(t.dense, len(t), (t.indptr, t.indices, t.data, t.shape))
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    a = np.asarray(y, np.int64 if kind == "classification" else np.float32)
    return _Targets(lambda rows: a[rows], len(a), (a,))


def _subset(
    rows: Callable[[np.ndarray], np.ndarray], subset: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """Targets of the rows `subset[i]` for i in the given indices."""
    return lambda i: rows(subset[i])


def _one_run(
    model: CLIPPO,
    items: Sequence[Any],
    targets: _Targets,
    to_images: ToImages,
    kind: HeadKind,
    num_outputs: int,
    config: FinetuneConfig,
    lr: float,
    seed: int,
    run_dir: Path,
    device: Any,
    target_stats: tuple[float, float],
) -> Finetuned:
    cfg = train_config(model, config, lr, len(items), seed, run_dir, device)
    mean, std = target_stats
    loss_targets: Callable[[np.ndarray], np.ndarray] = targets.rows
    if kind == "regression":  # standardised targets: one learning rate for any scale

        def loss_targets(rows: np.ndarray) -> np.ndarray:
            return ((targets.rows(rows) - mean) / std).astype(np.float32)

    key = data_fingerprint(
        [kind, num_outputs, seed, cfg.loop.batch_size, model_fingerprint(model)]
        + [data_fingerprint(items), list(targets.parts)]
    )
    data = RowBatches(items, loss_targets, to_images, cfg.loop.batch_size, seed, key)
    width = model.config.vit.width

    def make_step(m: CLIPPO, _: TrainConfig) -> TaskStep:
        # drawn after the trainer's torch.manual_seed(seed): the same head for the same seed
        head = nn.Linear(width, 1 if kind == "regression" else num_outputs)
        return TaskStep(m, TaskHead(head, functools.partial(head_loss, kind)))

    trainer = Trainer(cfg, data, [], copy.deepcopy(model), step=make_step)
    result = trainer.run()
    tuned = result.model.eval()
    module = copy.deepcopy(cast(TaskHead, trainer.core.loss).head).cpu().float().eval()
    zeros, ones = np.zeros(width, np.float32), np.ones(width, np.float32)
    head = FittedHead(kind, module, zeros, ones, mean, std)
    return Finetuned(tuned, head, run_dir)


def finetune(
    model: CLIPPO,
    items: Sequence[Any],
    targets: Any,
    to_images: ToImages,
    kind: HeadKind,
    num_outputs: int,
    config: FinetuneConfig,
    *,
    seed: int,
    run_dir: str | os.PathLike,
    select_metric: SelectMetric,
    device: Any = None,
    log: Callable[[str], None] = print,
) -> Finetuned:
    """Fine-tune a copy of `model` with a head on train (`items`, `targets` as `fit_head` takes
    them for `kind`; `num_outputs` classes or answers, ignored for regression) -> the tuned
    model and head. `select_metric(scores, targets) -> float`, higher is better, scores the
    held-out slice (module docstring). `model` itself is left unchanged."""
    if len(items) == 0:
        raise ValueError("cannot fine-tune on an empty train set")
    run = Path(run_dir)
    t = _targets(targets, kind)
    if t.count != len(items):
        raise ValueError(f"{len(items)} train rows but {t.count} targets")
    stats = (0.0, 1.0)
    if kind == "regression":
        every = t.rows(np.arange(len(items)))
        stats = (float(every.mean()), float(every.std()) or 1.0)
    grid = config.learning_rates
    n_hold = int(len(items) * config.holdout_fraction)
    chosen, selection = grid[0], dict[str, Any]()
    if len(grid) == 1:
        selection = {"note": "no selection: a single learning rate"}
    elif n_hold < config.min_holdout:
        need = math.ceil(config.min_holdout / config.holdout_fraction)
        selection = {"note": f"no selection: {len(items)} train rows < minimum {need}"}
    else:
        perm = np.random.default_rng(seed).permutation(len(items))
        hold, rest = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
        rest_items = [items[i] for i in rest]
        scores = []
        for lr in grid:
            rest_t = _Targets(_subset(t.rows, rest), len(rest), (*t.parts, rest))
            tuned = _one_run(
                model,
                rest_items,
                rest_t,
                to_images,
                kind,
                num_outputs,
                config,
                lr,
                seed,
                run / f"select-lr{lr:g}",
                device,
                stats,
            )
            pred = tuned.predict([items[i] for i in hold], to_images, device=device)
            score = float(select_metric(pred, t.rows(hold)))
            scores.append({"learning_rate": lr, "score": score})
            log(f"fine-tune {run}: lr {lr:g} scores {score:.4f} on {n_hold} held-out train rows")
        finite = [s["score"] if math.isfinite(s["score"]) else -math.inf for s in scores]
        best = int(np.argmax(finite))
        chosen = grid[best]
        selection = {"score": scores[best]["score"], "holdout_rows": n_hold, "grid": scores}
    tuned = _one_run(
        model, items, t, to_images, kind, num_outputs, config, chosen, seed, run, device, stats
    )
    tuned.selection = {"learning_rate": chosen, **selection}
    tuned.head.selection = tuned.selection
    return tuned


def config_dict(config: FinetuneConfig) -> dict[str, Any]:
    """The fine-tuning config as results.json records it."""
    return {**config.__dict__, "optimizer": "adamw", "schedule": "warmup + cosine"}


__all__ = ["FinetuneConfig", "Finetuned", "RowBatches", "config_dict", "finetune", "train_config"]
