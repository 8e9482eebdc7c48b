"""`clippo.typed_config.from_dict`, the one way from a dict to a config dataclass: typed
conversion, errors naming the key, and every config class's `from_dict` going through it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from clippo.data.mixer import MixerConfig
from clippo.data.synthetic import SyntheticConfig
from clippo.model.config import ModelConfig, ViTConfig
from clippo.render import RenderConfig
from clippo.train.optim import OptimConfig
from clippo.train.schedule import ScheduleConfig
from clippo.train.state import TrainerState
from clippo.typed_config import ConfigError, from_dict


@dataclass(frozen=True)
class Inner:
    size: int
    scale: float = 1.0


@dataclass(frozen=True)
class Outer:
    inner: Inner
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = ()
    pair: tuple[float, float] = (0.0, 1.0)
    limit: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    late: Inner | None = None

    def __post_init__(self) -> None:
        if self.inner.size < 0:
            raise ValueError("inner.size must be >= 0")


def test_values_are_converted_to_the_annotations():
    got = from_dict(Outer, {"inner": {"size": 2, "scale": 3}, "sizes": [1, 2], "pair": [1, 2]})
    assert got == Outer(Inner(2, 3.0), sizes=(1, 2), pair=(1.0, 2.0))
    assert isinstance(got.inner.scale, float) and isinstance(got.pair[0], float)
    # null for a field whose default is None is that default
    assert from_dict(Outer, {"inner": {"size": 1}, "late": None, "limit": None}).late is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"size": 1}, "bogus": 1}, "unknown key 'bogus' in Outer (known: inner, mode,"),
        ({"inner": {"size": 1, "bogus": 1}}, "unknown key 'inner.bogus' (known: size, scale)"),
        ({}, "missing key 'inner' in Outer"),
        ({"inner": {}}, "missing key 'inner.size'"),
        ({"inner": {"size": True}}, "inner.size: expected an integer"),
        ({"inner": {"size": 1}, "mode": "c"}, "mode: expected one of 'a' | 'b'"),
        ({"inner": {"size": 1}, "pair": [1]}, "pair: expected 2 values"),
        ({"inner": {"size": 1}, "sizes": [1, "x"]}, "sizes.1: expected an integer"),
        ({"inner": 3}, "inner: expected a table"),
        # the class's own check, starting with a field's name, gets the field's key
        ({"inner": {"size": -1}}, "Outer.inner.size must be >= 0"),
        # no value is cast to another type: bool is no number, a float no integer, text neither
        ({"inner": {"size": 1, "scale": True}}, "inner.scale: expected a number, got True"),
        ({"inner": {"size": 2.7}}, "inner.size: expected an integer, got 2.7"),
        ({"inner": {"size": 2.0}}, "inner.size: expected an integer, got 2.0"),
        ({"inner": {"size": "3"}}, "inner.size: expected an integer, got '3'"),
        ({"inner": {"size": 1, "scale": "1.5"}}, "inner.scale: expected a number, got '1.5'"),
        ({"inner": {"size": 1}, "mode": ["a"]}, "mode: expected one of 'a' | 'b', got ['a']"),
        # an int that a float cannot hold exactly would be rounded silently
        ({"inner": {"size": 1, "scale": 2**60 + 1}}, "inner.scale: 1152921504606846977 is not"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, data)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # `except ValueError` callers keep working


@dataclass(frozen=True)
class Levels:
    level: Literal[1, 2] = 1
    flag: bool = False


@pytest.mark.parametrize("value", [True, 1.0, "1"])
def test_a_literal_is_matched_by_type_too(value):
    # `True == 1` and `1.0 == 1`: an equality test alone accepted both as the integer 1
    with pytest.raises(ConfigError, match="level: expected one of 1 \\| 2"):
        from_dict(Levels, {"level": value})
    assert type(from_dict(Levels, {"level": 2}).level) is int


@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_a_bool_is_only_true_or_false(value):
    with pytest.raises(ConfigError, match="flag: expected true or false"):
        from_dict(Levels, {"flag": value})


def test_a_class_check_under_a_prefix_names_the_dotted_key():
    with pytest.raises(ConfigError) as info:
        from_dict(ViTConfig, {**_TINY_VIT, "num_heads": 3}, "model.vit")
    assert str(info.value) == "model.vit.width 64 is not divisible by num_heads 3"
    with pytest.raises(ConfigError) as info:
        from_dict(ViTConfig, {**_TINY_VIT, "depth": 0}, "model.vit")
    assert str(info.value) == "model.vit.depth must be a positive int, got 0"


_TINY_VIT = dict(width=64, depth=2, num_heads=2, mlp_dim=128, patch_size=16, image_size=32)


def test_a_prefix_names_where_the_table_came_from():
    with pytest.raises(ConfigError, match="unknown key 'data.0.bogus' \\(known"):
        from_dict(Inner, {"size": 1, "bogus": 2}, "data.0")
    with pytest.raises(ConfigError, match="^data.0: expected a table"):
        from_dict(Inner, [1], "data.0")


CONFIGS = [
    ViTConfig.from_variant("Ti/16", image_size=64),
    ModelConfig.from_variant("Ti/16", image_size=64, out_dim=32),
    OptimConfig(name="adamw", betas=(0.9, 0.95)),
    ScheduleConfig("cosine", warmup_steps=3),
    MixerConfig(4, 0.25, 7),
    SyntheticConfig(image_size=96, counts=(1,), heldout_pairs=10),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_config_from_dict_goes_through_the_typed_loader(cfg):
    cls = type(cfg)
    assert cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match=f"unknown key 'bogus' in {cls.__name__}"):
        cls.from_dict({**cfg.to_dict(), "bogus": 1})
    name = next(iter(cfg.to_dict()))
    with pytest.raises(ConfigError, match=f"{name}: expected"):
        cls.from_dict({**cfg.to_dict(), name: ["not", "this"]})


def test_renderer_settings_load_through_the_typed_loader():
    cfg = RenderConfig(image_size=64, lower=False)
    assert from_dict(RenderConfig, cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown key 'colour' in RenderConfig"):
        from_dict(RenderConfig, {"image_size": 64, "colour": 3})
    with pytest.raises(ConfigError, match="lower: expected true or false"):
        from_dict(RenderConfig, {"lower": 1})
    d = ModelConfig.from_variant("Ti/16", image_size=64).to_dict()
    with pytest.raises(ConfigError, match="render.lower: expected true or false"):
        ModelConfig.from_dict({**d, "render": {**d["render"], "lower": "no"}})


def test_old_saved_model_configs_still_load(tmp_path):
    from clippo.model.checkpoint import read_config

    cfg = ModelConfig.from_variant("Ti/16", image_size=64, out_dim=32, temperature_init=5.0)
    saved = cfg.to_dict()
    saved["temperature_init"] = 5  # JSON written by hand or by another writer: an int
    for model in (
        saved,
        {**saved, "render": None},
        {k: v for k, v in saved.items() if k != "render"},
    ):
        (tmp_path / "config.json").write_text(
            json.dumps({"format": "clippo-model", "format_version": 1, "model": model})
        )
        assert read_config(tmp_path) == cfg


def test_trainer_state_names_the_file():
    state = TrainerState(step=5, pairs_seen=10, data={"step": 5})
    assert TrainerState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert TrainerState.from_dict({"step": 2}) == TrainerState(step=2)
    with pytest.raises(ConfigError, match="state.json: unknown key 'bogus' in TrainerState"):
        TrainerState.from_dict({"step": 1, "bogus": 2}, where="state.json")
    with pytest.raises(ConfigError, match="state.json: missing key 'step'"):
        TrainerState.from_dict({"pairs_seen": 3}, where="state.json")
    with pytest.raises(ConfigError, match="state.json: step: expected an integer"):
        TrainerState.from_dict({"step": "5"}, where="state.json")
