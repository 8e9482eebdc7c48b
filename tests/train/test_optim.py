"""Schedules vs hand-computed values, Adafactor vs a naive reference, the weight-decay mask."""

from __future__ import annotations

import copy
import io
import math
import pickle
import re

import numpy as np
import pytest
import torch
from torch import nn

from clippo.train.optim import (
    Adafactor,
    OptimConfig,
    build_optimizer,
    decayed_parameter_names,
    param_groups,
    set_lr,
)
from clippo.train.schedule import ScheduleConfig, build_schedule, schedule_value

# ---------------------------------------------------------------- schedules


def test_rsqrt_clippo_b16_recipe():
    # peak 1e-3 (applied by the optimiser), warm-up 10k, timescale 10k, cool-down 10k, 250k steps
    s = build_schedule(
        ScheduleConfig("rsqrt", warmup_steps=10_000, cooldown_steps=10_000, timescale=10_000),
        250_000,
    )
    assert s(0) == 0.0
    assert s(5_000) == pytest.approx(0.5)
    assert s(10_000) == pytest.approx(1.0)
    assert s(40_000) == pytest.approx(0.5)  # 1/sqrt(1 + 30k/10k)
    assert s(90_000) == pytest.approx(1 / 3)  # 1/sqrt(1 + 80k/10k)
    assert s(245_000) == pytest.approx(1 / math.sqrt(24.5) * 0.5)  # half-way through cool-down
    assert s(250_000) == 0.0


def test_rsqrt_coco_sanity_and_shift():
    s = build_schedule(
        ScheduleConfig("rsqrt", warmup_steps=100, cooldown_steps=100, timescale=100), 400
    )
    assert s(50) == pytest.approx(0.5)
    assert s(200) == pytest.approx(1 / math.sqrt(2))
    assert s(350) == pytest.approx(1 / math.sqrt(3.5) * 0.5)
    shifted = build_schedule(
        ScheduleConfig("rsqrt", warmup_steps=50, timescale=100, shift=100), 1000
    )
    assert shifted(25) == pytest.approx(1 / math.sqrt(2) * 0.5)  # in warm-up: 1/sqrt(1 + shift/t)
    assert shifted(150) == pytest.approx(1 / math.sqrt(3))  # 1/sqrt(1 + (150+100-50)/100)


def test_cosine_linear_constant():
    cos = build_schedule(ScheduleConfig("cosine", warmup_steps=10), 110)
    assert cos(5) == pytest.approx(0.5)
    assert cos(10) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.5)
    assert cos(85) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert cos(110) == pytest.approx(0.0)
    lin = build_schedule(ScheduleConfig("linear", warmup_steps=10, linear_end=0.1), 110)
    assert lin(60) == pytest.approx(0.55)
    poly = build_schedule(ScheduleConfig("linear", warmup_steps=10, linear_end=0.1, power=2.0), 110)
    assert poly(60) == pytest.approx(0.1 + 0.9 * 0.25)
    const = build_schedule(ScheduleConfig("constant", cooldown_steps=20), 100)
    assert const(50) == 1.0
    assert const(90) == pytest.approx(0.5)


def test_a_schedule_within_a_shorter_run_still_warms_holds_and_cools():
    cfg = ScheduleConfig("constant", warmup_steps=30, cooldown_steps=180)
    assert cfg.within(900) == cfg  # the run it was written for: unchanged
    short = cfg.within(50)
    assert (short.warmup_steps, short.cooldown_steps) == (10, 10)
    s = build_schedule(short, 50)
    assert s(5) == pytest.approx(0.5) and s(25) == 1.0 and s(45) == pytest.approx(0.5)
    # unfitted, neither the cool-down nor the warm-up would fit a short run
    with pytest.raises(ValueError, match="cooldown_steps"):
        build_schedule(cfg, 50)
    with pytest.raises(ValueError, match="warmup_steps"):
        build_schedule(cfg, 20)
    assert build_schedule(cfg.within(20), 20)(2) == pytest.approx(0.5)


def test_schedule_config_errors_and_pickle():
    with pytest.raises(ValueError, match="warmup_steps"):
        build_schedule(ScheduleConfig("cosine", warmup_steps=100), 100)
    with pytest.raises(ValueError, match="kind"):
        ScheduleConfig("stair")
    with pytest.raises(ValueError, match="bogus"):
        ScheduleConfig.from_dict({"kind": "rsqrt", "bogus": 1})
    with pytest.raises(ValueError, match="bogus"):
        OptimConfig.from_dict({"bogus": 1})
    cfg = ScheduleConfig("rsqrt", warmup_steps=3)
    assert ScheduleConfig.from_dict(cfg.to_dict()) == cfg
    assert OptimConfig.from_dict(OptimConfig().to_dict()) == OptimConfig()
    s = build_schedule(cfg, 10)
    assert pickle.loads(pickle.dumps(s))(2) == s(2)


# ---------------------------------------------------------------- Adafactor vs naive reference


class _Params(nn.Module):
    """Linear weights (decayed) plus raw parameters of assorted shapes (not decayed)."""

    RAW = {
        "a3d": (2, 40, 36),  # factored over axes (1, 2), per slice of axis 0
        "b3d": (48, 2, 40),  # factored over axes (0, 2)
        "small": (40, 8),  # 8 < 32: not factored
        "edge": (32, 33),  # 32 >= 32: factored
        "below": (31, 64),  # 31 < 32: not factored
        "vec": (7,),
        "conv": (40, 3, 4, 4),  # like a patch-embedding kernel: not factored
    }

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(48, 40)  # weight (40, 48) decayed; bias (40,) not
        self.fc2 = nn.Linear(40, 48, bias=False)  # weight (48, 40)
        for name, shape in self.RAW.items():
            setattr(self, name, nn.Parameter(torch.randn(shape)))


def _ref_adafactor(params, decayed, grads, mults, lr, wd, momentum, m_round=None, eps=1e-30):
    """Textbook Adafactor (Shazeer & Stern: row/column sums, V = R C / sum(R)) in float64 numpy,
    with big_vision's beta2 schedule, EMA momentum and decoupled weight decay."""
    theta = {k: v.astype(np.float64).copy() for k, v in params.items()}
    stats, mom = {}, {k: np.zeros_like(v) for k, v in theta.items()}
    for k_step, (g_all, mult) in enumerate(zip(grads, mults)):
        beta2 = min(0.999, 1 - (k_step + 1.0) ** -0.8)
        for name, th in theta.items():
            g = g_all[name].astype(np.float64)
            shape = g.shape
            big = sorted(range(g.ndim), key=lambda i: shape[i])[-2:] if g.ndim >= 2 else []
            if big and shape[big[0]] >= 32:
                rest = [i for i in range(g.ndim) if i not in big]
                gm = np.transpose(g, rest + sorted(big))  # [..., n, m] with the factored axes last
                lead = gm.shape[:-2]
                u = np.empty_like(gm)
                st = stats.setdefault(name, {})
                for idx in np.ndindex(*lead):
                    gg = gm[idx] ** 2 + eps
                    r = st.get(("r", idx), np.zeros(gg.shape[0]))
                    c = st.get(("c", idx), np.zeros(gg.shape[1]))
                    r = beta2 * r + (1 - beta2) * gg.sum(axis=1)
                    c = beta2 * c + (1 - beta2) * gg.sum(axis=0)
                    st[("r", idx)], st[("c", idx)] = r, c
                    u[idx] = gm[idx] / np.sqrt(np.outer(r, c) / r.sum())
                u = np.transpose(u, np.argsort(rest + sorted(big)))
            else:
                v = beta2 * stats.get(name, np.zeros_like(g)) + (1 - beta2) * (g**2 + eps)
                stats[name] = v
                u = g / np.sqrt(v)
            if momentum:
                new_m = momentum * mom[name] + (1 - momentum) * u
                mom[name] = m_round(new_m) if m_round else new_m
                u = new_m
            th -= mult * (lr * u + (wd * th if name in decayed else 0.0))
    return theta


def _run_impl(model, cfg, grads, mults):
    opt = build_optimizer(model, cfg)
    for g_all, mult in zip(grads, mults):
        for name, p in model.named_parameters():
            p.grad = torch.from_numpy(g_all[name]).float()
        set_lr(opt, mult)
        opt.step()
    return opt


def _setup(steps=6):
    model = _Params()
    params = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    rng = np.random.default_rng(0)
    # per-row/column scales make the factored second moment non-trivial
    grads = [
        {n: rng.standard_normal(v.shape) * (1 + rng.random(v.shape[-1])) for n, v in params.items()}
        for _ in range(steps)
    ]
    mults = [
        build_schedule(ScheduleConfig("rsqrt", warmup_steps=2, timescale=2), steps)(k)
        for k in range(steps)
    ]
    return model, params, grads, mults


@pytest.mark.parametrize("momentum", [0.9, None])
def test_adafactor_matches_reference_float32_momentum(momentum):
    model, params, grads, mults = _setup()
    cfg = OptimConfig(lr=0.01, wd=0.05, momentum=momentum, momentum_dtype="float32")
    opt = _run_impl(model, cfg, grads, mults)
    decayed = {"fc.weight", "fc2.weight"}
    ref = _ref_adafactor(params, decayed, grads, mults, lr=0.01, wd=0.05, momentum=momentum)
    for name, p in model.named_parameters():
        got = p.detach().double().numpy() - params[name]
        want = ref[name] - params[name]
        # atol: float32 storage of theta (|theta| ~ 3) rounds each step to ~2e-7
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6, err_msg=name)
        assert np.abs(want).max() > 1e-3  # every parameter moved
    # the factored ones really keep only row/column statistics
    assert (
        set(opt.state[model.fc.weight]) >= {"v_row", "v_col"}
        and "v" not in opt.state[model.fc.weight]
    )
    assert tuple(opt.state[model.a3d]["v_row"].shape) == (2, 36)
    assert tuple(opt.state[model.a3d]["v_col"].shape) == (2, 40)
    assert (
        "v" in opt.state[model.small]
        and "v" in opt.state[model.below]
        and "v" in opt.state[model.conv]
    )


def test_adafactor_bf16_momentum():
    model, params, grads, mults = _setup()
    opt = _run_impl(model, OptimConfig(lr=0.01, wd=0.05), grads, mults)  # defaults: bf16 momentum
    assert opt.state[model.fc.weight]["momentum"].dtype == torch.bfloat16

    def bf16(x):
        return torch.from_numpy(x).to(torch.bfloat16).double().numpy()

    decayed = {"fc.weight", "fc2.weight"}
    ref = _ref_adafactor(
        params, decayed, grads, mults, lr=0.01, wd=0.05, momentum=0.9, m_round=bf16
    )
    ref32 = _ref_adafactor(params, decayed, grads, mults, lr=0.01, wd=0.05, momentum=0.9)
    got = np.concatenate([p.detach().double().numpy().ravel() for p in model.parameters()])
    want = np.concatenate([ref[n].ravel() for n, _ in model.named_parameters()])
    want32 = np.concatenate([ref32[n].ravel() for n, _ in model.named_parameters()])
    # Equal up to rare 1-ulp rounding flips (float32 vs float64 arithmetic before the bf16 cast) ...
    assert np.mean(np.abs(got - want) > 1e-6) < 1e-3
    assert np.abs(got - want).max() < 1e-4
    # ... while storing momentum in float32 would give visibly different parameters.
    assert np.mean(np.abs(got - want32) > 1e-6) > 0.1


def test_adafactor_resume_is_bit_identical():
    model, _, grads, mults = _setup(steps=6)
    twin = copy.deepcopy(model)
    cfg = OptimConfig(lr=0.01, wd=0.05)
    _run_impl(model, cfg, grads, mults)

    opt = _run_impl(twin, cfg, grads[:3], mults[:3])
    buf = io.BytesIO()
    torch.save({"model": twin.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = _Params()
    resumed.load_state_dict(saved["model"])
    opt2 = build_optimizer(resumed, cfg)
    opt2.load_state_dict(saved["opt"])
    for g_all, mult in zip(grads[3:], mults[3:]):
        for name, p in resumed.named_parameters():
            p.grad = torch.from_numpy(g_all[name]).float()
        set_lr(opt2, mult)
        opt2.step()
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    assert int(opt2.state[resumed.fc.weight]["step"]) == 6


@pytest.mark.parametrize("name", ["adafactor", "adamw"])
def test_weight_decay_is_decoupled_and_not_scaled_by_peak_lr(name):
    """Zero gradient: the update is pure decay, theta *= 1 - sched * wd (big_vision), whatever lr."""
    model = nn.Linear(40, 40)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    opt = build_optimizer(model, OptimConfig(name=name, lr=1e-3, wd=1e-4))
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == pytest.approx(0.1)  # wd / peak lr = 1e-4 / 1e-3
    assert groups["no_decay"]["weight_decay"] == 0.0
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    assert set_lr(opt, 0.5) == pytest.approx(5e-4)
    opt.step()
    torch.testing.assert_close(model.weight.detach(), w0 * (1 - 0.5 * 1e-4), rtol=0, atol=1e-9)
    torch.testing.assert_close(model.bias.detach(), b0, rtol=0, atol=0)


def test_adafactor_rejects_bad_hyperparameters():
    with pytest.raises(ValueError):
        Adafactor([nn.Parameter(torch.zeros(2))], lr=-1.0)
    with pytest.raises(ValueError, match="name"):
        OptimConfig(name="sgd")
    with pytest.raises(ValueError, match="momentum_dtype"):
        OptimConfig(momentum_dtype="float16")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", math.inf, "OptimConfig.lr must be finite and > 0, got inf"),
        ("lr", 0.0, "OptimConfig.lr must be finite and > 0, got 0.0"),
        ("wd", math.nan, "OptimConfig.wd must be finite and >= 0, got nan"),
        ("wd", math.inf, "OptimConfig.wd must be finite and >= 0, got inf"),
        (
            "decay_rate",
            -0.8,
            "OptimConfig.decay_rate must be finite and >= 0, got -0.8 (big_vision",
        ),
        ("decay_rate", math.nan, "OptimConfig.decay_rate must be finite and >= 0, got nan"),
        ("beta2_cap", -0.1, "OptimConfig.beta2_cap must be in [0, 1], got -0.1"),
        ("beta2_cap", math.inf, "OptimConfig.beta2_cap must be in [0, 1], got inf"),
        ("momentum", -0.9, "OptimConfig.momentum must be in [0, 1), got -0.9"),
        ("momentum", 1.0, "OptimConfig.momentum must be in [0, 1), got 1.0"),
        ("momentum", math.nan, "OptimConfig.momentum must be in [0, 1), got nan"),
        ("eps", -1e-30, "OptimConfig.eps must be finite and > 0, got -1e-30"),
        ("eps", 0.0, "OptimConfig.eps must be finite and > 0, got 0.0"),
        ("clipping_threshold", -1.0, "OptimConfig.clipping_threshold must be finite and >= 0"),
        ("clipping_threshold", math.inf, "OptimConfig.clipping_threshold must be finite and >= 0"),
        ("adam_eps", -math.inf, "OptimConfig.adam_eps must be finite and > 0, got -inf"),
        ("betas", (0.9, math.nan), "OptimConfig.betas.1 must be in [0, 1), got nan"),
        ("betas", (1.0, 0.999), "OptimConfig.betas.0 must be in [0, 1), got 1.0"),
    ],
)
def test_optim_config_refuses_senseless_numbers(field, value, message):
    with pytest.raises(ValueError) as info:
        OptimConfig(**{field: value})
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("timescale", math.inf, "ScheduleConfig.timescale must be finite and > 0, got inf"),
        ("timescale", 0.0, "ScheduleConfig.timescale must be finite and > 0, got 0.0"),
        ("shift", -1.0, "ScheduleConfig.shift must be finite and >= 0, got -1.0"),
        ("shift", math.nan, "ScheduleConfig.shift must be finite and >= 0, got nan"),
        ("linear_end", -0.1, "ScheduleConfig.linear_end must be in [0, 1], got -0.1"),
        ("linear_end", math.inf, "ScheduleConfig.linear_end must be in [0, 1], got inf"),
        ("power", -1.0, "ScheduleConfig.power must be finite and >= 0, got -1.0"),
        ("power", math.inf, "ScheduleConfig.power must be finite and >= 0, got inf"),
        ("warmup_steps", -1, "ScheduleConfig.warmup_steps must be finite and >= 0, got -1"),
    ],
)
def test_schedule_config_refuses_senseless_numbers(field, value, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ScheduleConfig(**{field: value})


def test_what_the_refused_numbers_would_do():
    """The reasons behind the checks, on the optimiser and schedule as they compute."""
    # eps = 0: a gradient that is exactly 0 turns into NaN (0 * 1/sqrt(0)); eps > 0 keeps it 0
    for eps, finite in ((0.0, False), (1e-30, True)):
        p = nn.Parameter(torch.ones(3))
        opt = Adafactor([p], lr=0.1, eps=eps)
        p.grad = torch.tensor([0.0, 1.0, 2.0])
        opt.step()
        assert bool(torch.isfinite(p).all()) is finite
    # a negative shift lifts the multiplier above 1 (0.5 of the timescale: 1/sqrt(0.5))
    shifted = ScheduleConfig("rsqrt", timescale=100)
    object.__setattr__(shifted, "shift", -50.0)  # past the check (a config cannot get there)
    assert schedule_value(shifted, 1000, 0) == pytest.approx(2**0.5)


def test_zero_and_none_switch_momentum_and_clipping_off():
    """The legitimate edge values stay accepted: None/0 momentum and clipping, decay_rate 0
    (beta2 = 0: the current squared gradient only), shift and linear_end 0, power 0, beta2_cap 1."""
    OptimConfig(momentum=None, clipping_threshold=None)
    OptimConfig(momentum=0.0, clipping_threshold=0.0, decay_rate=0.0, beta2_cap=1.0)
    OptimConfig(name="adamw", betas=(0.0, 0.0))
    ScheduleConfig("linear", shift=0.0, linear_end=1.0, power=0.0)
    # a momentum of 0 or None and a clipping threshold of 0 give the same step as each other
    grads = torch.tensor([[0.5, -2.0], [1.0, 3.0]])
    params = []
    for momentum, clip in ((None, None), (0.0, 0.0)):
        p = nn.Parameter(torch.ones(2, 2))
        p.grad = grads.clone()
        Adafactor([p], lr=0.1, momentum=momentum, clipping_threshold=clip).step()
        params.append(p.detach())
    torch.testing.assert_close(params[0], params[1], rtol=0, atol=0)
    assert not torch.equal(params[0], torch.ones(2, 2))


# ---------------------------------------------------------------- weight-decay mask


def test_decay_mask_on_timm_map_vit():
    from timm.models.vision_transformer import VisionTransformer

    class Tower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.img = VisionTransformer(
                img_size=32,
                patch_size=8,
                embed_dim=32,
                depth=2,
                num_heads=2,
                mlp_ratio=2,
                global_pool="map",
                class_token=False,
                num_classes=16,
            )
            self.t = nn.Parameter(torch.tensor([math.log(10.0)]))

    model = Tower()
    expected = {"img.patch_embed.proj.weight", "img.head.weight"}
    for i in range(2):
        expected |= {
            f"img.blocks.{i}.{m}.weight" for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
        }
    expected |= {f"img.attn_pool.{m}.weight" for m in ("q", "kv", "proj", "mlp.fc1", "mlp.fc2")}
    assert set(decayed_parameter_names(model)) == expected
    assert len(decayed_parameter_names(model)) == len(expected)

    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, wd=1e-4)}
    ids = {id(p): n for n, p in model.named_parameters()}
    assert {ids[id(p)] for p in groups["decay"]["params"]} == expected
    no_decay = {ids[id(p)] for p in groups["no_decay"]["params"]}
    assert {
        "t",
        "img.pos_embed",
        "img.attn_pool.latent",
        "img.norm.weight",
        "img.head.bias",
    } <= no_decay
    assert no_decay | expected == set(ids.values()) and not no_decay & expected

    model.img.pos_embed.requires_grad_(False)  # frozen params are left out of the optimiser
    kept = {ids[id(p)] for g in param_groups(model, 1e-3, 1e-4) for p in g["params"]}
    assert "img.pos_embed" not in kept and "t" in kept


def test_decay_mask_multihead_attention_and_custom_types():
    model = nn.Sequential(
        nn.MultiheadAttention(8, 2, add_bias_kv=True), nn.LayerNorm(8), nn.Embedding(5, 8)
    )
    assert set(decayed_parameter_names(model)) == {"0.in_proj_weight", "0.out_proj.weight"}
    custom = decayed_parameter_names(model, {nn.Embedding: ("weight",)})
    assert custom == ["2.weight"]
