"""isa="auto" runs the fastest tier the CPU supports, for every op.

The CPU's features are read here independently of the library (from
/proc/cpuinfo's flags on Linux), so a detection bug that quietly falls back
to a slower tier fails this test on the machine that has the faster one.
"""

import os
import platform

import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp

OPS = ("rounding", "dfp_gemm", "bf16_gemm", "accumulation_gemm")
_AVX512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
_OP_AVX512_EXTRA = {"rounding": set(), "dfp_gemm": {"avx512_vnni"},
                    "bf16_gemm": {"avx512_bf16"}, "accumulation_gemm": set()}


def _cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _expected_tiers(op, flags):
    tiers = ["portable"]
    if {"avx2", "fma", "f16c"} <= flags:
        tiers.append("avx2")
    if _AVX512 | _OP_AVX512_EXTRA[op] <= flags:
        tiers.append("avx512")
    return tiers


@pytest.mark.skipif(platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"),
                    reason="reads the x86-64 CPU flags from /proc/cpuinfo")
@pytest.mark.parametrize("op", OPS)
def test_auto_picks_the_fastest_tier_the_cpu_supports(op):
    tiers = lp.kernel_tiers()
    expected = _expected_tiers(op, _cpu_flags())
    assert tiers[op]["available"] == expected
    assert tiers[op]["auto"] == expected[-1]


def test_cpu_features_are_consistent():
    cpu = lp.kernel_tiers()["cpu"]
    assert set(cpu) == {"avx2", "avx512", "avx512_vnni", "avx512_bf16"}
    if cpu["avx512_vnni"] or cpu["avx512_bf16"]:
        assert cpu["avx512"]


@pytest.mark.parametrize("op", OPS)
def test_an_unsupported_tier_is_a_clear_error(op):
    missing = [t for t in ("avx2", "avx512") if t not in lp.kernel_tiers()[op]["available"]]
    if not missing:
        pytest.skip(f"this CPU runs every tier of {op}")
    x = np.ones((2, 2), np.float32)
    call = {
        "rounding": lambda isa: lp.round_to_format(x, lp.BF16, implementation="op", isa=isa),
        "dfp_gemm": lambda isa: lp.dfp_matmul(x, x, implementation="op", isa=isa),
        "bf16_gemm": lambda isa: lp.bf16_matmul(x, x, implementation="op", isa=isa),
        "accumulation_gemm": lambda isa: lp.matmul(x, x, accumulator=lp.FP16,
                                                   implementation="op", isa=isa),
    }[op]
    for isa in missing:
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"isa='{isa}' is not supported"):
            call(isa)


@pytest.mark.parametrize("isa", ["sse", "AVX2", "avx512vnni", ""])
def test_unknown_isa_names_are_refused(isa):
    x = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="isa must be one of 'auto', 'portable', 'avx2', 'avx512'"):
        lp.round_to_format(x, lp.BF16, isa=isa)
    with pytest.raises(ValueError, match="isa must be one of"):
        lp.dfp_matmul(x, x, isa=isa)
    with pytest.raises(ValueError, match="isa must be one of"):
        lp.bf16_matmul(x, x, isa=isa)
