"""The trainer's precision rule: the flag when it names a precision; for "auto" the processor's
bf16 support, stated here rather than read from this machine's hardware."""

from __future__ import annotations

import pytest
import torch

from clippo.train.precision import (
    PrecisionError,
    autocast_supports,
    check_precision,
    choose_precision,
    cpu_flags,
    grad_scaler,
    proc_cpuinfo_flags,
    use_bf16,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
SAPPHIRE_RAPIDS = {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
ZEN4 = {"avx512f", "avx512_bf16"}  # bf16 dot products, no matrix unit
NO_BF16 = {"avx2", "fma"}


@pytest.mark.parametrize("flags", [SAPPHIRE_RAPIDS, ZEN4, NO_BF16, set()])
@pytest.mark.parametrize("device", [CPU, CUDA])
def test_an_explicit_flag_wins_over_the_hardware(flags, device):
    for cuda_bf16 in (True, False):
        for flag, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", None)):
            got = choose_precision(flag, device, cpu=flags, cuda_bf16=cuda_bf16)
            assert got.name == flag and got.flag == flag and got.autocast_dtype == dtype
            assert got.bf16 is (flag == "bf16") and got.fp16 is (flag == "fp16")
            assert "loop.precision" in got.reason  # the flag chose, not the processor


@pytest.mark.parametrize(
    ("flags", "bf16"), [(SAPPHIRE_RAPIDS, True), (ZEN4, False), (NO_BF16, False), (set(), False)]
)
def test_auto_on_cpu_takes_bf16_only_with_amx(flags, bf16):
    got = choose_precision("auto", CPU, cpu=flags)
    assert got.bf16 is bf16 and got.name == ("bf16" if bf16 else "fp32")
    assert "AMX-BF16" in got.reason and ("has" in got.reason) is bf16
    assert got.to_dict() == {"flag": "auto", "used": got.name, "reason": got.reason}


def test_auto_on_cuda_follows_the_device_and_ignores_the_cpu():
    assert choose_precision("auto", CUDA, cpu=set(), cuda_bf16=True).bf16
    # a GPU without bf16 gets float32 from "auto": fp16 is the user's explicit choice
    assert choose_precision("auto", CUDA, cpu=SAPPHIRE_RAPIDS, cuda_bf16=False).name == "fp32"


def test_auto_elsewhere_is_float32_and_unknown_flags_are_refused():
    assert choose_precision("auto", torch.device("meta"), cpu=SAPPHIRE_RAPIDS).name == "fp32"
    with pytest.raises(ValueError, match="fp16"):  # the message lists the flags
        choose_precision("fp8", CPU, cpu=SAPPHIRE_RAPIDS)


def test_where_fp16_is_allowed():
    """CUDA always, CPU where torch autocasts to float16, never under FSDP, never on a device
    without fp16 autocast; the other flags are not restricted here."""
    check_precision("fp16", "cuda")
    check_precision("fp16", None)  # device "auto": checked again once the device is known
    assert autocast_supports("cpu", torch.float16) is torch.amp.is_autocast_available("cpu")
    check_precision("fp16", "cpu")  # torch 2.x autocasts to float16 on the CPU
    with pytest.raises(PrecisionError, match="fsdp"):
        check_precision("fp16", "cuda", "fsdp")
    with pytest.raises(PrecisionError, match="'meta'"):
        check_precision("fp16", "meta")
    for flag in ("bf16", "fp32", "auto"):
        check_precision(flag, "meta", "fsdp")
    assert not autocast_supports("meta", torch.float16)


def test_fp16_gets_an_enabled_gradient_scaler_and_the_others_a_pass_through_one():
    fp16 = choose_precision("fp16", CPU)
    scaler = grad_scaler(fp16, CPU)
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**16
    for flag in ("bf16", "fp32"):
        off = grad_scaler(choose_precision(flag, CPU), CPU)
        loss = torch.tensor(3.0)
        assert not off.is_enabled() and off.scale(loss) is loss and off.state_dict() == {}


def test_use_bf16_is_the_rule_on_this_machine_and_never_changes():
    """No timing: asking again gives the same answer, and "auto" is the AMX-BF16 flag."""
    answers = {use_bf16("auto", CPU) for _ in range(5)}
    assert answers == {"amx_bf16" in cpu_flags()}
    assert use_bf16("bf16", CPU) and not use_bf16("fp32", CPU)


def test_proc_cpuinfo_flags():
    text = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\n"
        "flags\t\t: fpu AVX512_BF16 avx2\nbugs\t\t: sysret_ss_attrs\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert proc_cpuinfo_flags(text) == {"fpu", "avx512_bf16", "avx2"}
    assert proc_cpuinfo_flags("processor\t: 0\n") == frozenset()
