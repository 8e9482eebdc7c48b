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
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from clippo.optim import OptimConfig
from clippo.schedule import ScheduleConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "SourceConfig",
    "DataConfig",
    "ModelSection",
    "OptimConfig",  # re-exported from clippo.optim
    "LoopConfig",
    "CheckpointConfig",
    "LoggingConfig",
    "EvalSpec",
    "TrainConfig",
    "PRESETS",
    "preset",
    "load_train_config",
    "apply_overrides",
    "config_from_dict",
]


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


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
    """

    image_text: tuple[SourceConfig, ...] = ()
    text_pairs: tuple[SourceConfig, ...] = ()
    text_pair_fraction: float = 0.0
    render_on: Literal["worker", "device"] = "worker"
    num_workers: int = 2
    prefetch_factor: int = 2


@dataclass(frozen=True)
class ModelSection:
    """The model to train: a named variant, optionally resized, or a big_vision init.

    width/depth/num_heads/mlp_dim/patch_size override the variant's sizes when set.
    init_from: a big_vision ImageNet-21k (or CLIPPO) `.npz` loaded with `clippo.load_image_init`.
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

    def model_config(self) -> Any:
        """-> clippo.ModelConfig: the variant's sizes with this section's overrides."""
        from clippo.config import VARIANTS, ModelConfig, ViTConfig

        if self.variant not in VARIANTS:
            raise ConfigError(
                f"model.variant: unknown {self.variant!r} (known: {', '.join(VARIANTS)})"
            )
        sizes = VARIANTS[self.variant].to_dict()
        sizes.update({k: getattr(self, k) for k in sizes if getattr(self, k) is not None})
        try:
            vit = ViTConfig(**sizes, image_size=self.image_size)
            return ModelConfig(vit, self.out_dim or vit.width, self.temperature_init)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None


@dataclass(frozen=True)
class LoopConfig:
    """The step loop. `batch_size` is the global number of pairs per optimiser step; it is split
    over ranks and then over `accum_steps` micro-batches. precision "auto": bf16 on CUDA with bf16
    support, and on a CPU where a quick probe finds bf16 matmuls faster; else fp32.
    clip_grad_norm: global-norm gradient clipping (0 = off)."""

    steps: int = 1000
    batch_size: int = 256
    accum_steps: int = 1
    precision: Literal["bf16", "fp32", "auto"] = "bf16"
    device: str = "auto"
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"
    loss: Literal["softmax", "sigmoid"] = "softmax"
    local_loss: bool = False
    clip_grad_norm: float = 1.0
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
    run_dir: str = "runs/train"
    every_steps: int = 10
    eval_every_steps: int = 0
    tensorboard: bool = True
    progress: bool = True
    loss_png: bool = True


_EVAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation suite, run by `clippo train` (every `logging.eval_every_steps` and at the
    end; TOML `[[eval]]` tables) and by `clippo eval`. Metrics are logged as `eval/<name>/...`.

    kind: "retrieval" (path: a .csv/.tsv/.jsonl of image path + caption, several captions per
      image allowed) or "zeroshot" (path: an ImageFolder tree or a CIFAR-100 binary folder).
    name: the metric prefix; default the kind (names must differ between specs).
    format: how to read `path`; "auto": pairs for retrieval; for zeroshot "cifar100" when the
      folder holds `<split>.bin` (or `cifar-100-binary/`), else "imagefolder".
    max_examples: evaluate on this many images, evenly spaced over the set (0: all).
    templates: zero-shot prompts: "clip_paper" (big_vision's default), "clip_best" (the CLIPPO
      colab's 8), a file with one template per line, or a list; each holds one "{}".
    canonicalize: big_vision's canonicalisation (lowercase, no punctuation, first alias) of
      templates and class names; default: on for "clip_paper" only, as big_vision runs it.
    class_names: a file of class names, one per line, in label order (default: the folder
      names, or CIFAR's fine_label_names.txt).
    split: the CIFAR-100 file (`test` -> test.bin). image_column/caption_column: pairs columns.
    batch_size: images or texts per forward pass.
    """

    kind: Literal["retrieval", "zeroshot"]
    path: str
    name: str = ""
    format: Literal["auto", "pairs", "imagefolder", "cifar100"] = "auto"
    max_examples: int = 0
    templates: str | tuple[str, ...] = "clip_paper"
    canonicalize: bool | None = None
    class_names: str = ""
    split: str = "test"
    image_column: str = "image"
    caption_column: str = "caption"
    batch_size: int = 64

    def __post_init__(self) -> None:
        # ValueError (not ConfigError): the TOML loader prefixes it with the key ("eval.0: ...")
        if self.kind not in ("retrieval", "zeroshot"):
            raise ValueError(f"kind must be 'retrieval' or 'zeroshot', got {self.kind!r}")
        if not self.path:
            raise ValueError("path must be set (the evaluation data)")
        if self.name and not _EVAL_NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must match {_EVAL_NAME.pattern}")
        allowed = (
            ("auto", "pairs") if self.kind == "retrieval" else ("auto", "imagefolder", "cifar100")
        )
        if self.format not in allowed:
            raise ValueError(f"format {self.format!r} does not fit kind {self.kind!r} ({allowed})")
        if self.max_examples < 0:
            raise ValueError(f"max_examples must be >= 0 (0: all), got {self.max_examples}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        if isinstance(self.templates, list):
            object.__setattr__(self, "templates", tuple(self.templates))
        if isinstance(self.templates, tuple):
            if not self.templates:
                raise ValueError("templates: an empty list")
            for t in self.templates:
                if not isinstance(t, str) or t.count("{}") != 1:
                    raise ValueError(f"template {t!r} must be a string with one '{{}}'")
        elif not self.templates:
            raise ValueError("templates must be 'clip_paper', 'clip_best', a file or a list")

    @property
    def metric_name(self) -> str:
        """The prefix of this spec's metrics: `eval/<metric_name>/...`."""
        return self.name or self.kind

    @property
    def canonical(self) -> bool:
        """Whether prompts and class names get big_vision's canonicalisation."""
        if self.canonicalize is not None:
            return self.canonicalize
        return self.templates == "clip_paper"


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: tuple[EvalSpec, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        return config_from_dict(data)

    def replace(self, **sections: Any) -> TrainConfig:
        return dataclasses.replace(self, **sections)


def _validate(cfg: TrainConfig) -> None:
    def positive(key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")

    def non_negative(key: str, value: float) -> None:
        if value < 0:
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
    if not 0.0 <= cfg.data.text_pair_fraction <= 1.0:
        raise ConfigError(
            f"data.text_pair_fraction must be in [0, 1], got {cfg.data.text_pair_fraction}"
        )
    for group in ("image_text", "text_pairs"):
        for i, src in enumerate(getattr(cfg.data, group)):
            positive(f"data.{group}.{i}.weight", src.weight)
    seen: dict[str, int] = {}
    for i, spec in enumerate(cfg.eval):
        name = spec.metric_name
        if name in seen:
            raise ConfigError(
                f"eval.{i}.name: {name!r} is already used by eval.{seen[name]}; "
                "give each [[eval]] table a distinct name"
            )
        seen[name] = i


# ---- dict <-> dataclass with type checking -----------------------------------------------------


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` (converting int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return _from_dict(tp, value, key)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(v, t, f"{key}.{i}") for i, (v, t) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported annotation {tp!r}")  # a bug in this module


def _from_dict(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown key {where!r} (known: {', '.join(names)})")
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    for f in dataclasses.fields(cls):
        if (
            f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(f"missing key {(prefix + '.' if prefix else '') + f.name!r}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a section's own validation (e.g. clippo.optim's)
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A full or partial config dict (missing keys take defaults) -> TrainConfig."""
    return _from_dict(TrainConfig, data, "")


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


# ---- --set overrides --------------------------------------------------------------------------


def _field_type(path: list[str], full: str) -> Any:
    """The annotation at a dotted path, checking every step (unknown key -> ConfigError)."""
    tp: Any = TrainConfig
    for i, part in enumerate(path):
        here = ".".join(path[: i + 1])
        if dataclasses.is_dataclass(tp):
            hints = get_type_hints(tp)
            if part not in hints:
                names = ", ".join(f.name for f in dataclasses.fields(tp))
                raise ConfigError(f"--set {full}: unknown key {here!r} (known: {names})")
            tp = hints[part]
        elif get_origin(tp) is tuple:
            args = get_args(tp)
            if not part.isdigit() or (args[-1] is not Ellipsis and int(part) >= len(args)):
                raise ConfigError(f"--set {full}: {here!r} must be a list index")
            tp = args[0] if args[-1] is Ellipsis else args[int(part)]
        elif get_origin(tp) is dict:
            tp = Any
        else:
            raise ConfigError(f"--set {full}: {'.'.join(path[:i])!r} has no sub-keys")
    return tp


def _accepts_str(tp: Any) -> bool:
    if tp is str or tp is Any:
        return True
    if get_origin(tp) is Literal:
        return all(isinstance(a, str) for a in get_args(tp))
    if get_origin(tp) in (typing.Union, types.UnionType):
        return any(_accepts_str(a) for a in get_args(tp))
    return False


def _parse_value(raw: str, tp: Any) -> Any:
    """TOML literal syntax (`3`, `1e-3`, `true`, `"x"`, `[1, 2]`, `{a = 1}`); for string fields a
    bare word is also accepted (`--set loop.precision=fp32`)."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: fine for string fields, a type error (naming the key) otherwise
    if _accepts_str(tp) and not isinstance(value, str):
        try:  # `--set model.init_from=123` still means the string "123" if str is allowed
            _convert(value, tp, "")
        except ConfigError:
            return raw
    return value


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings to a config dict (type-checked against TrainConfig)."""
    out = _to_plain(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        path = key.split(".")
        tp = _field_type(path, key)
        try:
            value = _convert(_parse_value(raw.strip(), tp), tp, key)
        except ConfigError as e:
            raise ConfigError(f"--set {item}: {e}") from None
        node: Any = out
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                nxt = node[int(part)] if int(part) < len(node) else None
            else:
                nxt = node.get(part)
            if nxt is None:
                raise ConfigError(f"--set {key}: {'.'.join(path[: i + 1])!r} is not set")
            node = nxt
        last = path[-1]
        if isinstance(node, list):
            idx = int(last)
            if idx >= len(node):
                raise ConfigError(f"--set {key}: index {idx} out of range ({len(node)} items)")
            node[idx] = _to_plain(value)
        else:
            node[last] = _to_plain(value)
    return out


# ---- presets ----------------------------------------------------------------------------------

I21K_B16 = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz"


def _demo() -> TrainConfig:
    """CPU, minutes: a 4-layer Ti-width ViT at 128 px on the built-in synthetic corpus (the
    issue's known-good CPU recipe: AdamW 3e-4, clipping 1.0, batch 64; bf16 where it is faster)."""
    return TrainConfig(
        data=DataConfig(
            image_text=(SourceConfig(kind="synthetic", options={"split": "train"}),),
            text_pairs=(SourceConfig(kind="synthetic_paraphrase"),),
            text_pair_fraction=0.25,
            num_workers=1,
        ),
        model=ModelSection(variant="Ti/16", image_size=128, depth=4),
        optim=OptimConfig(name="adamw", lr=3e-4, wd=1e-5),
        schedule=ScheduleConfig(kind="cosine", warmup_steps=50),
        loop=LoopConfig(steps=600, batch_size=64, precision="auto", device="cpu"),
        checkpoint=CheckpointConfig(every_steps=200, keep_last=2),
        logging=LoggingConfig(run_dir="runs/demo", every_steps=10),
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
    """The paper recipe (REFERENCE.md section 3)."""
    return TrainConfig(
        data=DataConfig(
            image_text=(SourceConfig(kind="webdataset", path="shards/{000000..000999}.tar"),)
        ),
        model=ModelSection(variant="B/16", image_size=224),
        optim=OptimConfig(name="adafactor", lr=1e-3, wd=1e-4),
        schedule=ScheduleConfig(
            kind="rsqrt", warmup_steps=10_000, cooldown_steps=10_000, timescale=10_000
        ),
        loop=LoopConfig(steps=250_000, batch_size=10_240),
        checkpoint=CheckpointConfig(every_steps=1000, keep_last=3),
        logging=LoggingConfig(run_dir="runs/clippo-b16", every_steps=50),
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "demo": _demo,
    "coco-sanity": _coco_sanity,
    "clippo-b16": _clippo_b16,
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]()


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
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
        start = doc.pop("preset", None)
        if start is not None and not isinstance(start, str):
            raise ConfigError(f"{path}: 'preset' must be a string")
        base = preset(start).to_dict() if start else {}
        try:
            base = config_from_dict(_deep_merge(base, doc)).to_dict()
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    return config_from_dict(apply_overrides(base, overrides))
