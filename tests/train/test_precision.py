"""The trainer's precision rule: the flag when it names a precision; for "auto" the processor's
bf16 support, stated here rather than read from this machine's hardware."""

from __future__ import annotations

import pytest
import torch

from clippo.train.precision import (
    choose_precision,
    cpu_flags,
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
        for flag, bf16 in (("bf16", True), ("fp32", False)):
            got = choose_precision(flag, device, cpu=flags, cuda_bf16=cuda_bf16)
            assert got.bf16 is bf16 and got.name == flag and got.flag == flag
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
    assert not choose_precision("auto", CUDA, cpu=SAPPHIRE_RAPIDS, cuda_bf16=False).bf16


def test_auto_elsewhere_is_float32_and_unknown_flags_are_refused():
    assert not choose_precision("auto", torch.device("meta"), cpu=SAPPHIRE_RAPIDS).bf16
    with pytest.raises(ValueError, match="fp16"):
        choose_precision("fp16", CPU, cpu=SAPPHIRE_RAPIDS)


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
