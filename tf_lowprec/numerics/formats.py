"""Number formats: the one definition every rounding path reads.

`FloatFormat` describes a binary floating-point format with a sign bit,
`exponent_bits`, `mantissa_bits` and an exponent bias; `DfpFormat` describes
dynamic fixed point (integer mantissas with one shared exponent per tensor or
per block).  The C++ kernels receive these fields as op attributes, the
pure-TensorFlow path (`tf_lowprec.numerics.tf_rounding`) and the NumPy reference
(`tf_lowprec.numerics.reference`) read the derived quantities below.

Formats are immutable values (`replace` makes changed copies), so the
presets below can be shared.  Every kind of format (a class: float, DFP)
declares here what the rest of the package asks of it, as class attributes
and properties: `kind`, `fixed_range` (a largest finite value and a smallest
normal: overflow and subnormal statistics, per-layer loss scales),
`integer_mantissas` (integer GEMMs) and `needs_loss_scaling`; `register_kind`
makes its configs loadable by `get`.  Its rounding is the kind's entry in
`tf_lowprec.numerics.rounding.QUANTIZERS`.  See docs/architecture.md.

Example:

>>> import tf_lowprec as lp
>>> lp.E4M3.max_value
448.0
>>> lp.FloatFormat(5, 10) == lp.FP16
True
>>> lp.FloatFormat(4, 3, exponent_bias=11, infinities=False, nan="negative_zero").max_value
30.0
"""

import dataclasses
import math

ROUNDING_MODES = ("nearest_even", "stochastic", "toward_zero")
NAN_ENCODINGS = ("ieee", "all_ones", "negative_zero", "none")
OVERFLOW_MODES = ("saturate", "infinity", "nan")
INPUT_DENORMALS = ("keep", "flush")

_FLOAT32_MIN_EXPONENT = -126
_FLOAT32_MAX_EXPONENT = 127


def _check_int(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def check_rounding(rounding, name="rounding"):
    """Raises ValueError unless `rounding` is a supported rounding mode."""
    _check_choice(name, rounding, ROUNDING_MODES)


class _Immutable:
    """Attributes are set once, in `__init__` (through `_set`)."""

    def _set(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(
            f"{type(self).__name__} is immutable (presets are shared); "
            f"use .replace({name}=...) for a changed copy"
        )

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable")


class FloatFormat(_Immutable):
    """A binary floating-point format, emulated on float32.

    Values are `(-1)^s * 2^(e - bias) * 1.m` for exponent codes `e >= 1` and
    `(-1)^s * 2^(1 - bias) * 0.m` for `e == 0` (subnormals, when enabled).

    Args:
      exponent_bits: 1..8.
      mantissa_bits: explicit fraction bits, 0..23.
      exponent_bias: defaults to the IEEE bias `2^(exponent_bits-1) - 1`.
        Every value of the format must be a float32: the bias must keep the
        smallest normal at or above 2^-126 and the largest value finite.
      subnormals: whether exponent code 0 holds subnormals.  When False,
        results are rounded as if subnormals existed and then flushed to
        (signed) zero if below the smallest normal ("flush after rounding").
      infinities: whether the format has ±Inf.  True means IEEE-style: the top
        exponent code is reserved for Inf and NaN.
      nan: how NaN is encoded; "ieee" (needs infinities=True), "all_ones"
        (only S.1..1.1..1 is NaN: OCP "fn" formats such as E4M3),
        "negative_zero" (the -0 code is NaN, so the format has no -0:
        "fnuz" formats) or "none" (every code is a number).  Defaults to
        "ieee" with infinities, else "all_ones".  Whatever the encoding, a NaN
        input stays NaN in the float32 output (with its sign).
      overflow: what finite values beyond the largest finite value become:
        "infinity" (needs infinities), "saturate" (the largest finite value,
        with sign), or "nan" (needs a NaN encoding).  Defaults to "infinity"
        for formats with infinities, else "saturate".  Inf inputs stay Inf
        in formats with infinities and otherwise follow this mode.
        toward_zero rounding always saturates finite values (IEEE 754).
      input_denormals: "keep" rounds float32 subnormal inputs like any value
        (what `tf.cast` to bfloat16 does); "flush" treats them as signed zero
        first (what Intel's VCVTNEPS2BF16 instruction does).
      name: optional short name used in `repr` and the CLI.
    """

    def __init__(
        self,
        exponent_bits,
        mantissa_bits,
        exponent_bias=None,
        *,
        subnormals=True,
        infinities=True,
        nan=None,
        overflow=None,
        input_denormals="keep",
        name=None,
    ):
        _check_int("exponent_bits", exponent_bits, 1, 8)
        _check_int("mantissa_bits", mantissa_bits, 0, 23)
        if exponent_bias is None:
            exponent_bias = 2 ** (exponent_bits - 1) - 1
        _check_int("exponent_bias", exponent_bias, -(2**20), 2**20)
        if not isinstance(subnormals, bool):
            raise ValueError(f"subnormals must be True or False, got {subnormals!r}")
        if not isinstance(infinities, bool):
            raise ValueError(f"infinities must be True or False, got {infinities!r}")
        if nan is None:
            nan = "ieee" if infinities else "all_ones"
        _check_choice("nan", nan, NAN_ENCODINGS)
        if infinities != (nan == "ieee"):
            raise ValueError(
                "nan='ieee' goes with infinities=True and the other nan encodings with "
                f"infinities=False; got infinities={infinities}, nan={nan!r}"
            )
        if overflow is None:
            overflow = "infinity" if infinities else "saturate"
        _check_choice("overflow", overflow, OVERFLOW_MODES)
        if overflow == "infinity" and not infinities:
            raise ValueError("overflow='infinity' needs infinities=True; use 'saturate' or 'nan'")
        if overflow == "nan" and nan == "none":
            raise ValueError("overflow='nan' needs a NaN encoding (nan != 'none'); use 'saturate'")
        _check_choice("input_denormals", input_denormals, INPUT_DENORMALS)
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name must be a string or None, got {name!r}")

        self._set(exponent_bits=exponent_bits, mantissa_bits=mantissa_bits,
                  exponent_bias=exponent_bias, subnormals=subnormals, infinities=infinities,
                  nan=nan, overflow=overflow, input_denormals=input_denormals, name=name)

        # Every value must be a float32: bias <= 127 keeps the smallest normal
        # at or above 2^-126; the largest value needs bias >= lowest_bias.
        lowest_bias = self.exponent_bias + self.max_exponent - _FLOAT32_MAX_EXPONENT
        if lowest_bias > 1 - _FLOAT32_MIN_EXPONENT:
            raise ValueError(
                f"no exponent_bias makes this format fit in float32: with "
                f"exponent_bits={exponent_bits} and infinities={infinities}, the largest "
                f"value needs exponent_bias >= {lowest_bias} but the smallest normal needs "
                "exponent_bias <= 127 (use infinities=True, which reserves the top exponent)"
            )
        if self.min_exponent < _FLOAT32_MIN_EXPONENT:
            raise ValueError(
                f"exponent_bias={exponent_bias} puts the smallest normal at "
                f"2^{self.min_exponent}, below float32's 2^-126: exponent_bias must be "
                "at most 127"
            )
        if self.max_exponent > _FLOAT32_MAX_EXPONENT:
            raise ValueError(
                f"exponent_bias={exponent_bias} puts the largest value near "
                f"2^{self.max_exponent}, beyond float32's range: exponent_bias must be at "
                f"least {lowest_bias}"
            )

    # What the package asks of a kind of format.
    kind = "float"
    fixed_range = True
    integer_mantissas = False

    @property
    def needs_loss_scaling(self):
        """Whether errors in this format underflow without loss scaling (FP16's range or less)."""
        return self.exponent_bits <= 5

    # Derived quantities (the C++ twin is DeriveFloatGrid in number_formats.h).

    @property
    def bits(self):
        """Storage width: sign + exponent + mantissa bits."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def min_exponent(self):
        """Exponent of the smallest normal value, 1 - bias."""
        return 1 - self.exponent_bias

    @property
    def _top_code_and_mantissa(self):
        top_code = 2**self.exponent_bits - 1
        top_mantissa = 2**self.mantissa_bits - 1
        if self.nan == "ieee":
            top_code -= 1
        elif self.nan == "all_ones":
            if self.mantissa_bits == 0:
                top_code -= 1
            else:
                top_mantissa -= 1
        return top_code, top_mantissa

    @property
    def max_exponent(self):
        """Exponent of the largest finite value."""
        top_code, _ = self._top_code_and_mantissa
        return max(top_code, 1) - self.exponent_bias

    @property
    def max_value(self):
        """Largest finite value (0.0 for a format with no finite non-zero value)."""
        top_code, top_mantissa = self._top_code_and_mantissa
        m = self.mantissa_bits
        if top_code >= 1:
            return math.ldexp(2**m + top_mantissa, top_code - self.exponent_bias - m)
        if not self.subnormals:
            return 0.0
        return math.ldexp(top_mantissa, self.min_exponent - m)

    @property
    def min_normal(self):
        """Smallest positive normal value, 2^min_exponent."""
        return math.ldexp(1.0, self.min_exponent)

    @property
    def min_subnormal(self):
        """Smallest positive value (the smallest normal when subnormals are off)."""
        if not self.subnormals:
            return self.min_normal
        return math.ldexp(1.0, self.min_exponent - self.mantissa_bits)

    @property
    def epsilon(self):
        """Distance from 1.0 to the next larger value, 2^-mantissa_bits."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def negative_zero(self):
        """Whether -0 exists (it does not in "fnuz" formats)."""
        return self.nan != "negative_zero"

    # Serialization.

    def get_config(self):
        return {
            "exponent_bits": self.exponent_bits,
            "mantissa_bits": self.mantissa_bits,
            "exponent_bias": self.exponent_bias,
            "subnormals": self.subnormals,
            "infinities": self.infinities,
            "nan": self.nan,
            "overflow": self.overflow,
            "input_denormals": self.input_denormals,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        exponent_bits = config.pop("exponent_bits")
        mantissa_bits = config.pop("mantissa_bits")
        return cls(exponent_bits, mantissa_bits, **config)

    def replace(self, **changes):
        """Returns a copy with some fields changed, e.g. `BF16.replace(subnormals=False)`."""
        config = self.get_config()
        if "name" not in changes:
            config["name"] = None
        config.update(changes)
        return FloatFormat.from_config(config)

    def _key(self):
        config = self.get_config()
        del config["name"]  # the name is a label, not part of the numerics
        return tuple(sorted(config.items()))

    def __eq__(self, other):
        return isinstance(other, FloatFormat) and self._key() == other._key()

    def __hash__(self):
        return hash(("FloatFormat", self._key()))

    def __repr__(self):
        defaults = FloatFormat(self.exponent_bits, self.mantissa_bits)
        parts = [str(self.exponent_bits), str(self.mantissa_bits)]
        for key, value in self.get_config().items():
            if key in ("exponent_bits", "mantissa_bits", "name"):
                continue
            if value != getattr(defaults, key):
                parts.append(f"{key}={value!r}")
        if self.name:
            parts.append(f"name={self.name!r}")
        return f"FloatFormat({', '.join(parts)})"


class DfpFormat(_Immutable):
    """Dynamic fixed point: integer mantissas with a shared power-of-two exponent.

    A block of values x is stored as integers I with |I| <= 2^(bits-1) - 1 and
    one exponent E, x ~ I * 2^E (Das et al. 2018; Intel's libxsmm DFP16).  The
    shared exponent of a block with largest finite magnitude M is

        E = floor(log2 M) - (bits - 2) + extra_shift

    so that the largest mantissa M / 2^E lies in [2^(bits-2), 2^(bits-1)) for
    extra_shift = 0; when M > (2^(bits-1) - 1) * 2^E (rounding could carry it
    to 2^(bits-1)), E is raised by one.  The exponent depends only on the
    data, never on the rounding mode, and no mantissa can overflow.

    NaN and ±Inf elements pass through unchanged and do not take part in the
    exponent; a block with no finite non-zero element is left as it is.

    Args:
      bits: mantissa width including the sign, 2..24 (16 for DFP16).
      block_size: None for one exponent per tensor; a positive int for
        blocks of that many consecutive elements along `axis` (the last block
        of a row may be shorter).
      axis: the axis blocks run along (ignored for per-tensor exponents).
      extra_shift: extra right shift of every mantissa, 0..bits-2: headroom
        that the INT16 GEMM may trade for longer INT32 accumulation chains.
      name: optional short name.

    >>> import tf_lowprec as lp
    >>> lp.DFP16
    DfpFormat(bits=16, name='dfp16')
    >>> lp.DfpFormat(16, block_size=32).block_size
    32
    """

    def __init__(self, bits=16, *, block_size=None, axis=-1, extra_shift=0, name=None):
        _check_int("bits", bits, 2, 24)
        if block_size is not None:
            if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
                raise ValueError(
                    f"block_size must be None (one exponent per tensor) or a positive int, "
                    f"got {block_size!r}"
                )
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis must be an int, got {axis!r}")
        _check_int("extra_shift", extra_shift, 0, bits - 2)
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name must be a string or None, got {name!r}")
        self._set(bits=bits, block_size=block_size, axis=axis, extra_shift=extra_shift,
                  name=name)

    # What the package asks of a kind of format: the exponent follows the
    # data, so nothing overflows or needs a loss scale.
    kind = "dfp"
    fixed_range = False
    integer_mantissas = True
    needs_loss_scaling = False

    @property
    def max_mantissa(self):
        """Largest mantissa magnitude, 2^(bits-1) - 1."""
        return 2 ** (self.bits - 1) - 1

    def get_config(self):
        return {
            "bits": self.bits,
            "block_size": self.block_size,
            "axis": self.axis,
            "extra_shift": self.extra_shift,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(config.pop("bits"), **config)

    def replace(self, **changes):
        config = self.get_config()
        if "name" not in changes:
            config["name"] = None
        config.update(changes)
        return DfpFormat.from_config(config)

    def _key(self):
        axis = self.axis if self.block_size is not None else None
        return (self.bits, self.block_size, axis, self.extra_shift)

    def __eq__(self, other):
        return isinstance(other, DfpFormat) and self._key() == other._key()

    def __hash__(self):
        return hash(("DfpFormat", self._key()))

    def __repr__(self):
        parts = [f"bits={self.bits}"]
        if self.block_size is not None:
            parts += [f"block_size={self.block_size}", f"axis={self.axis}"]
        if self.extra_shift:
            parts.append(f"extra_shift={self.extra_shift}")
        if self.name:
            parts.append(f"name={self.name!r}")
        return f"DfpFormat({', '.join(parts)})"


@dataclasses.dataclass(frozen=True)
class FormatKind:
    """A kind of number format: its class, and the field that marks its bare configs."""

    name: str
    cls: type
    config_key: str


KINDS = {}


def register_kind(kind):
    """Makes the formats of `kind` (a `FormatKind`) known to `get` and `serialize`."""
    if kind.name in KINDS:
        raise ValueError(f"format kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


register_kind(FormatKind("float", FloatFormat, "exponent_bits"))
register_kind(FormatKind("dfp", DfpFormat, "bits"))


# Presets.  Each follows the format's standard or paper; see docs/formats.md.
FP32 = FloatFormat(8, 23, name="fp32")
BF16 = FloatFormat(8, 7, name="bf16")
FP16 = FloatFormat(5, 10, name="fp16")
# OCP FP8 E4M3 ("e4m3fn"): no infinities, NaN = S.1111.111, max 448.  Training
# recipes saturate on overflow (Keras' float8, Transformer Engine).
E4M3 = FloatFormat(4, 3, infinities=False, nan="all_ones", overflow="saturate", name="e4m3")
# OCP FP8 E5M2: IEEE-like, max 57344; overflow gives Inf so that loss scaling
# sees it.
E5M2 = FloatFormat(5, 2, name="e5m2")
# HFP8 (Sun et al. 2019): forward 1-4-3 with exponent bias 11 (range 2^-13 ..
# 30), encoded like ml_dtypes' float8_e4m3b11fnuz, whose definition cites the
# paper for this bias; backward 1-5-2 (E5M2).  See docs/formats.md.
HFP8_FORWARD = FloatFormat(
    4, 3, exponent_bias=11, infinities=False, nan="negative_zero", overflow="saturate",
    name="hfp8_forward",
)
HFP8_BACKWARD = FloatFormat(5, 2, name="hfp8_backward")
# Variants of FP8 that other hardware uses (ml_dtypes names).
E4M3FNUZ = FloatFormat(4, 3, exponent_bias=8, infinities=False, nan="negative_zero",
                       overflow="saturate", name="e4m3fnuz")
E5M2FNUZ = FloatFormat(5, 2, exponent_bias=16, infinities=False, nan="negative_zero",
                       overflow="saturate", name="e5m2fnuz")
# Intel's BF16 conversion instruction (VCVTNEPS2BF16): denormal inputs are
# treated as zero and denormal outputs flushed.
BF16_INTEL = FloatFormat(8, 7, subnormals=False, input_denormals="flush", name="bf16_intel")
DFP16 = DfpFormat(16, name="dfp16")

PRESETS = {
    f.name: f
    for f in (FP32, BF16, FP16, E4M3, E5M2, HFP8_FORWARD, HFP8_BACKWARD, E4M3FNUZ, E5M2FNUZ,
              BF16_INTEL, DFP16)
}


def get(identifier):
    """Returns a format from a preset name, a config dict or a format.

    >>> import tf_lowprec as lp
    >>> lp.formats.get("bf16") is lp.BF16
    True
    """
    if isinstance(identifier, tuple(kind.cls for kind in KINDS.values())):
        return identifier
    if isinstance(identifier, str):
        if identifier not in PRESETS:
            raise ValueError(
                f"unknown format {identifier!r}; presets: {', '.join(sorted(PRESETS))}"
            )
        return PRESETS[identifier]
    if isinstance(identifier, dict):
        if "class_name" in identifier:
            classes = {kind.cls.__name__: kind.cls for kind in KINDS.values()}
            cls = classes.get(identifier["class_name"])
            if cls is None:
                raise ValueError(f"unknown format class {identifier['class_name']!r}; "
                                 f"known: {', '.join(sorted(classes))}")
            return cls.from_config(identifier["config"])
        for kind in KINDS.values():  # a bare config, told apart by its key field
            if kind.config_key in identifier:
                return kind.cls.from_config(identifier)
    raise ValueError(
        f"cannot interpret {identifier!r} as a number format: pass a FloatFormat, a "
        f"DfpFormat, a preset name ({', '.join(sorted(PRESETS))}) or a config dict"
    )


def serialize(fmt):
    """Returns a JSON-able dict that `get` turns back into `fmt`."""
    return {"class_name": type(fmt).__name__, "config": fmt.get_config()}
