"""The C++ op of block-scaled formats (LowprecQuantizeBlockScaled) on every kernel tier.

Every tier this CPU runs (tests/kernel_tiers.py: portable, avx2, avx512) is
compared bit for bit with the NumPy reference
(`reference.quantize_block_scaled`, written from the OCP MX and NVFP4
definitions in float64 values), values and decoded scales, for every preset,
blocks along the last, the first and a middle axis, lengths that are not a
multiple of the block, block_size 1, zero and subnormal blocks, values near
FLT_MAX, NaN and Inf in both `nonfinite_blocks` modes, and the three
rounding modes (stochastic with 16 and 32 random bits).  NaNs compare as NaN
with their sign.
"""

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import kernel_tiers
import tf_lowprec as lp
from rounding_testing import assert_same_values
from tf_lowprec import _op_library
from tf_lowprec.numerics import reference

PRESETS = (lp.MXFP8_E4M3, lp.MXFP8_E5M2, lp.MXFP6_E2M3, lp.MXFP6_E3M2, lp.MXFP4_E2M1,
           lp.MXINT8, lp.NVFP4)
ROUNDINGS = (("nearest_even", 16), ("toward_zero", 16), ("stochastic", 16), ("stochastic", 32))
SEED = (20261207, -3)
FLT_MAX = np.finfo(np.float32).max


def _wide(rng, shape, low=-40, high=40):
    """Signed values with exponents spread over [low, high)."""
    x = rng.standard_normal(shape) * np.exp2(rng.integers(low, high, shape).astype(np.float64))
    return x.astype(np.float32)


def _datasets(with_nonfinite):
    """(name, float32 array of rank 3) inputs; blocks of several kinds along every axis."""
    rng = np.random.default_rng(17)
    mixed = _wide(rng, (4, 45, 37))
    mixed[1] = 0.0                       # zero blocks along the last and middle axes
    mixed[2, :, 3] = -0.0                # negative zeros; a zero block along axis 1
    mixed[:, 7, :] = 0.0                 # zero rows: zero blocks of width 1 along axis 0
    mixed[0, 10, :] = np.float32(2.0**-149) * rng.integers(1, 2**23, 37)  # float32 subnormals
    mixed[3, 20:30, 0] = FLT_MAX         # the largest values, at both signs
    mixed[3, 25, 1] = -FLT_MAX
    mixed[3, 26, :] = np.float32(3e38) * rng.choice([-1, 1], 37)
    # Tiny tensors: E8M0's lower clamp (2^-127) and NVFP4's tensor scale at FLT_MAX.
    tiny = (rng.standard_normal((3, 20, 33)) * 2.0**-128).astype(np.float32)
    tiny[0, 0] = np.float32(2.0**-149)
    # More than kBlockColumns (256) columns: the strided loops' column chunks.
    wide = _wide(rng, (3, 33, 300), -8, 8)
    sets = [("mixed", mixed), ("tiny", tiny), ("wide", wide)]
    if with_nonfinite:
        special = mixed.copy()
        flat = special.reshape(-1)
        where = rng.choice(flat.size, 40, replace=False)
        flat[where] = np.array([np.nan, -np.nan, np.inf, -np.inf] * 10, np.float32)
        flat[3] = np.float32(np.nan)  # the first block holds a NaN
        sets.append(("nonfinite", special))
    return sets


def _check(x, fmt, axis, rounding, random_bits, isa, what):
    words = (reference.random_words(x.shape, SEED, random_bits)
             if rounding == "stochastic" else None)
    fmt = fmt.replace(axis=axis)
    want_values, want_scales = reference.quantize_block_scaled(x, fmt, rounding, words,
                                                               random_bits)
    values, scales = lp.quantize_block_scaled(
        x, fmt, rounding, seed=SEED, random_bits=random_bits, return_scales=True,
        implementation="op", isa=isa)
    what = f"{what}, {fmt!r} axis={axis} {rounding} random_bits={random_bits} isa={isa}"
    assert scales.shape == want_scales.shape, what
    assert_same_values(values.numpy(), want_values, what + " (values)", x)
    assert_same_values(scales.numpy(), want_scales, what + " (scales)")


@pytest.mark.parametrize("tier", kernel_tiers.params("rounding"))
@pytest.mark.parametrize("fmt", PRESETS, ids=lambda f: f.name)
@pytest.mark.parametrize("rounding,random_bits", ROUNDINGS,
                         ids=lambda v: str(v) if isinstance(v, int) else v)
def test_presets_match_reference(tier, fmt, rounding, random_bits):
    modes = ("nan", "pass_through") if rounding == "nearest_even" else ("nan",)
    for name, x in _datasets(with_nonfinite=rounding == "nearest_even"):
        for axis in (-1, 0, 1):
            for mode in modes if name == "nonfinite" else ("nan",):
                _check(x, fmt.replace(nonfinite_blocks=mode), axis, rounding, random_bits,
                       tier, name)


@pytest.mark.parametrize("tier", kernel_tiers.params("rounding"))
@pytest.mark.parametrize("block_size", [1, 5, 8, 33, 200])
def test_block_sizes(tier, block_size):
    """block_size 1 (every element its own scale), short last blocks, blocks longer than the row."""
    rng = np.random.default_rng(block_size)
    x = _wide(rng, (6, 70), -20, 20)
    x[2, 5] = np.nan
    x[4, :] = 2.0**-140
    for fmt in (lp.MXFP8_E4M3, lp.MXFP4_E2M1, lp.NVFP4):
        for nonfinite in ("nan", "pass_through"):
            f = fmt.replace(block_size=block_size, nonfinite_blocks=nonfinite)
            for axis in (-1, 0):
                for rounding in ("nearest_even", "stochastic"):
                    # 7 random bits: the words' mask (16 and 32 bits: the presets' test).
                    _check(x, f, axis, rounding, 7, tier, f"block_size={block_size}")


@pytest.mark.parametrize("tier", kernel_tiers.params("rounding"))
def test_custom_formats(tier):
    """Element formats without subnormals or without -0, a scale format without tensor scale."""
    rng = np.random.default_rng(5)
    x = _wide(rng, (5, 64), -12, 12)
    x[1, :32] = -0.0
    no_subnormals = lp.BlockFormat(lp.E4M3.replace(subnormals=False), 16)
    fnuz = lp.BlockFormat(lp.FloatFormat(4, 3, exponent_bias=8, infinities=False,
                                         nan="negative_zero", overflow="saturate"), 32)
    e4m3_scale = lp.BlockFormat(lp.E2M3, 16, scale_format=lp.E4M3)
    bf16_scale = lp.BlockFormat(lp.E2M1, 8, scale_format=lp.BF16.replace(overflow="saturate"),
                                tensor_scale=True)
    for fmt in (no_subnormals, fnuz, e4m3_scale, bf16_scale):
        for axis in (-1, 0):
            for rounding in ("nearest_even", "toward_zero", "stochastic"):
                _check(x, fmt, axis, rounding, 16, tier, "custom")


@pytest.mark.parametrize("tier", kernel_tiers.params("rounding"))
def test_rank_one_and_empty(tier):
    x = np.float32([0.3, -1.0, 2.6, 5.0, 1e-3, 7.0])
    _check(x, lp.MXFP4_E2M1.replace(block_size=4), -1, "nearest_even", 16, tier, "rank 1")
    values, scales = lp.quantize_block_scaled(np.zeros((0, 5), np.float32), lp.NVFP4,
                                              return_scales=True, implementation="op", isa=tier)
    assert values.shape == (0, 5) and scales.shape == (0, 1)
    values, scales = lp.quantize_block_scaled(np.zeros((3, 0), np.float32), lp.MXFP8_E4M3,
                                              return_scales=True, implementation="op", isa=tier)
    assert values.shape == (3, 0) and scales.shape == (3, 0)


def test_stochastic_depends_on_seed_and_is_unbiased_on_average():
    x = np.full((64, 1024), 1.1, np.float32)  # between E2M1's 1 and 1.5 (block max 1.1: scale 1)
    a = lp.quantize(x, lp.MXFP4_E2M1, "stochastic", seed=(1, 2), implementation="op").numpy()
    b = lp.quantize(x, lp.MXFP4_E2M1, "stochastic", seed=(1, 3), implementation="op").numpy()
    assert set(np.unique(a)) == {1.0, 1.5}
    assert np.mean(a != b) > 0.2
    assert abs(a.mean() - 1.1) < 0.01


def test_shape_function():
    ops = _op_library.load()

    @tf.function(input_signature=[tf.TensorSpec([None, 70, 3], tf.float32)])
    def scales(x):
        return ops.lowprec_quantize_block_scaled(
            x, tf.constant([1, 2], tf.int64), exponent_bits=4, mantissa_bits=3,
            exponent_bias=7, nan_encoding="all_ones", overflow="saturate", block_size=32,
            axis=1)[1]

    assert scales.get_concrete_function().output_shapes.as_list() == [None, 3, 3]


# ---- Bad attributes ----

_E4M3 = dict(exponent_bits=4, mantissa_bits=3, exponent_bias=7, nan_encoding="all_ones",
             overflow="saturate")


def _raw(x, **attrs):
    ops = _op_library.load()
    return ops.lowprec_quantize_block_scaled(tf.constant(x, tf.float32),
                                             tf.constant([1, 2], tf.int64), **attrs)


@pytest.mark.parametrize("attrs,x,message", [
    (dict(_E4M3, overflow="infinity", nan_encoding="ieee"), [[1.0]], "must be 'saturate'"),
    (dict(_E4M3, block_size=0), [[1.0]], "block_size must be >= 1"),
    (dict(_E4M3, axis=2), [[1.0]], "axis must be in [-2, 2)"),
    (dict(_E4M3), 1.0, "rank >= 1"),
    (dict(_E4M3, exponent_bits=9), [[1.0]], "exponent_bits must be in 1..8"),
    (dict(_E4M3, exponent_bias=30), [[1.0]], "at least 2^-22"),
    (dict(_E4M3, tensor_scale=True), [[1.0]], "tensor_scale=true needs scale_kind='float'"),
    (dict(_E4M3, scale_mantissa_bits=3), [[1.0]], "scale_kind='e8m0' takes no scale format"),
    (dict(_E4M3, scale_kind="float", scale_exponent_bits=0), [[1.0]],
     "scale format: exponent_bits must be in 1..8"),
    (dict(_E4M3, rounding="stochastic", random_bits=0), [[1.0]], "random_bits must be in 1..32"),
])
def test_bad_attributes(attrs, x, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        _raw(x, **attrs)


def test_unsupported_tier_is_refused():
    missing = [t for t in ("avx2", "avx512") if t not in kernel_tiers.available("rounding")]
    if not missing:
        pytest.skip("this CPU runs every tier")
    with pytest.raises(tf.errors.InvalidArgumentError, match="is not supported by this CPU"):
        _raw([[1.0]], isa=missing[0], **_E4M3)


# ---- Thread-count independence ----

_THREADS_SCRIPT = r"""
import json, sys
import tensorflow as tf
threads = int(sys.argv[1])
if threads:  # before anything runs: TF fixes its thread pools at first use
    tf.config.threading.set_intra_op_parallelism_threads(threads)
sys.path.insert(0, sys.argv[2])
from test_block_scaled_kernels import threaded_workload
print(json.dumps(threaded_workload()))
"""


def threaded_workload():
    """Hashes of results large enough for the kernel to split across threads."""
    rng = np.random.default_rng(11)
    x = _wide(rng, (256, 2048), -10, 10)
    x[7, 100] = np.nan
    digests = {}
    for fmt in (lp.MXFP8_E4M3, lp.NVFP4):
        for axis in (-1, 0):
            values, scales = lp.quantize_block_scaled(x, fmt, "stochastic", axis=axis, seed=SEED,
                                                      return_scales=True, implementation="op")
            for name, v in (("values", values), ("scales", scales)):
                digests[f"{fmt.name} axis={axis} {name}"] = hashlib.sha256(
                    np.ascontiguousarray(v.numpy()).view(np.uint32).tobytes()).hexdigest()
    return digests


def test_one_thread_equals_the_default_pool():
    import json  # noqa: PLC0415

    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here] + sys.path))
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, "1", here], check=True,
                         env=env, capture_output=True, text=True, timeout=180).stdout
    one_thread = json.loads(out.strip().splitlines()[-1])
    assert tf.config.threading.get_intra_op_parallelism_threads() != 1
    assert one_thread == threaded_workload()
