"""NumPy reference of the rounding ops, written from the definitions.

The C++ kernels (custom_ops/kernels/rounding.h) and the pure-TF path
(`tf_lowprec.numerics.tf_rounding`) manipulate float32 bit patterns.  This module
does not: it works with values in float64, where every float32 and every
product of one with a power of two in float32's range is exact, so that
`|x| / 2^k`, its floor and its fractional part are computed without error by
`np.ldexp` and `np.floor`.  Agreement between the three is therefore evidence
that the bit tricks implement the definitions below, not a copy of them.

Definitions (see `FloatFormat` and `DfpFormat` in `tf_lowprec.numerics.formats`):

* Grid of a float format at x: step `2^k` with
  `k = max(floor(log2 |x|), min_exponent) - mantissa_bits`.
* Dynamic fixed point: step `2^E` with the block's shared exponent E.
* nearest_even rounds to the nearer neighbour, ties to the even multiple;
  toward_zero truncates; stochastic takes `F = floor(frac * 2^32)` (frac the
  fractional part of `|x| / step`) and the element's random word U
  (`random_words`: 16 random bits in the top half with random_bits <= 16)
  with its low `32 - random_bits` bits cleared, and rounds the magnitude up
  iff `F + U >= 2^32`.

>>> import numpy as np
>>> from tf_lowprec import BF16
>>> from tf_lowprec.numerics import reference
>>> reference.round_to_format(np.float32([1 + 2**-8, 1 + 3 * 2**-8]), BF16)
array([1.      , 1.015625], dtype=float32)
>>> values, exponents = reference.quantize_dfp(np.float32([3.0, 1e-5]), reference.DFP16)
>>> values, exponents
(array([3., 0.], dtype=float32), array([-13], dtype=int32))
"""

import numpy as np

from tf_lowprec.numerics.formats import DFP16, ROUNDING_MODES, DfpFormat, FloatFormat  # noqa: F401

# Shared exponent of a DFP block with no finite non-zero value.
DFP_NO_SCALE = -1024
_QUIET_NAN_BITS = 0x7FC00000
_SIGN_BIT = 0x80000000
_TWO_32 = 2.0**32
_FLOAT32_MIN_NORMAL = 2.0**-126
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # (2^24 - 1) * 2^104

# Philox4x32-10 constants (Salmon et al. 2011) and TensorFlow's seed key.
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_TF_SEED_KEY = (0x3EC8F720, 0x02461E29)
_MASK32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------
# Philox words: the random stream of stochastic rounding.


def _philox_block(counter, key):
    """Philox4x32-10 of counters (4 uint64 arrays holding 32-bit words)."""
    c0, c1, c2, c3 = (np.asarray(c, np.uint64) for c in counter)
    k0, k1 = (np.uint64(k) for k in key)
    m0, m1, mask = np.uint64(_PHILOX_M0), np.uint64(_PHILOX_M1), np.uint64(_MASK32)
    shift = np.uint64(32)
    for round_index in range(10):
        p0 = m0 * c0  # 32 x 32 -> 64 bits: exact in uint64
        p1 = m1 * c2
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ k0, p1 & mask, (p0 >> shift) ^ c3 ^ k1, p0 & mask
        if round_index < 9:
            k0 = (k0 + np.uint64(_PHILOX_W0)) & mask
            k1 = (k1 + np.uint64(_PHILOX_W1)) & mask
    return c0, c1, c2, c3


def philox_key_counter(seed):
    """TensorFlow's stateless seed scrambling (GenerateKey): (key, counter) words."""
    seed0, seed1 = (int(s) & 0xFFFFFFFFFFFFFFFF for s in seed)
    counter = [seed0 & _MASK32, seed0 >> 32, seed1 & _MASK32, seed1 >> 32]
    mix = [int(w) for w in _philox_block([np.uint64(c) for c in counter], _TF_SEED_KEY)]
    return (mix[0], mix[1]), (0, 0, mix[2], mix[3])


def philox_words(shape, seed):
    """uint32 words of `tf.random.stateless_uniform(shape, seed, dtype=tf.uint32, alg="philox")`.

    Element i (row-major) gets word i % 4 of Philox4x32-10 at counter
    `base + i // 4`, with key and base counter derived from `seed` as
    TensorFlow's GenerateKey does.

    >>> philox_words([2], (1, 2)).dtype
    dtype('uint32')
    """
    shape = tuple(int(d) for d in shape)
    size = int(np.prod(shape, dtype=np.int64))
    key, base = philox_key_counter(seed)
    blocks = np.arange((size + 3) // 4, dtype=np.uint64)
    low = (base[1] << 32) | base[0]
    high = (base[3] << 32) | base[2]
    # 128-bit counter base + block: carry from the low into the high 64 bits.
    low_sum = (np.uint64(low) + blocks).astype(np.uint64)
    carry = (low_sum < np.uint64(low)).astype(np.uint64)
    high_sum = np.uint64(high) + carry
    mask, shift = np.uint64(_MASK32), np.uint64(32)
    counter = (low_sum & mask, low_sum >> shift, high_sum & mask, high_sum >> shift)
    words = np.stack(_philox_block(counter, key), axis=-1).reshape(-1)[:size]
    return words.astype(np.uint32).reshape(shape)


# Stochastic rounding with at most this many random bits draws 16 per element.
MAX_HALF_WORD_RANDOM_BITS = 16


def random_words(shape, seed, random_bits=16):
    """The uint32 word each element of the ops' stochastic rounding draws.

    With random_bits <= 16, the Philox stream read as little-endian uint16
    values gives element i (row-major) uint16 i, as the top 16 bits of its
    word (the low 16 bits are 0); otherwise element i takes stream word i
    (`philox_words(shape, seed)`).  The rounding uses the top random_bits
    bits of the word.

    >>> (word,) = philox_words([1], (1, 2))
    >>> even, odd = random_words([2], (1, 2))
    >>> bool(even == (word & 0xFFFF) << 16) and bool(odd == (word >> 16) << 16)
    True
    """
    shape = tuple(int(d) for d in shape)
    if random_bits > MAX_HALF_WORD_RANDOM_BITS:
        return philox_words(shape, seed)
    size = int(np.prod(shape, dtype=np.int64))
    stream = philox_words([(size + 1) // 2], seed).astype("<u4")
    halves = stream.view("<u2")[:size].astype(np.uint32)
    return (halves << np.uint32(16)).reshape(shape)


# ----------------------------------------------------------------------------
# Rounding onto a grid of spacing 2^k, in float64 values.


def _check_rounding(rounding, random_words, shape, random_bits):
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
    if rounding != "stochastic":
        return None
    if not 1 <= random_bits <= 32:
        raise ValueError(f"random_bits must be in 1..32, got {random_bits}")
    if random_words is None:
        raise ValueError(
            "stochastic rounding needs random_words (e.g. random_words(shape, seed, random_bits))"
        )
    words = np.asarray(random_words, np.uint32)
    if words.shape != shape:
        raise ValueError(f"random_words must have shape {shape}, got {words.shape}")
    # U: the word with its low (32 - random_bits) bits cleared, as an integer.
    step = 2 ** (32 - random_bits)
    return np.floor(words.astype(np.float64) / step) * step


def _floor_log2(a):
    """floor(log2 a) for positive finite float64 a (exact, via frexp)."""
    return np.frexp(a)[1].astype(np.int64) - 1


def _round_to_grid(a, k, rounding, u):
    """Rounds magnitudes a >= 0 onto multiples of 2^k (float64 result, exact)."""
    scaled = np.ldexp(a, k.astype(np.int64) * -1)
    lower = np.floor(scaled)
    frac = scaled - lower  # exact: scaled has at most 24 significant bits
    if rounding == "nearest_even":
        odd = np.fmod(lower, 2.0) == 1.0
        up = (frac > 0.5) | ((frac == 0.5) & odd)
    elif rounding == "toward_zero":
        up = np.zeros(a.shape, bool)
    else:
        fraction = np.floor(np.ldexp(frac, 32))  # F = floor(frac * 2^32)
        up = fraction + u >= _TWO_32
    return np.ldexp(lower + up, k.astype(np.int64))


def _with_sign(magnitude, negative):
    """float32 array of `magnitude` (float64, exact in float32 or >= 2^128) with signs."""
    with np.errstate(over="ignore"):
        values = magnitude.astype(np.float32)
    return np.where(negative, -values, values)


def _quiet_nan(negative):
    bits = np.where(negative, _SIGN_BIT | _QUIET_NAN_BITS, _QUIET_NAN_BITS).astype(np.uint32)
    return bits.view(np.float32)


def round_to_format(x, fmt, rounding="nearest_even", random_words=None, random_bits=16):
    """Reference of `tf_lowprec.round_to_format`: float32 array of x's shape.

    Args:
      x: float32 values (array-like).
      fmt: a `FloatFormat`.
      rounding: "nearest_even", "stochastic" or "toward_zero".
      random_words: uint32 words of x's shape (stochastic rounding only);
        `random_words(x.shape, seed, random_bits)` reproduces the ops' stream.
      random_bits: how many top bits of each word are used.

    >>> round_to_format(np.float32([1000.0, -1e-9]), FloatFormat(4, 3, infinities=False,
    ...                 overflow="saturate"))
    array([448.,  -0.], dtype=float32)
    """
    x = np.asarray(x, np.float32)
    u = _check_rounding(rounding, random_words, x.shape, random_bits)
    negative = np.signbit(x)
    is_nan = np.isnan(x)
    is_inf = np.isinf(x)
    # Non-finite elements are zeroed before the float64 conversion (which
    # would flag signalling NaNs as invalid) and handled at the end.
    a = np.abs(np.where(is_nan | is_inf, np.float32(0), x).astype(np.float64))
    if fmt.input_denormals == "flush":
        a = np.where(a < _FLOAT32_MIN_NORMAL, 0.0, a)

    exponent = np.where(a > 0, _floor_log2(np.where(a > 0, a, 1.0)), fmt.min_exponent)
    k = np.maximum(exponent, fmt.min_exponent) - fmt.mantissa_bits
    r = _round_to_grid(a, k, rounding, u)

    if not fmt.subnormals:
        r = np.where(r < fmt.min_normal, 0.0, r)  # flush after rounding
    if rounding == "toward_zero" or fmt.overflow == "saturate":
        overflow_value = fmt.max_value
    else:
        overflow_value = np.inf if fmt.overflow == "infinity" else np.nan
    r = np.where(r > fmt.max_value, overflow_value, r)
    if fmt.infinities:
        inf_value = np.inf
    else:
        inf_value = np.nan if fmt.overflow == "nan" else fmt.max_value
    r = np.where(is_inf, inf_value, r)

    result_nan = np.isnan(r) | is_nan
    finite_r = np.where(result_nan, 0.0, r)
    out = _with_sign(finite_r, negative & (fmt.negative_zero | (finite_r != 0)))
    return np.where(result_nan, _quiet_nan(negative), out).astype(np.float32)


# ----------------------------------------------------------------------------
# Dynamic fixed point.


def shared_exponent(max_abs, fmt):
    """Shared exponents (int64) of blocks with largest finite magnitudes `max_abs`."""
    max_abs = np.asarray(max_abs, np.float64)
    positive = max_abs > 0
    e = _floor_log2(np.where(positive, max_abs, 1.0)) - (fmt.bits - 2) + fmt.extra_shift
    if fmt.extra_shift == 0:
        # Rounding could carry the largest mantissa past 2^(bits-1) - 1.
        e = e + (max_abs > fmt.max_mantissa * np.ldexp(1.0, e))
    return np.where(positive, e, DFP_NO_SCALE)


def _block_maxima(finite_abs, fmt):
    """Per-block maxima and the element -> block expansion along the last axis."""
    n = finite_abs.shape[-1]
    bs = fmt.block_size
    blocks = -(-n // bs)
    maxima = np.zeros(finite_abs.shape[:-1] + (blocks,), np.float64)
    for b in range(blocks):
        segment = finite_abs[..., b * bs : (b + 1) * bs]
        maxima[..., b] = segment.max(axis=-1) if segment.shape[-1] else 0.0
    return maxima


def quantize_dfp(x, fmt=DFP16, rounding="nearest_even", random_words=None, random_bits=16):
    """Reference of `tf_lowprec.quantize_dfp(..., return_exponents=True)`.

    Returns (float32 values of x's shape, int32 shared exponents shaped like
    the op's: all ones of x's rank for one exponent per tensor, else x's shape
    with the blocked axis replaced by its number of blocks).

    Columns as blocks: 4-bit mantissas (|I| <= 7) times 2^0 and 2^-4.

    >>> v, e = quantize_dfp(np.float32([[1.0, 0.3], [6.5, 0.2]]),
    ...                     DfpFormat(4, block_size=2, axis=0))
    >>> v
    array([[1.    , 0.3125],
           [6.    , 0.1875]], dtype=float32)
    >>> e
    array([[ 0, -4]], dtype=int32)
    """
    x = np.asarray(x, np.float32)
    u = _check_rounding(rounding, random_words, x.shape, random_bits)
    negative = np.signbit(x)
    is_nan = np.isnan(x)
    finite = np.isfinite(x)
    finite_abs = np.abs(np.where(finite, x, np.float32(0)).astype(np.float64))
    rank = x.ndim

    if fmt.block_size is None:
        max_abs = finite_abs.max() if x.size else 0.0
        exponents = np.full((1,) * rank, shared_exponent(max_abs, fmt), np.int64)
        k = np.broadcast_to(exponents, x.shape)
    else:
        if rank == 0:
            raise ValueError("a DfpFormat with block_size needs x of rank >= 1")
        axis = fmt.axis % rank
        moved = np.moveaxis(finite_abs, axis, -1)
        block_exponents = shared_exponent(_block_maxima(moved, fmt), fmt)
        n = moved.shape[-1]
        k_moved = np.repeat(block_exponents, fmt.block_size, axis=-1)[..., :n]
        k = np.moveaxis(k_moved, -1, axis)
        exponents = np.moveaxis(block_exponents, -1, axis)

    scaled = (finite_abs > 0) & (k != DFP_NO_SCALE)
    grid_k = np.where(scaled, k, 0)
    r = _round_to_grid(finite_abs, grid_k, rounding, u)
    # Saturation: a finite value never becomes Inf.  Rounding that carries
    # past FLT_MAX gives the largest multiple of 2^k that is at most FLT_MAX.
    largest = np.ldexp(np.floor(np.ldexp(_FLOAT32_MAX, -grid_k)), grid_k)
    r = np.minimum(r, largest)
    values = np.where(scaled, _with_sign(r, negative), x)
    values = np.where(is_nan, _quiet_nan(negative), values)
    return values.astype(np.float32), exponents.astype(np.int32)


# ----------------------------------------------------------------------------
# Block-scaled formats (OCP MX v1.0, NVFP4).


def _float32_ops():
    """Context for float32 arithmetic whose overflow to Inf is intended."""
    return np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore")


def _blocks_view(a, block_size):
    """a (..., n) padded with zeros to whole blocks and reshaped to (..., blocks, block_size)."""
    n = a.shape[-1]
    blocks = -(-n // block_size)
    pad = blocks * block_size - n
    padded = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,), a.dtype)], axis=-1)
    return padded.reshape(a.shape[:-1] + (blocks, block_size))


def _expand_blocks(per_block, block_size, n):
    """(..., blocks) -> (..., n): each block's value repeated over its elements."""
    return np.repeat(per_block, block_size, axis=-1)[..., :n]


def quantize_block_scaled(x, fmt, rounding="nearest_even", random_words=None, random_bits=16):
    """Reference of `tf_lowprec.quantize_block_scaled(..., return_scales=True)`.

    Written from the OCP MX v1.0 conversion (shared_exp = floor(log2(amax))
    - emax_elem; X = 2^shared_exp; P_i = element(V_i / X), clamping normals)
    and NVIDIA's NVFP4 two-level scaling, in the float32 operation order of
    docs/block_formats.md.  Returns (float32 values of x's shape, float32
    decoded block scales: x's shape with `fmt.axis` replaced by its number of
    blocks; NaN for a block that became NaN).

    >>> from tf_lowprec.numerics.formats import MXFP4_E2M1
    >>> v, s = quantize_block_scaled(np.float32([0.3, -1.0, 2.6, 5.0]),
    ...                              MXFP4_E2M1.replace(block_size=4))
    >>> v, s
    (array([ 0.5, -1. ,  3. ,  4. ], dtype=float32), array([1.], dtype=float32))
    """
    x = np.asarray(x, np.float32)
    if x.ndim == 0:
        raise ValueError("a BlockFormat needs x of rank >= 1 (blocks run along axis)")
    axis = fmt.axis % x.ndim if -x.ndim <= fmt.axis < x.ndim else None
    if axis is None:
        raise ValueError(f"axis={fmt.axis} is out of range for x of rank {x.ndim}")
    _check_rounding(rounding, random_words, x.shape, random_bits)
    bs = fmt.block_size
    moved = np.moveaxis(x, axis, -1)
    words = None if random_words is None else np.moveaxis(
        np.asarray(random_words, np.uint32), axis, -1)
    n = moved.shape[-1]
    finite = np.isfinite(moved)
    finite_abs = np.abs(np.where(finite, moved, np.float32(0)))
    block_amax = _blocks_view(finite_abs, bs).max(axis=-1, initial=np.float32(0))
    block_nonfinite = _blocks_view(~finite, bs).any(axis=-1)
    element = fmt.element
    zero_block = block_amax == 0

    with _float32_ops():
        if fmt.power_of_two_scales:
            # shared_exp = floor(log2(amax)) - emax_elem, within E8M0's range.
            amax64 = np.where(zero_block, 1.0, block_amax.astype(np.float64))
            shared = np.where(zero_block, _E8M0_MIN,
                              _floor_log2(amax64) - fmt.element_emax)
            shared = np.clip(shared, _E8M0_MIN, _E8M0_MAX)
            scales = np.ldexp(1.0, shared).astype(np.float32)  # exact: 2^-127 is a float32
            k = _expand_blocks(shared, bs, n)
            # V / X, exact in float64; in float32 too wherever the element
            # format can tell it from zero (its smallest value is >= 2^-22).
            scaled = np.ldexp(moved.astype(np.float64), -k).astype(np.float32)
            q = round_to_format(np.where(finite, scaled, np.float32(0)), element, rounding,
                                words, random_bits)
            values = np.ldexp(q.astype(np.float64), k).astype(np.float32)  # exact
        else:
            # NVFP4-style scales, in float64 with the roundings to float32
            # written out (docs/block_formats.md): every float64 operation
            # here is on normal float64 values, so the result does not depend
            # on a flush-to-zero mode.
            f32, f64 = np.float32, np.float64
            elem_max = f64(element.max_value)
            if fmt.tensor_scale and finite_abs.max(initial=f32(0)) > 0:
                tensor_amax = f64(finite_abs.max())
                encode = f64(f32(min(elem_max * fmt.scale_format.max_value / tensor_amax,
                                     _FLOAT32_MAX)))
            else:
                encode = f64(1.0)
            amax64 = block_amax.astype(f64)
            decode = ((amax64 / elem_max) * encode).astype(f32)
            block_scale = round_to_format(decode, fmt.scale_format).astype(f64)
            zero_block = zero_block | (block_scale == 0)
            safe_scale = np.where(zero_block, 1.0, block_scale)
            element_encode = np.minimum(encode / safe_scale, _FLOAT32_MAX).astype(f32).astype(f64)
            scales = np.where(zero_block, f32(0), (safe_scale / encode).astype(f32))
            scaled = (moved.astype(f64) * _expand_blocks(element_encode, bs, n)).astype(f32)
            q = round_to_format(np.where(finite, scaled, f32(0)), element, rounding, words,
                                random_bits)
            values = ((q.astype(f64) * _expand_blocks(safe_scale, bs, n)) / encode).astype(f32)
        values = np.where(_expand_blocks(zero_block, bs, n) & finite,
                          np.where(np.signbit(moved), np.float32(-0.0), np.float32(0.0)), values)

    if fmt.nonfinite_blocks == "nan":
        nan_block = _expand_blocks(block_nonfinite, bs, n)
        values = np.where(nan_block, _quiet_nan(np.signbit(moved)), values)
        scales = np.where(block_nonfinite, np.float32(np.nan), scales)
    else:
        values = np.where(finite, values, moved)
        values = np.where(np.isnan(moved), _quiet_nan(np.signbit(moved)), values)
    values = np.moveaxis(values.astype(np.float32), -1, axis)
    scales = np.moveaxis(np.asarray(scales, np.float32), -1, axis)
    return values, scales


_E8M0_MIN = -127
_E8M0_MAX = 127
