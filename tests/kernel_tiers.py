"""The kernel tiers of each op that run on this CPU, for parametrizing tests.

Every accelerated tier (avx2, avx512) is compared with the portable kernels
wherever it runs; a tier this CPU cannot run is reported as a skip with its
reason, never silently left out.
"""

import pytest

import tf_lowprec as lp

ACCELERATED = ("avx2", "avx512")
# What each op's avx512 tier needs beyond AVX2 (cpu_features.h).
_AVX512_NEEDS = {"rounding": "AVX-512 F/BW/DQ/VL", "dfp_gemm": "AVX512_VNNI",
                 "bf16_gemm": "AVX512_BF16", "accumulation_gemm": "AVX-512 F/BW/DQ/VL"}


def available(op):
    """Tiers of `op` ("rounding", "dfp_gemm", "bf16_gemm", "accumulation_gemm") this CPU runs."""
    return list(lp.kernel_tiers()[op]["available"])


def skip_reason(op, tier):
    needs = "AVX2, FMA and F16C" if tier == "avx2" else _AVX512_NEEDS[op]
    return f"this CPU cannot run the {tier} tier of {op} (needs {needs})"


def params(op, tiers=("portable",) + ACCELERATED):
    """pytest params for `tiers`, those this CPU lacks marked skip with the reason."""
    runs = available(op)
    return [
        pytest.param(tier, id=tier,
                     marks=() if tier in runs else pytest.mark.skip(reason=skip_reason(op, tier)))
        for tier in tiers
    ]
