"""Block-scaled formats (OCP MX v1.0, NVFP4): definition, reference, TF twin, API.

The NumPy reference (`reference.quantize_block_scaled`) is checked against an
independent construction from ml_dtypes' element and scale types; the pure-TF
twin and the public API are checked against the reference bit for bit.  The
C++ kernels' tiers are checked in tests/test_block_scaled_kernels.py.
"""

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.numerics import formats, reference, tf_block_scaling

MX_PRESETS = [lp.MXFP8_E4M3, lp.MXFP8_E5M2, lp.MXFP6_E2M3, lp.MXFP6_E3M2, lp.MXFP4_E2M1,
              lp.MXINT8]
ALL_PRESETS = MX_PRESETS + [lp.NVFP4]


def bits_equal(a, b):
    """Bitwise equality, NaNs compared by sign only (every NaN here is quiet)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.shape != b.shape:
        return False
    a_nan, b_nan = np.isnan(a), np.isnan(b)
    return (np.array_equal(a_nan, b_nan)
            and np.array_equal(np.signbit(a[a_nan]), np.signbit(b[b_nan]))
            and np.array_equal(a[~a_nan].view(np.uint32), b[~b_nan].view(np.uint32)))


def sample(rng, shape, specials=True):
    """Gaussians over 60 binades, with zeros, subnormals, extremes, Inf and NaN mixed in."""
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-30, 30, shape))).astype(np.float32)
    if specials:
        flat = x.reshape(-1)
        values = np.float32([0, -0.0, 1e-40, -3e-42, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan,
                             1e-45, 448, 7e-39])
        index = rng.choice(flat.size, size=min(flat.size, len(values)), replace=False)
        flat[index] = values[: len(index)]
    return x


# ----------------------------------------------------------------------------
# Definitions.

ML_DTYPES_ELEMENTS = {
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2_saturating": ml_dtypes.float8_e5m2,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e2m1": ml_dtypes.float4_e2m1fn,
}


@pytest.mark.parametrize("fmt", ALL_PRESETS, ids=lambda f: f.name)
def test_element_grids_are_the_ml_dtypes_grids(fmt):
    element = fmt.element
    if element.name == "int8_mx":
        grid = np.arange(-127, 128) / 64.0  # MXINT8: 8-bit integers times 2^-6, symmetric
    else:
        dtype = ML_DTYPES_ELEMENTS[element.name]
        codes = np.arange(2 ** (element.bits), dtype=np.uint32).astype(np.uint8)
        values = codes.view(dtype).astype(np.float64)
        grid = values[np.isfinite(values)]
    grid = np.unique(grid.astype(np.float32))
    assert element.max_value == grid.max()
    # Every grid value is a value of the element format, and nothing between.
    assert bits_equal(reference.round_to_format(grid, element), grid)
    midpoints = ((grid[1:].astype(np.float64) + grid[:-1]) / 2).astype(np.float32)
    rounded = reference.round_to_format(midpoints, element)
    assert np.isin(rounded, grid).all()
    assert element.max_exponent == fmt.element_emax == int(np.floor(np.log2(grid.max())))


def test_preset_definitions():
    assert (lp.MXFP8_E4M3.block_size, lp.MXFP4_E2M1.block_size, lp.NVFP4.block_size) == (32, 32,
                                                                                        16)
    assert all(f.power_of_two_scales and not f.tensor_scale for f in MX_PRESETS)
    assert lp.NVFP4.scale_format == lp.E4M3 and lp.NVFP4.tensor_scale
    assert lp.MXFP8_E4M3.bits_per_element == 8.25 and lp.NVFP4.bits_per_element == 4.5
    for fmt in ALL_PRESETS:
        assert formats.get(fmt.name) is fmt
        assert formats.get(formats.serialize(fmt)) == fmt == formats.get(fmt.get_config())
        names = {"BlockFormat": lp.BlockFormat, "FloatFormat": lp.FloatFormat}
        assert eval(repr(fmt), names) == fmt
    custom = lp.BlockFormat(lp.FloatFormat(3, 3, infinities=False, overflow="saturate"), 8,
                            axis=0, nonfinite_blocks="pass_through")
    assert formats.get(formats.serialize(custom)) == custom
    assert custom.replace(block_size=4).block_size == 4 and hash(custom) == hash(custom.replace())


@pytest.mark.parametrize("kwargs, message", [
    ({"element": "e5m2", "block_size": 32}, "element must saturate"),
    ({"element": "fp16", "block_size": 32}, "element must saturate"),
    ({"element": lp.FP16.replace(overflow="saturate"), "block_size": 32}, "2\\^-22"),
    ({"element": "dfp16", "block_size": 32}, "element must be a FloatFormat"),
    ({"element": "e2m1", "block_size": 0}, "block_size must be a positive int"),
    ({"element": "e2m1", "block_size": 32.0}, "block_size must be a positive int"),
    ({"element": "e2m1", "block_size": 16, "scale_format": "e5m2"}, "scale_format must saturate"),
    ({"element": "e2m1", "block_size": 16, "scale_format": "ue8m0"}, "scale_format must be 'e8m0'"),
    ({"element": "e2m1", "block_size": 16, "tensor_scale": True}, "tensor_scale=True needs"),
    ({"element": "e2m1", "block_size": 16, "axis": 1.0}, "axis must be an int"),
    ({"element": "e2m1", "block_size": 16, "nonfinite_blocks": "inf"}, "nonfinite_blocks must be"),
])
def test_bad_definitions_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lp.BlockFormat(**kwargs)


def test_formats_are_immutable():
    with pytest.raises(AttributeError, match="immutable"):
        lp.MXFP8_E4M3.block_size = 16


# ----------------------------------------------------------------------------
# The reference against an independent construction from ml_dtypes.


def ml_dtypes_mx(x, fmt):
    """MX conversion along the last axis written with ml_dtypes' types (RNE, finite x)."""
    bs = fmt.block_size
    n = x.shape[-1]
    pad = -n % bs
    blocks = np.pad(x.astype(np.float64), [(0, 0)] * (x.ndim - 1) + [(0, pad)]).reshape(
        x.shape[:-1] + (-1, bs))
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    shared = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1))) - fmt.element_emax,
                      -127)
    shared = np.clip(shared, -127, 127)
    # The scale is an E8M0 number.
    scale = np.exp2(shared)
    assert np.array_equal(scale.astype(ml_dtypes.float8_e8m0fnu).astype(np.float64), scale)
    v = blocks / scale
    limit = fmt.element.max_value
    v = np.clip(v, -limit, limit)
    if fmt.element.name == "int8_mx":
        p = np.round(v * 64) / 64  # half to even
    else:
        p = v.astype(ML_DTYPES_ELEMENTS[fmt.element.name]).astype(np.float64)
    y = (p * scale).reshape(x.shape[:-1] + (-1,))[..., :n]
    return y.astype(np.float32), scale[..., 0].astype(np.float32)


@pytest.mark.parametrize("fmt", MX_PRESETS, ids=lambda f: f.name)
def test_reference_equals_ml_dtypes_construction(fmt):
    rng = np.random.default_rng(1)
    x = sample(rng, (40, 70), specials=False)
    x[0, :32] = 0.0  # a zero block
    x[1, :5] = np.float32([1e-40, -2e-39, 3e-45, 0, 1e-38])  # subnormal amax: s clamps at -127
    x[2, 32:64] = np.linspace(-1.0, 1.0, 32) * 3.3e38  # near FLT_MAX
    values, scales = reference.quantize_block_scaled(x, fmt)
    expected_values, expected_scales = ml_dtypes_mx(x, fmt)
    assert bits_equal(values, expected_values)
    assert bits_equal(scales, expected_scales)


def test_nvfp4_reference_equals_ml_dtypes_construction():
    rng = np.random.default_rng(2)
    x = sample(rng, (8, 48), specials=False)
    x[3] *= 1e-6  # blocks far below the tensor's amax: small or zero E4M3 scales
    values, scales = reference.quantize_block_scaled(x, lp.NVFP4)
    f64 = np.float64
    amax_t = f64(np.abs(x).max())
    encode = f64(np.float32(6.0 * 448.0 / amax_t))
    blocks = x.reshape(8, 3, 16).astype(f64)
    amax_b = np.abs(blocks).max(axis=-1, keepdims=True)
    s_b = ((amax_b / 6.0) * encode).astype(np.float32).astype(ml_dtypes.float8_e4m3fn).astype(f64)
    zero = s_b == 0
    e_b = np.where(zero, 1.0, encode / np.where(zero, 1.0, s_b)).astype(np.float32).astype(f64)
    p = (blocks * e_b).astype(np.float32)
    p = np.clip(p, -6, 6).astype(ml_dtypes.float4_e2m1fn).astype(f64)
    y = np.where(zero, 0.0 * np.sign(blocks), (p * s_b) / encode).astype(np.float32)
    assert bits_equal(values, y.reshape(8, 48))
    assert bits_equal(scales, np.where(zero, 0.0, s_b / encode).astype(np.float32)[..., 0])


def test_specification_examples():
    # MX clamps: an E4M3 block whose amax is 500 has s = floor(log2 500) - 8 = 0, so 500 > 448
    # saturates while the block's other elements keep E4M3's precision.
    v, s = lp.quantize_block_scaled([500.0, 1.0, -3.3, 0.001], lp.MXFP8_E4M3, return_scales=True,
                                    implementation="tf")
    assert v.numpy().tolist() == [448.0, 1.0, -3.25, 2.0**-9] and s.numpy().tolist() == [1.0]
    # MXFP4: scale 2^(floor(log2 5) - 2) = 1; 5.0 is a tie between 4 and 6: to even (4).
    v = lp.quantize_block_scaled([0.3, -1.0, 2.6, 5.0], lp.MXFP4_E2M1, implementation="tf")
    assert v.numpy().tolist() == [0.5, -1.0, 3.0, 4.0]
    # A NaN or an Inf makes its block NaN (a NaN scale); the next block is unaffected.
    fmt = lp.MXFP8_E4M3.replace(block_size=2)
    v, s = lp.quantize_block_scaled([1.0, np.inf, -2.0, 3.0], fmt, return_scales=True,
                                    implementation="tf")
    assert np.isnan(v.numpy()[:2]).all() and v.numpy()[2:].tolist() == [-2.0, 3.0]
    assert np.isnan(s.numpy()[0]) and s.numpy()[1] == 2.0**-7
    v = lp.quantize_block_scaled([1.0, np.inf, -2.0, np.nan], fmt.replace(
        nonfinite_blocks="pass_through"), implementation="tf").numpy()
    assert v[0] == 1.0 and v[1] == np.inf and v[2] == -2.0 and np.isnan(v[3])
    # A short last block is a block like the others; zero blocks keep signed zeros.
    v = lp.quantize_block_scaled([[0.0, -0.0, 0.0, 96.0, 1.0]], lp.MXFP6_E3M2.replace(block_size=3),
                                 implementation="tf").numpy()
    assert np.signbit(v[0, 1]) and v[0, 3:].tolist() == [96.0, 1.0]


# ----------------------------------------------------------------------------
# The TF twin and the API against the reference.

TWIN_FORMATS = ALL_PRESETS + [
    lp.NVFP4.replace(tensor_scale=False),
    lp.MXFP8_E4M3.replace(nonfinite_blocks="pass_through"),
    lp.NVFP4.replace(nonfinite_blocks="pass_through", block_size=5),
    lp.BlockFormat(lp.E4M3.replace(subnormals=False), 7),
    lp.BlockFormat(lp.FloatFormat(4, 3, 11, infinities=False, nan="negative_zero",
                                  overflow="saturate"), 3),  # HFP8 elements: no -0
]


@pytest.mark.parametrize("fmt", TWIN_FORMATS, ids=repr)
@pytest.mark.parametrize("rounding", ["nearest_even", "toward_zero", "stochastic"])
def test_tf_twin_equals_reference(fmt, rounding):
    rng = np.random.default_rng(3)
    for shape, axis in [((5, 37), 1), ((5, 37), 0), ((3, 4, 20), 1), ((70,), 0)]:
        x = sample(rng, shape)
        f = fmt.replace(axis=axis)
        words = reference.random_words(x.shape, (7, 9), 16) if rounding == "stochastic" else None
        expected = reference.quantize_block_scaled(x, f, rounding, words, 16)
        got = tf_block_scaling.quantize_block_scaled(tf.constant(x), f, rounding,
                                                     tf.constant([7, 9], tf.int64), 16)
        assert bits_equal(got[0], expected[0]), (fmt, shape, axis)
        assert bits_equal(got[1], expected[1]), (fmt, shape, axis)


def test_quantize_api_takes_axis_and_names_and_runs_in_graphs():
    x = sample(np.random.default_rng(4), (6, 40), specials=False)
    expected = reference.quantize_block_scaled(x, lp.MXFP8_E4M3.replace(axis=0))
    for implementation in ("tf", "op"):
        got = lp.quantize(x, "mxfp8_e4m3", axis=0, implementation=implementation)
        assert bits_equal(got, expected[0])
        graph = tf.function(lambda v: lp.quantize_block_scaled(
            v, lp.MXFP8_E4M3, axis=-2, return_scales=True, implementation=implementation))
        values, scales = graph(tf.constant(x))
        assert bits_equal(values, expected[0]) and bits_equal(scales, expected[1])
        assert scales.shape == (1, 40)
    # axis=None keeps the format's axis; lp.quantize ignores axis for formats without blocks.
    assert bits_equal(lp.quantize(x, lp.NVFP4, implementation="tf"),
                      reference.quantize_block_scaled(x, lp.NVFP4)[0])
    assert bits_equal(lp.quantize(x, "bf16", axis=0), reference.round_to_format(x, lp.BF16))
    dfp = lp.quantize(x, lp.DfpFormat(8, block_size=4), axis=0, implementation="tf")
    assert bits_equal(dfp, reference.quantize_dfp(x, lp.DfpFormat(8, block_size=4, axis=0))[0])


def test_stochastic_rounding_is_seeded_and_unbiased():
    x = tf.fill([64, 32], np.float32(1.1))  # E2M1 neighbours 1.0 and 1.5 at scale 2^-2... of 1.1
    fmt = lp.MXFP4_E2M1
    first = lp.quantize(x, fmt, "stochastic", seed=5, implementation="tf")
    again = lp.quantize(x, fmt, "stochastic", seed=5, implementation="tf")
    other = lp.quantize(x, fmt, "stochastic", seed=6, implementation="tf")
    assert bits_equal(first, again) and not bits_equal(first, other)
    # amax 1.1: s = floor(log2 1.1) - 2 = -2, so the grid near 1.1 is {1.0, 1.5}:
    # P(up) = 0.2, the mean is 1.1 within 4 standard errors.
    values = np.unique(first.numpy())
    assert set(values.tolist()) <= {1.0, 1.5}
    standard_error = 0.5 * np.sqrt(0.2 * 0.8 / first.shape.num_elements())
    assert abs(first.numpy().mean() - 1.1) < 4 * standard_error


def test_gradient_is_straight_through_or_rounded():
    x = tf.constant([[0.3, 1.7, -2.2, 5.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        plain = lp.quantize_block_scaled(x, lp.MXFP4_E2M1, implementation="tf")
        rounded = lp.quantize_block_scaled(x, lp.MXFP4_E2M1, backward_format="bf16",
                                           implementation="tf")
        upstream = tf.constant([[1.0 + 2.0**-10, 2.0, 3.0, 4.0]])
        loss_plain = tf.reduce_sum(plain * upstream)
        loss_rounded = tf.reduce_sum(rounded * upstream)
    assert tape.gradient(loss_plain, x).numpy().tolist() == upstream.numpy().tolist()
    assert tape.gradient(loss_rounded, x).numpy().tolist() == [[1.0, 2.0, 3.0, 4.0]]


@pytest.mark.parametrize("call, message", [
    (lambda: lp.quantize_block_scaled(1.0, lp.MXFP8_E4M3), "rank >= 1"),
    (lambda: lp.quantize_block_scaled([1.0], lp.MXFP8_E4M3, axis=1), "axis=1 is out of range"),
    (lambda: lp.quantize_block_scaled([1.0], lp.MXFP8_E4M3, axis=0.5), "axis must be an int"),
    (lambda: lp.quantize_block_scaled([1.0], "bf16"), "fmt must be a BlockFormat"),
    (lambda: lp.quantize_block_scaled([1.0], lp.NVFP4, rounding="up"), "rounding must be one of"),
    (lambda: lp.quantize_block_scaled([1.0], lp.NVFP4, return_scales=1), "return_scales"),
    (lambda: lp.quantize_block_scaled([1.0], lp.NVFP4, return_scales=True,
                                      backward_format="bf16"), "cannot be combined"),
    (lambda: lp.quantize_block_scaled(tf.constant([1.0], tf.float64), lp.NVFP4),
     "x must be float32"),
])
def test_bad_calls_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_quantize_layer_takes_block_formats():
    layer = lp.layers.Quantize(lp.MXFP6_E2M3.replace(axis=0), implementation="tf")
    x = sample(np.random.default_rng(5), (40, 3), specials=False)
    assert bits_equal(layer(x), reference.quantize_block_scaled(x, layer.format)[0])
    clone = lp.layers.Quantize.from_config(layer.get_config())
    assert clone.format == layer.format and clone.format.axis == 0
