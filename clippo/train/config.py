"""Training configuration: typed frozen dataclasses, TOML loading, `--set` overrides, presets.

    cfg = load_train_config("demo")                       # a preset name
    cfg = load_train_config("run.toml", ["loop.steps=100", "optim.lr=3e-4"])
    cfg.to_dict()                                         # the resolved config, saved with checkpoints

A TOML file holds one table per section (`[loop]`, `[optim]`, ...) and may start from a preset
with a top-level `preset = "coco-sanity"`. Unknown keys and values of the wrong type are errors
that name the key.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from clippo import typed_config
from clippo.errors import read_utf8
from clippo.registry import Registry, UnknownNameError
from clippo.train.log import WandbConfig
from clippo.train.optim import OptimConfig
from clippo.train.precision import PrecisionError, check_precision
from clippo.train.schedule import ScheduleConfig
from clippo.typed_config import ConfigError, deep_merge, from_dict, to_plain

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "SourceConfig",
    "DataConfig",
    "ModelSection",
    "OptimConfig",  # re-exported from clippo.train.optim
    "LoopConfig",
    "CheckpointConfig",
    "LoggingConfig",
    "ValidationConfig",
    "WandbConfig",  # re-exported from clippo.train.log
    "TrainConfig",
    "PRESETS",
    "preset",
    "load_train_config",
    "apply_overrides",
    "config_from_dict",
]


# ---- sections ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceConfig:
    """One pair source. `kind` is a name in clippo.data's source registry (exact match);
    `options` are passed to that source as keyword arguments."""

    kind: str
    path: str = ""
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    """Where pairs come from and how batches are mixed.

    text_pair_fraction: share of every batch drawn from `text_pairs` (CLIPPO: 0.25/0.5/0.75).
    render_on: "worker" renders texts in DataLoader workers; "device" renders on the accelerator.
    resampled: sharded sources draw shards with replacement, independently on every rank and
    worker (an endless stream; open_clip's --dataset-resampled); off: the exact, resumable order.
    shuffle_buffer: records in the shuffle buffer of streamed (`pipe:`/URL) or resampled sources
    (<= 1 keeps stream order).
    """

    image_text: tuple[SourceConfig, ...] = ()
    text_pairs: tuple[SourceConfig, ...] = ()
    text_pair_fraction: float = 0.0
    render_on: Literal["worker", "device"] = "worker"
    num_workers: int = 2
    prefetch_factor: int = 2
    resampled: bool = False
    shuffle_buffer: int = 1000


@dataclass(frozen=True)
class ModelSection:
    """The model to train: a named variant, optionally resized, or a big_vision init.

    width/depth/num_heads/mlp_dim/patch_size override the variant's sizes when set.
    init_from: a big_vision ImageNet-21k (or CLIPPO) `.npz` loaded with `clippo.load_image_init`.
    renderer: how texts are drawn, "unifont" (big_vision's) or "text" (`clippo.render.TextRenderer`),
    with that renderer's default settings at `image_size`; saved in the model's config.
    ink_only_text: rendered texts keep only their inked patches (training and, by default,
    evaluation); patch_dropout: share of photo patch tokens dropped in training (FLIP; never
    texts). Both saved in the model's config, and CLIPPO-only.

    architecture: "clippo" (pixels only), or one of the paper's token baselines "clip-star"
    (CLIP*: image ViT + a text transformer of the same sizes) and "1t-clip" (one ViT shared by
    patches and tokens); `clippo.model.architectures`. For those, texts are tokenised:
    tokenizer: a `tokenizer.json` path, or "" to train one (BPE, at most `vocab_size` pieces) on
    the first `tokenizer_texts` texts of the run's own sources (`clippo.train.data.source_texts`);
    text_max_length: tokens per text (the closing `</s>` included). The tokenizer is saved in
    every checkpoint and a resumed run uses the saved one.
    """

    variant: str = "B/16"
    image_size: int = 224
    out_dim: int | None = None
    width: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_dim: int | None = None
    patch_size: int | None = None
    temperature_init: float = 10.0
    init_from: str = ""
    grad_checkpointing: bool = False
    compile: bool = False
    renderer: Literal["unifont", "text"] = "unifont"
    ink_only_text: bool = False
    patch_dropout: float = 0.0
    architecture: Literal["clippo", "clip-star", "1t-clip"] = "clippo"
    tokenizer: str = ""
    vocab_size: int = 32000
    text_max_length: int = 64
    tokenizer_texts: int = 100_000

    @property
    def reads_tokens(self) -> bool:
        """True for the token baselines (CLIP*, 1T-CLIP): texts are tokenised, not rendered."""
        return self.architecture != "clippo"

    def _vit_config(self) -> Any:
        """-> clippo.model.config.ViTConfig: the variant's sizes with this section's overrides."""
        from clippo.model.config import VARIANTS, ViTConfig

        if self.variant not in VARIANTS:
            raise ConfigError(
                f"model.variant: unknown {self.variant!r} (known: {', '.join(VARIANTS)})"
            )
        sizes: dict[str, Any] = VARIANTS[self.variant].to_dict()
        sizes.update({k: getattr(self, k) for k in sizes if getattr(self, k) is not None})
        # through from_dict so that the configs' own checks name the key ("model.width ...")
        return from_dict(ViTConfig, {**sizes, "image_size": self.image_size}, "model")

    def token_model_config(self, vocab_size: int) -> Any:
        """-> clippo.model.token_model.TokenModelConfig for a tokenizer of `vocab_size` entries
        (the trained vocabulary may be smaller than `self.vocab_size`: see `TextTokenizer`)."""
        from clippo.model.token_model import TokenModelConfig

        vit = self._vit_config()
        return from_dict(
            TokenModelConfig,
            {
                "vit": vit,
                "vocab_size": vocab_size,
                "max_length": self.text_max_length,
                "out_dim": vit.width if self.out_dim is None else self.out_dim,
                "temperature_init": self.temperature_init,
            },
            "model",
        )

    def model_config(self) -> Any:
        """-> clippo.ModelConfig: the variant's sizes with this section's overrides."""
        from clippo.model.config import ModelConfig

        vit = self._vit_config()
        head = {"out_dim": vit.width if self.out_dim is None else self.out_dim}
        return from_dict(
            ModelConfig,
            {
                "vit": vit,
                **head,
                "temperature_init": self.temperature_init,
                "renderer": self.renderer,
                "ink_only_text": self.ink_only_text,
                "patch_dropout": self.patch_dropout,
            },
            "model",
        )


@dataclass(frozen=True)
class LoopConfig:
    """The step loop. `batch_size` is the global number of pairs per optimiser step; it is split
    over ranks and then over `accum_steps` micro-batches.

    precision: "bf16" or "fp16" autocast, or "fp32"; "auto": bf16 on CUDA with bf16 support and on
    CPUs with AMX-BF16, else fp32 (`clippo.train.precision`: a fixed rule, never fp16). "fp16" (for
    GPUs without bf16: V100, T4) trains with a gradient scaler (skips steps whose gradients
    overflow; its state is checkpointed); on CPU it runs but slowly, and it is refused with FSDP
    (see `clippo.train.precision`). The choice is saved with the run in train_config.json.
    clip_grad_norm: global-norm gradient clipping (0 = off).
    max_logit_scale: clamp the learned logit scale exp(t) to at most this after every optimiser
    step (t <= ln max_logit_scale); 0 = no clamp. CLIP clamps at 100; big_vision (and so the
    `clippo-b16` preset) does not clamp."""

    steps: int = 1000
    batch_size: int = 256
    accum_steps: int = 1
    precision: Literal["bf16", "fp16", "fp32", "auto"] = "bf16"
    device: str = "auto"
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"
    loss: Literal["softmax", "sigmoid"] = "softmax"
    local_loss: bool = False
    clip_grad_norm: float = 1.0
    max_logit_scale: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class CheckpointConfig:
    """every_steps: 0 = only at the end (and on SIGTERM). resume: "" (start fresh), "auto"
    (newest complete checkpoint in the run directory, if any) or a checkpoint directory."""

    every_steps: int = 1000
    keep_last: int = 3
    on_sigterm: bool = True
    resume: str = ""


@dataclass(frozen=True)
class LoggingConfig:
    """Metrics go to `<run_dir>/metrics.jsonl` every `every_steps`, and to TensorBoard (when
    installed) and Weights & Biases (`wandb`, off by default) beside it. eval_every_steps: how
    often the trainer's evaluation hooks run (0 = only at the end)."""

    run_dir: str = "runs/train"
    every_steps: int = 10
    eval_every_steps: int = 0
    tensorboard: bool = True
    progress: bool = True
    loss_png: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class ValidationConfig:
    """A validation loss on held-out pairs, logged as `val/loss` every `every` optimiser steps
    (0 = off) and at the end: the training loss (`loop.loss`, this rank's training batch size,
    the training precision) averaged over the first `batches` batches of these sources (the
    same batches every time, so the values are comparable), with the model in eval mode under
    no_grad.

    image_text / text_pairs: held-out sources, in `data`'s format (e.g. a shard range the training
    sources do not read). text_pair_fraction: the share of text pairs in each batch; unset:
    `data`'s when text_pairs are given, else 0. num_workers: DataLoader workers (0 = in the
    training process).
    """

    every: int = 0
    batches: int = 1
    image_text: tuple[SourceConfig, ...] = ()
    text_pairs: tuple[SourceConfig, ...] = ()
    text_pair_fraction: float | None = None
    num_workers: int = 0

    def data_config(self, train: DataConfig) -> DataConfig:
        """These sources as a data section (rendering and prefetch as in `train`)."""
        fraction = self.text_pair_fraction
        if fraction is None:
            fraction = train.text_pair_fraction if self.text_pairs else 0.0
        return dataclasses.replace(
            train,
            image_text=self.image_text,
            text_pairs=self.text_pairs,
            text_pair_fraction=fraction,
            num_workers=self.num_workers,
        )


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    # [[eval]] tables, kept opaque here: the command layer turns them into evaluation hooks
    eval: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        return config_from_dict(data)

    def replace(self, **sections: Any) -> TrainConfig:
        return dataclasses.replace(self, **sections)


def _validate(cfg: TrainConfig) -> None:
    # written so that NaN fails too; inf is no size, count or weight either
    def positive(key: str, value: float) -> None:
        if not 0 < value < math.inf:
            raise ConfigError(f"{key} must be > 0, got {value}")

    def non_negative(key: str, value: float) -> None:
        if not 0 <= value < math.inf:
            raise ConfigError(f"{key} must be >= 0, got {value}")

    lp = cfg.loop
    positive("loop.steps", lp.steps)
    positive("loop.batch_size", lp.batch_size)
    positive("loop.accum_steps", lp.accum_steps)
    if lp.batch_size % lp.accum_steps:
        raise ConfigError(
            f"loop.batch_size {lp.batch_size} is not divisible by loop.accum_steps {lp.accum_steps}"
        )
    non_negative("loop.clip_grad_norm", lp.clip_grad_norm)
    non_negative("loop.max_logit_scale", lp.max_logit_scale)
    non_negative("loop.seed", lp.seed)
    _validate_precision(lp)
    non_negative("data.num_workers", cfg.data.num_workers)
    positive("data.prefetch_factor", cfg.data.prefetch_factor)
    if lp.steps > 1 and cfg.schedule.warmup_steps >= lp.steps:
        raise ConfigError(
            f"schedule.warmup_steps {cfg.schedule.warmup_steps} must be < loop.steps {lp.steps}"
        )
    if cfg.schedule.cooldown_steps > lp.steps:
        raise ConfigError(
            f"schedule.cooldown_steps {cfg.schedule.cooldown_steps} exceeds loop.steps {lp.steps}"
        )
    non_negative("checkpoint.every_steps", cfg.checkpoint.every_steps)
    positive("checkpoint.keep_last", cfg.checkpoint.keep_last)
    positive("logging.every_steps", cfg.logging.every_steps)
    non_negative("logging.eval_every_steps", cfg.logging.eval_every_steps)
    cfg.model.model_config()  # variant known, sizes consistent
    _validate_architecture(cfg.model)
    if not 0.0 <= cfg.data.text_pair_fraction <= 1.0:
        raise ConfigError(
            f"data.text_pair_fraction must be in [0, 1], got {cfg.data.text_pair_fraction}"
        )
    for group in ("image_text", "text_pairs"):
        for i, src in enumerate(getattr(cfg.data, group)):
            positive(f"data.{group}.{i}.weight", src.weight)
    val = cfg.validation
    non_negative("validation.every", val.every)
    positive("validation.batches", val.batches)
    non_negative("validation.num_workers", val.num_workers)
    if val.text_pair_fraction is not None and not 0.0 <= val.text_pair_fraction <= 1.0:
        raise ConfigError(
            f"validation.text_pair_fraction must be in [0, 1], got {val.text_pair_fraction}"
        )
    if val.every and not (val.image_text or val.text_pairs):
        raise ConfigError(
            f"validation.every = {val.every} but validation has no sources: give "
            "validation.image_text and/or validation.text_pairs (held-out pairs)"
        )
    for group in ("image_text", "text_pairs"):
        for i, src in enumerate(getattr(val, group)):
            positive(f"validation.{group}.{i}.weight", src.weight)
    wb = cfg.logging.wandb
    if wb.enabled and not wb.project:
        raise ConfigError("logging.wandb.project must not be empty when logging.wandb.enabled")


# the CLIPPO-only model keys, with the value that means "off"
_PIXEL_ONLY_KEYS = {"ink_only_text": False, "patch_dropout": 0.0}


def _validate_architecture(m: ModelSection) -> None:
    """The token keys' ranges; a token architecture refuses CLIPPO's token-dropping keys."""
    if m.vocab_size < 4:  # <pad>, <unk>, </s> and at least one piece
        raise ConfigError(f"model.vocab_size must be >= 4, got {m.vocab_size}")
    if m.text_max_length < 2:  # at least one piece before the closing </s>
        raise ConfigError(f"model.text_max_length must be >= 2, got {m.text_max_length}")
    if m.tokenizer_texts < 1:
        raise ConfigError(f"model.tokenizer_texts must be >= 1, got {m.tokenizer_texts}")
    if not m.reads_tokens:
        return
    for key, off in _PIXEL_ONLY_KEYS.items():
        if getattr(m, key) != off:
            raise ConfigError(
                f"model.{key} is CLIPPO-only (it drops rendered-text or photo patches); "
                f"model.architecture {m.architecture!r} reads tokens: remove model.{key}"
            )
    if m.init_from:
        raise ConfigError(
            f"model.init_from is CLIPPO-only; model.architecture {m.architecture!r} starts "
            "from a fresh initialisation"
        )


def _validate_precision(lp: LoopConfig) -> None:
    """fp16's rule (`clippo.train.precision.check_precision`), for the device when the config names
    one; with device "auto" the trainer checks again once it knows the device."""
    if lp.precision != "fp16":
        return
    try:
        device = None if lp.device == "auto" else torch.device(lp.device).type
    except RuntimeError as e:  # torch's error for an unknown device string
        raise ConfigError(f"loop.device: {e}") from None
    try:
        check_precision(lp.precision, device, lp.parallel)
    except PrecisionError as e:
        raise ConfigError(str(e)) from None


# ---- dict <-> TrainConfig ----------------------------------------------------------------------


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A full or partial config dict (missing keys take defaults) -> TrainConfig."""
    return from_dict(TrainConfig, data, "")


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings to a config dict (type-checked against TrainConfig)."""
    return typed_config.apply_overrides(TrainConfig, config, overrides)


# ---- presets ----------------------------------------------------------------------------------

I21K_B16 = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz"


def _demo() -> TrainConfig:
    """`clippo demo`'s recipe (CPU, minutes): a 3-block ViT of width 128 at 96 px that reads only
    the inked patches of its texts, trained on the built-in synthetic corpus until it retrieves
    captions of unseen (colour, shape) pairs.

    The world: one shape per scene; 10 held-out (colour, shape) pairs leave 54 to train on
    (better generalisation than 48) and give exactly 100 distinct held-out scenes. Chosen by
    sweeps on a 2-core CPU (held-out R@1 image->text/text->image, 100 pairs):
    - sigmoid loss: with the softmax loss and batch 64 the embeddings collapse to one point within
      ~50 steps and sit at chance for 150-450 steps; the sigmoid loss has no such plateau;
    - text/text pairs at 25% of each batch: with none, the model never learns to read in the time
      (chance after 900 steps); at 50% image/text learning is slower;
    - 96 px (every caption still fits), patch 16: 112 and 128 px learn less in the same time;
      80 px (template 8 left out, as its captions do not fit) with 800 steps cost about 0.75x
      the CPU time but reached only 0.54/0.53;
    - texts ink-only (`ink_only_text`): a caption inks about 18 of its 36 patches, so the text
      side costs half; photos keep every patch (at 96 px patch dropout saves only what its
      gather costs);
    - 3 blocks of width 128 (2 heads), MLP 256: about 0.55x the CPU time per step of 4 blocks
      with MLP 512, and no slower to learn per step (0.25/0.21 at step 280, 0.38/0.36 at 420
      vs 0.29/0.28 at 320 and 0.46/0.38 at 480 with 4 blocks and MLP 256; 4 blocks with MLP 512
      only 0.17/0.20 at 420);
    - 700 steps at a constant learning rate after a 30-step warm-up, then a linear cool-down over
      the last fifth (0.67/0.71 with a 160-step cool-down): the model starts matching captions
      only after ~250 steps and needs the full rate through the middle of the run (a 600-step
      cosine reached 0.28/0.32 with 4 blocks, its 1,000-step version 0.64/0.59 at step 600);
    - batch 128 (better than 64 for the same time), AdamW (beta2 0.95), peak lr 5e-4 (8e-4 with
      a 50-step warm-up learnt faster, 0.44/0.41 at step 360, but is untested to the end; 1e-3
      stayed at chance with 4 blocks), clipping 1.0, temperature init 10 (20 stayed at chance),
      the sigmoid loss's bias initialised at -10 as SigLIP's (-5 stayed at chance past step 360);
    - float32: at width 128 bf16 autocast is slower than float32 even on a CPU with AMX-BF16
      (the casts around LayerNorm, GELU and softmax cost what the matmuls save);
    - one data worker (scenes and captions are cheap to draw: ~15% of the training process's
      CPU time) beside one torch math thread (`clippo demo --threads`, default 1): on two shared
      cores two math threads stall each other as soon as another process runs (1.8 -> 0.3-0.4
      steps/s).
    """
    world = {"counts": [1], "heldout_pairs": 10}
    return TrainConfig(
        data=DataConfig(
            image_text=(SourceConfig(kind="synthetic", options={"split": "train", **world}),),
            text_pairs=(SourceConfig(kind="synthetic_paraphrase", options=dict(world)),),
            text_pair_fraction=0.25,
            num_workers=1,  # scenes and captions are drawn beside the training process
        ),
        model=ModelSection(
            variant="Ti/16",  # patch 16; the sizes below
            image_size=96,
            width=128,
            depth=3,
            num_heads=2,
            mlp_dim=256,
            temperature_init=10.0,
            ink_only_text=True,
        ),
        optim=OptimConfig(name="adamw", lr=5e-4, wd=1e-4, betas=(0.9, 0.95)),
        schedule=ScheduleConfig(kind="constant", warmup_steps=30, cooldown_steps=140),
        loop=LoopConfig(
            steps=700,
            batch_size=128,
            precision="fp32",
            device="cpu",
            loss="sigmoid",
            clip_grad_norm=1.0,
            seed=0,
        ),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=1),  # one, at the end
        logging=LoggingConfig(
            run_dir="runs/demo", every_steps=10, tensorboard=False, loss_png=False
        ),
    )


def _coco_sanity() -> TrainConfig:
    """big_vision's `test_with_coco` config: I21k init, batch 4,000, 400 steps."""
    return TrainConfig(
        data=DataConfig(image_text=(SourceConfig(kind="hf_dataset", path="coco_captions"),)),
        model=ModelSection(variant="B/16", image_size=224, init_from=I21K_B16),
        optim=OptimConfig(name="adafactor", lr=1e-4, wd=3e-4),
        schedule=ScheduleConfig(kind="rsqrt", warmup_steps=100, cooldown_steps=100, timescale=100),
        loop=LoopConfig(steps=400, batch_size=4000),
        checkpoint=CheckpointConfig(every_steps=100),
        logging=LoggingConfig(run_dir="runs/coco-sanity"),
    )


def _clippo_b16() -> TrainConfig:
    """The CLIPPO paper's B/16 recipe (big_vision's clippo config): batch 10,240 for 250k steps,
    Adafactor lr 1e-3 with decoupled wd 1e-4, rsqrt schedule with 10k-step warm-up, cool-down
    and timescale; the logit scale is not clamped (big_vision has no clamp; CLIP's is
    `loop.max_logit_scale = 100`)."""
    return TrainConfig(
        data=DataConfig(
            image_text=(SourceConfig(kind="webdataset", path="shards/{000000..000999}.tar"),)
        ),
        model=ModelSection(variant="B/16", image_size=224),
        optim=OptimConfig(name="adafactor", lr=1e-3, wd=1e-4),
        schedule=ScheduleConfig(
            kind="rsqrt", warmup_steps=10_000, cooldown_steps=10_000, timescale=10_000
        ),
        # big_vision lets the temperature go where the loss takes it: no logit-scale clamp
        loop=LoopConfig(steps=250_000, batch_size=10_240, max_logit_scale=0.0),
        checkpoint=CheckpointConfig(every_steps=1000, keep_last=3),
        logging=LoggingConfig(run_dir="runs/clippo-b16", every_steps=50),
    )


# name -> a function building the preset; `PRESETS.register("mine", fn)` adds one
PRESETS: Registry[Callable[[], TrainConfig]] = Registry(
    "preset",
    {"demo": _demo, "coco-sanity": _coco_sanity, "clippo-b16": _clippo_b16},
    callables=True,
)


def preset(name: str) -> TrainConfig:
    """The preset `name`; an unknown name is a ConfigError listing the known ones."""
    try:
        make = PRESETS[name]
    except UnknownNameError as e:  # a preset name is config: report it as the loader's errors
        raise ConfigError(str(e)) from None
    return make()


def load_train_config(source: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """A preset name or a TOML path, then `--set` overrides -> a validated TrainConfig."""
    if isinstance(source, str) and source in PRESETS:
        base = preset(source).to_dict()
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(
                f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor a TOML file"
            )
        try:
            doc = tomllib.loads(read_utf8(path, ConfigError))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
        start = doc.pop("preset", None)
        if start is not None and not isinstance(start, str):
            raise ConfigError(f"{path}: 'preset' must be a string")
        try:
            base = preset(start).to_dict() if start else {}
            base = config_from_dict(deep_merge(base, doc)).to_dict()
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    return config_from_dict(apply_overrides(base, overrides))
