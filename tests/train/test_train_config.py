"""TrainConfig: TOML loading, `--set` overrides with type checks, presets, round trips."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clippo.cli import main
from clippo.train.config import (
    PRESETS,
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_train_config,
    preset,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_resolve_and_round_trip(name):
    cfg = load_train_config(name)
    assert isinstance(cfg, TrainConfig)
    # the saved form (JSON) gives back the same config
    again = config_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_sources_name_known_kinds(name):
    from clippo.data.registry import SOURCES
    from clippo.train.data import SYNTHETIC_KINDS

    cfg = preset(name)
    for src in (*cfg.data.image_text, *cfg.data.text_pairs):
        assert src.kind in SOURCES or src.kind in SYNTHETIC_KINDS, src


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_lr_warms_up_to_its_peak_and_anneals_to_zero(name):
    """Each preset's run reaches its peak learning rate right after warm-up, never exceeds it,
    and ends at zero, so the final checkpoint is the annealed model."""
    from clippo.train.schedule import schedule_value

    cfg = preset(name)
    s, total = cfg.schedule, cfg.loop.steps
    stride = max(total // 500, 1)
    lr = [schedule_value(s, total, k) for k in range(0, total + 1, stride)]
    assert max(lr) == pytest.approx(1.0) and min(lr) >= 0.0
    assert schedule_value(s, total, s.warmup_steps) == pytest.approx(1.0)
    if s.warmup_steps:
        assert schedule_value(s, total, 0) == 0.0
    assert schedule_value(s, total, total) == pytest.approx(0.0, abs=1e-12)


def test_set_overrides_are_typed():
    cfg = load_train_config(
        "demo",
        [
            "loop.steps=10",
            "optim.lr=3e-4",
            "optim.lr=2e-4",  # later wins
            "loop.precision=fp32",  # bare word for a Literal[str] field
            "optim.betas=[0.9, 0.95]",
            "model.out_dim=32",
            "model.init_from=123",  # a str field keeps digits as a string
            "data.image_text.0.path=/x/y",
            "data.image_text.0.options.split='heldout'",
            "logging.tensorboard=false",
            "schedule.warmup_steps=2",
            "schedule.cooldown_steps=2",
        ],
    )
    assert cfg.loop.steps == 10 and cfg.optim.lr == 2e-4 and cfg.loop.precision == "fp32"
    assert cfg.optim.betas == (0.9, 0.95) and cfg.model.out_dim == 32
    assert cfg.model.init_from == "123" and cfg.data.image_text[0].path == "/x/y"
    assert cfg.data.image_text[0].options["split"] == "heldout"
    assert cfg.logging.tensorboard is False
    assert isinstance(load_train_config("demo", ["optim.lr=1"]).optim.lr, float)  # int -> float


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loop.stepz=1", "loop.stepz"),
        ("lop.steps=1", "lop"),
        ("loop.steps=abc", "loop.steps: expected an integer"),
        ("loop.steps=1.5", "loop.steps: expected an integer"),
        ("loop.steps=true", "loop.steps: expected an integer"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("loop.precision=fp8", "loop.precision: expected one of"),
        # fp16's rule, stated in the message: where it runs, and what to use instead
        ("loop.precision=fp16 loop.parallel=fsdp", "'fp16' is not supported with loop.parallel"),
        ("loop.precision=fp16 loop.device=meta", "lacks on 'meta': fp16 is for CUDA GPUs"),
        ("loop.max_logit_scale=-1", "loop.max_logit_scale must be >= 0, got -1"),
        ("validation.every=5", "validation has no sources"),
        ("validation.batches=0", "validation.batches must be > 0, got 0"),
        ("validation.text_pair_fraction=2", "validation.text_pair_fraction must be in [0, 1]"),
        ("logging.wandb.mode=cloud", "logging.wandb.mode: expected one of"),
        ("logging.progress=1", "logging.progress: expected true or false"),
        ("optim.betas=[0.9]", "optim.betas: expected 2 values"),
        ("loop.steps.deep=1", "'loop.steps' has no sub-keys"),
        ("data.image_text.5.path=x", "data.image_text.5"),
        ("loop.steps", "expected key.sub=value"),
        ("optim.name=sgd", "sgd"),
        ("loop.batch_size=0", "loop.batch_size must be > 0"),
        ("loop.accum_steps=3", "not divisible by loop.accum_steps"),
        # NaN and inf passed the "< 0" checks
        ("loop.clip_grad_norm=nan", "loop.clip_grad_norm must be >= 0, got nan"),
        ("data.image_text.0.weight=inf", "data.image_text.0.weight must be > 0, got inf"),
        ("data.image_text.0.weight=nan", "data.image_text.0.weight must be > 0, got nan"),
        ("model.temperature_init=inf", "model.temperature_init must be finite and > 0"),
        # counts the data loader or the mixer rejected later, naming no key
        ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
        ("data.prefetch_factor=0", "data.prefetch_factor must be > 0, got 0"),
        ("loop.seed=-1", "loop.seed must be >= 0, got -1"),
        # an out_dim of 0 silently became the width
        ("model.out_dim=0", "model.out_dim must be a positive int, got 0"),
        # the tower's own checks name the model section's key
        ("model.width=129", "model.width 129 is not divisible by num_heads 2"),
        ("model.depth=0", "model.depth must be a positive int, got 0"),
        ("model.image_size=100", "model.image_size 100 is not a multiple of patch_size 16"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_train_config("demo", override.split(" "))
    assert message in str(info.value)


def test_toml_file_with_preset_base(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'preset = "demo"\n\n[loop]\nsteps = 200\nbatch_size = 32\n\n[optim]\nlr = 1e-4\n'
        '[[data.image_text]]\nkind = "csv"\npath = "pairs.csv"\nweight = 2\n',
        encoding="utf-8",
    )
    cfg = load_train_config(path, ["loop.seed=7"])
    base = preset("demo")
    assert (cfg.loop.steps, cfg.loop.batch_size, cfg.loop.seed) == (200, 32, 7)
    assert cfg.optim.lr == 1e-4 and cfg.optim.name == base.optim.name  # untouched keys kept
    assert cfg.model == base.model
    # a TOML array of tables replaces the preset's list
    assert [(s.kind, s.path, s.weight) for s in cfg.data.image_text] == [("csv", "pairs.csv", 2.0)]


def test_toml_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[loop]\nsteps = 5\nlearning_rate = 1.0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    assert "bad.toml" in str(info.value) and "loop.learning_rate" in str(info.value)
    path.write_text("[loops]\nsteps = 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'loops'"):
        load_train_config(path)
    path.write_text('[loop]\nsteps = "many"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="loop.steps: expected an integer"):
        load_train_config(path)
    path.write_text("[loop\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_train_config(path)


def test_unknown_source_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="neither a preset"):
        load_train_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")


def test_apply_overrides_leaves_input_untouched():
    d = preset("demo").to_dict()
    before = json.dumps(d, sort_keys=True)
    out = apply_overrides(d, ["loop.steps=3"])
    assert out["loop"]["steps"] == 3 and json.dumps(d, sort_keys=True) == before


def test_cli_print_config_and_errors(capsys):
    args = ["train", "demo", "--print-config", "--set", "loop.steps=970"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["loop"]["steps"] == 970
    assert main([*args[:-1], "loop.stepz=970"]) == 1  # one line, as every command's errors
    err = capsys.readouterr().err
    assert err.startswith("clippo train: error: --set loop.stepz: unknown key 'loop.stepz'"), err
    assert len(err.splitlines()) == 1
    assert main([*args, "--resume", "auto"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"]["resume"] == "auto"


def test_python_m_clippo_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "clippo", "train", "demo", "--print-config"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["loop"]["steps"] > 0


def test_a_non_utf8_toml_is_a_config_error_naming_file_and_line(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[loop]\nsteps = 5\n[logging]\nrun_dir = "runs/caf\xe9"\n')
    with pytest.raises(ConfigError, match=f"{path}:4: not valid UTF-8"):
        load_train_config(path)


def test_fp16_validation_wandb_and_the_logit_scale_clamp_from_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'preset = "demo"\n[loop]\nprecision = "fp16"\ndevice = "cpu"\nmax_logit_scale = 100\n'
        '[logging.wandb]\nenabled = true\nproject = "p"\nmode = "offline"\n'
        "[validation]\nevery = 50\nbatches = 2\n"
        '[[validation.image_text]]\nkind = "synthetic"\noptions = {split = "heldout"}\n',
        encoding="utf-8",
    )
    cfg = load_train_config(path)
    assert (cfg.loop.precision, cfg.loop.max_logit_scale) == ("fp16", 100.0)
    assert (cfg.logging.wandb.enabled, cfg.logging.wandb.mode) == (True, "offline")
    assert (cfg.validation.every, cfg.validation.batches) == (50, 2)
    data = cfg.validation.data_config(cfg.data)
    assert [s.options for s in data.image_text] == [{"split": "heldout"}]
    # no held-out text pairs: no text pairs in its batches (the demo's data mixes in 25%)
    assert data.text_pairs == () and data.text_pair_fraction == 0.0
    assert data.render_on == cfg.data.render_on and data.num_workers == 0
    # saved with the run: the dict form round-trips, precision included
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["loop"]["precision"] == "fp16"


def test_presets_leave_the_logit_scale_unclamped_and_wandb_off():
    for name in PRESETS:
        cfg = preset(name)
        assert cfg.loop.max_logit_scale == 0.0 and not cfg.logging.wandb.enabled
        assert cfg.validation.every == 0


def test_token_dropping_options_reach_the_model_config(tmp_path):
    # `[model] ink_only_text / patch_dropout` in a run's TOML become the model's own options
    # (saved in its config.json); a bad value names the key
    cfg = load_train_config("demo", ["model.ink_only_text=false", "model.patch_dropout=0.5"])
    model_cfg = cfg.model.model_config()
    assert model_cfg.ink_only_text is False and model_cfg.patch_dropout == 0.5
    assert load_train_config("demo").model.model_config().ink_only_text is True  # the preset's
    with pytest.raises(ConfigError, match="patch_dropout"):
        load_train_config("demo", ["model.patch_dropout=1.5"]).model.model_config()
