"""FloatFormat / DfpFormat: derived values, identity, serialization, validation.

The derived values are checked three ways: against ml_dtypes.finfo for the
formats ml_dtypes has, against the C++ derivation (DeriveFloatGrid, read
back through the op) for every (exponent_bits, mantissa_bits) pair and NaN
encoding, and against a brute-force enumeration of every code of small
formats.
"""

import json

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.numerics import formats

FloatFormat, DfpFormat = lp.FloatFormat, lp.DfpFormat

PRESETS_VS_ML_DTYPES = [
    (lp.BF16, ml_dtypes.bfloat16),
    (lp.FP16, np.float16),
    (lp.FP32, np.float32),
    (lp.E4M3, ml_dtypes.float8_e4m3fn),
    (lp.E5M2, ml_dtypes.float8_e5m2),
    (lp.HFP8_FORWARD, ml_dtypes.float8_e4m3b11fnuz),
    (lp.HFP8_BACKWARD, ml_dtypes.float8_e5m2),
    (lp.E4M3FNUZ, ml_dtypes.float8_e4m3fnuz),
    (lp.E5M2FNUZ, ml_dtypes.float8_e5m2fnuz),
    (FloatFormat(3, 4), ml_dtypes.float8_e3m4),
    (FloatFormat(4, 3), ml_dtypes.float8_e4m3),
    (FloatFormat(2, 3, infinities=False, nan="none"), ml_dtypes.float6_e2m3fn),
    (FloatFormat(3, 2, infinities=False, nan="none"), ml_dtypes.float6_e3m2fn),
    (FloatFormat(2, 1, infinities=False, nan="none"), ml_dtypes.float4_e2m1fn),
]


@pytest.mark.parametrize("fmt,dtype", PRESETS_VS_ML_DTYPES,
                         ids=[repr(f) for f, _ in PRESETS_VS_ML_DTYPES])
def test_derived_values_match_ml_dtypes(fmt, dtype):
    info = ml_dtypes.finfo(dtype)
    assert fmt.max_value == float(info.max)
    assert fmt.min_normal == float(info.smallest_normal)
    assert fmt.min_subnormal == float(info.smallest_subnormal)
    assert fmt.epsilon == float(info.eps)
    assert fmt.mantissa_bits == info.nmant
    assert fmt.bits == info.bits
    assert fmt.min_exponent == info.minexp
    assert fmt.max_exponent == info.maxexp - 1


def test_bf16_intel_derived_values():
    # subnormals=False: the smallest positive value is the smallest normal.
    assert lp.BF16_INTEL.min_subnormal == lp.BF16_INTEL.min_normal == 2.0**-126
    assert lp.BF16_INTEL.max_value == lp.BF16.max_value


def enumerate_codes(fmt):
    """Every finite positive value of `fmt`, decoded code by code from its definition."""
    values = []
    for code in range(2**fmt.exponent_bits):
        for mantissa in range(2**fmt.mantissa_bits):
            top = code == 2**fmt.exponent_bits - 1
            if fmt.nan == "ieee" and top:
                continue  # Inf and NaN
            if fmt.nan == "all_ones" and top and mantissa == 2**fmt.mantissa_bits - 1:
                continue  # the NaN code
            if code == 0:
                if not fmt.subnormals and mantissa:
                    continue
                value = mantissa * 2.0 ** (fmt.min_exponent - fmt.mantissa_bits)
            else:
                value = (1 + mantissa / 2**fmt.mantissa_bits) * 2.0 ** (code - fmt.exponent_bias)
            if value > 0:
                values.append(value)
    return np.array(sorted(values))


SMALL_FORMATS = [
    FloatFormat(e, m, **flags)
    for e in (1, 2, 3, 4)
    for m in (0, 1, 2, 3)
    for flags in (
        {},
        {"infinities": False, "nan": "all_ones"},
        {"infinities": False, "nan": "negative_zero"},
        {"infinities": False, "nan": "none", "subnormals": False},
    )
]


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=repr)
def test_derived_values_match_enumeration(fmt):
    values = enumerate_codes(fmt)
    if values.size == 0:
        assert fmt.max_value == 0.0
        return
    assert fmt.max_value == values.max()
    assert fmt.min_subnormal == values.min()
    normals = values[values >= fmt.min_normal]
    if normals.size:
        assert normals.min() == fmt.min_normal
    # The rounding ops land exactly on these values: every value is a fixed
    # point, and nothing else in between is.
    x = values.astype(np.float32)
    got = lp.round_to_format(x, fmt, implementation="op").numpy()
    np.testing.assert_array_equal(got, x)
    between = ((values[:-1] + values[1:]) / 2).astype(np.float32)
    got = lp.round_to_format(between, fmt, implementation="op").numpy()
    assert not np.isin(between, values).any()
    assert np.isin(got, values).all()


@pytest.mark.parametrize("nan", ["ieee", "all_ones", "negative_zero", "none"])
def test_cpp_derivation_agrees_for_every_exponent_and_mantissa(nan):
    """DeriveFloatGrid (C++) and formats.py give the same max and min values.

    Read back through the op: toward_zero saturates, so float32's largest
    value comes out as the format's largest finite value; the smallest
    subnormal is a fixed point and the next float32 above half of it rounds
    up to it.
    """
    infinities = nan == "ieee"
    probes = np.float32([3.4028235e38, 0.0, 0.0, 0.0])
    for e in range(1, 9):
        for m in range(0, 24):
            try:
                fmt = FloatFormat(e, m, infinities=infinities, nan=nan)
            except ValueError:
                # 8 exponent bits without Inf codes exceed float32's range
                # with any bias that keeps the smallest normal >= 2^-126.
                assert e == 8 and not infinities and not (nan == "all_ones" and m == 0)
                continue
            probes[1] = fmt.min_subnormal
            probes[2] = np.nextafter(np.float32(fmt.min_subnormal / 2), np.float32(np.inf))
            probes[3] = fmt.min_normal
            down = lp.round_to_format(probes, fmt, "toward_zero", implementation="op").numpy()
            near = lp.round_to_format(probes, fmt, implementation="op").numpy()
            assert down[0] == np.float32(fmt.max_value), fmt
            if fmt.max_value > 0:
                assert near[1] == near[2] == np.float32(fmt.min_subnormal), fmt
            if fmt.max_value >= fmt.min_normal:  # not for e=1 IEEE: code 1 is Inf/NaN
                assert near[3] == np.float32(fmt.min_normal), fmt


# ----------------------------------------------------------------------------
# repr, equality, hashing, config round trips.


def test_float_format_repr():
    assert repr(lp.BF16) == "FloatFormat(8, 7, name='bf16')"
    assert repr(FloatFormat(5, 10)) == "FloatFormat(5, 10)"
    assert repr(lp.E4M3) == (
        "FloatFormat(4, 3, infinities=False, nan='all_ones', overflow='saturate', name='e4m3')"
    )
    assert repr(lp.BF16_INTEL) == (
        "FloatFormat(8, 7, subnormals=False, input_denormals='flush', name='bf16_intel')"
    )
    assert "exponent_bias=11" in repr(lp.HFP8_FORWARD)
    # repr evaluates back to an equal format.
    for fmt in formats.PRESETS.values():
        assert eval(repr(fmt), {"FloatFormat": FloatFormat, "DfpFormat": DfpFormat,
                           "BlockFormat": lp.BlockFormat}) == fmt


def test_dfp_format_repr():
    assert repr(lp.DFP16) == "DfpFormat(bits=16, name='dfp16')"
    assert repr(DfpFormat(8, block_size=32, axis=0, extra_shift=2)) == (
        "DfpFormat(bits=8, block_size=32, axis=0, extra_shift=2)"
    )


def test_equality_and_hash_ignore_name():
    assert FloatFormat(5, 10) == lp.FP16
    assert hash(FloatFormat(5, 10)) == hash(lp.FP16)
    assert FloatFormat(5, 10, name="half") == lp.FP16
    assert FloatFormat(8, 7) != lp.BF16_INTEL
    assert FloatFormat(4, 3, infinities=False, nan="all_ones") != lp.E4M3.replace(overflow="nan")
    assert lp.E4M3 != lp.E4M3FNUZ
    assert lp.FP16 != "fp16"
    assert len({lp.BF16, FloatFormat(8, 7), lp.BF16_INTEL, lp.FP16}) == 3
    # DFP: the axis only matters for blocked formats.
    assert DfpFormat(16, axis=0) == DfpFormat(16, axis=1) == lp.DFP16
    assert DfpFormat(16, block_size=8, axis=0) != DfpFormat(16, block_size=8, axis=1)
    assert hash(DfpFormat(16, axis=0)) == hash(lp.DFP16)
    assert lp.DFP16 != FloatFormat(5, 10)


@pytest.mark.parametrize("fmt", list(formats.PRESETS.values())
                         + [DfpFormat(8, block_size=4, axis=0, extra_shift=3),
                            FloatFormat(6, 9, exponent_bias=40, subnormals=False)],
                         ids=repr)
def test_config_round_trips(fmt):
    config = fmt.get_config()
    assert json.loads(json.dumps(config)) == config
    again = type(fmt).from_config(config)
    assert again == fmt and again.name == fmt.name
    serialized = formats.serialize(fmt)
    restored = formats.get(json.loads(json.dumps(serialized)))
    assert restored == fmt and type(restored) is type(fmt)
    assert formats.get(config) == fmt  # plain config dicts work too
    assert formats.get(fmt) is fmt


def test_get_presets_and_replace():
    for name, fmt in formats.PRESETS.items():
        assert formats.get(name) is fmt
        assert fmt.name == name
    assert lp.BF16.replace(subnormals=False, input_denormals="flush") == lp.BF16_INTEL
    assert lp.BF16.replace(subnormals=False).name is None
    assert lp.DFP16.replace(block_size=32).block_size == 32
    assert lp.BF16.subnormals  # replace returns a copy


@pytest.mark.parametrize("identifier,match", [
    ("bf17", "unknown format 'bf17'; presets: bf16"),
    (42, "cannot interpret 42 as a number format"),
    ({"class_name": "IntFormat", "config": {}}, "unknown format class 'IntFormat'"),
    ({"foo": 1}, "cannot interpret"),
])
def test_get_rejects_unknown(identifier, match):
    with pytest.raises(ValueError, match=match):
        formats.get(identifier)


# ----------------------------------------------------------------------------
# Invalid arguments: ValueError naming the argument.


@pytest.mark.parametrize("kwargs,argument", [
    ({"exponent_bits": 0, "mantissa_bits": 3}, "exponent_bits"),
    ({"exponent_bits": 9, "mantissa_bits": 3}, "exponent_bits"),
    ({"exponent_bits": 4.0, "mantissa_bits": 3}, "exponent_bits"),
    ({"exponent_bits": True, "mantissa_bits": 3}, "exponent_bits"),
    ({"exponent_bits": 5, "mantissa_bits": 40}, "mantissa_bits"),
    ({"exponent_bits": 5, "mantissa_bits": -1}, "mantissa_bits"),
    ({"exponent_bits": 4, "mantissa_bits": 3, "infinities": True, "nan": "all_ones"},
     "infinities"),
    ({"exponent_bits": 4, "mantissa_bits": 3, "infinities": False, "nan": "ieee"}, "nan='ieee'"),
    ({"exponent_bits": 4, "mantissa_bits": 3, "nan": "signalling"}, "nan must be one of"),
    ({"exponent_bits": 4, "mantissa_bits": 3, "infinities": False, "overflow": "infinity"},
     "overflow='infinity' needs infinities"),
    ({"exponent_bits": 4, "mantissa_bits": 3, "infinities": False, "nan": "none",
      "overflow": "nan"}, "overflow='nan' needs a NaN encoding"),
    ({"exponent_bits": 4, "mantissa_bits": 3, "overflow": "wrap"}, "overflow must be one of"),
    ({"exponent_bits": 8, "mantissa_bits": 7, "exponent_bias": 128}, "exponent_bias"),
    ({"exponent_bits": 8, "mantissa_bits": 7, "exponent_bias": 126}, "exponent_bias"),
    ({"exponent_bits": 4, "mantissa_bits": 3, "exponent_bias": -200}, "exponent_bias"),
    ({"exponent_bits": 4, "mantissa_bits": 3, "exponent_bias": 2**30}, "exponent_bias"),
    ({"exponent_bits": 4, "mantissa_bits": 3, "subnormals": 1}, "subnormals"),
    ({"exponent_bits": 4, "mantissa_bits": 3, "infinities": "yes"}, "infinities"),
    ({"exponent_bits": 4, "mantissa_bits": 3, "input_denormals": "daz"}, "input_denormals"),
    ({"exponent_bits": 4, "mantissa_bits": 3, "name": 3}, "name"),
])
def test_float_format_rejects(kwargs, argument):
    with pytest.raises(ValueError, match=argument.replace("(", r"\(")):
        FloatFormat(**kwargs)


@pytest.mark.parametrize("kwargs,argument", [
    ({"bits": 1}, "bits"),
    ({"bits": 25}, "bits"),
    ({"bits": 16.0}, "bits"),
    ({"bits": 16, "block_size": 0}, "block_size"),
    ({"bits": 16, "block_size": -4}, "block_size"),
    ({"bits": 16, "block_size": 2.5}, "block_size"),
    ({"bits": 16, "block_size": True}, "block_size"),
    ({"bits": 16, "axis": 1.0}, "axis"),
    ({"bits": 16, "extra_shift": -1}, "extra_shift"),
    ({"bits": 16, "extra_shift": 15}, "extra_shift"),
    ({"bits": 2, "extra_shift": 1}, "extra_shift"),
    ({"bits": 16, "name": 1}, "name"),
])
def test_dfp_format_rejects(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        DfpFormat(**kwargs)


def test_extreme_valid_biases():
    # Smallest normal exactly float32's, and largest value exactly float32's.
    assert FloatFormat(8, 7, exponent_bias=127).min_normal == 2.0**-126
    fmt = FloatFormat(8, 23, exponent_bias=127)
    assert fmt.max_value == float(np.finfo(np.float32).max)
    low = FloatFormat(4, 3, exponent_bias=-113)
    assert low.max_exponent == 127
    probe = tf.constant([np.float32(3.4e38)])
    assert lp.round_to_format(probe, low, "toward_zero").numpy()[0] == np.float32(low.max_value)


def test_eight_exponent_bits_without_infinities_has_no_valid_bias():
    with pytest.raises(ValueError, match="no exponent_bias makes this format fit in float32"):
        lp.FloatFormat(8, 3, infinities=False)


@pytest.mark.parametrize("fmt", [formats.BF16, formats.E4M3, formats.DFP16,
                                 formats.DfpFormat(8, block_size=4)])
def test_formats_are_immutable_values(fmt):
    import copy
    import pickle

    with pytest.raises(AttributeError, match="immutable"):
        fmt.name = "changed"
    with pytest.raises(AttributeError, match="immutable"):
        del fmt.name
    assert formats.get(fmt.name or formats.serialize(fmt)) == fmt
    for clone in (copy.deepcopy(fmt), pickle.loads(pickle.dumps(fmt))):
        assert clone == fmt and hash(clone) == hash(fmt) and clone.name == fmt.name
    assert fmt.replace(name="other") == fmt  # the name is a label: a changed copy, equal numerics


def test_every_format_kind_is_declared_once():
    from tf_lowprec.numerics import rounding

    assert set(formats.KINDS) == set(rounding.QUANTIZERS) == {"float", "dfp", "block"}
    for preset in formats.PRESETS.values():
        kind = formats.KINDS[preset.kind]
        assert isinstance(preset, kind.cls)
        assert formats.get(formats.serialize(preset)) == preset  # tagged config
        assert formats.get(preset.get_config()) == preset  # bare config, told by its key field
        assert isinstance(preset.fixed_range, bool) and isinstance(preset.integer_mantissas, bool)
        assert isinstance(preset.needs_loss_scaling, bool)
    assert formats.FP16.needs_loss_scaling and formats.E5M2.needs_loss_scaling
    assert not formats.BF16.needs_loss_scaling and not formats.DFP16.needs_loss_scaling
    with pytest.raises(ValueError, match="already registered"):
        formats.register_kind(formats.FormatKind("float", formats.FloatFormat, "exponent_bits"))
    with pytest.raises(ValueError, match="unknown format class 'MxFormat'.*BlockFormat, DfpFormat, FloatFormat"):
        formats.get({"class_name": "MxFormat", "config": {}})
