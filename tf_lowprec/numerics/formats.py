"""Number formats: the one definition every rounding path reads.

`FloatFormat` describes a binary floating-point format with a sign bit,
`exponent_bits`, `mantissa_bits` and an exponent bias; `DfpFormat` describes
dynamic fixed point (integer mantissas with one shared exponent per tensor or
per block); `BlockFormat` describes block-scaled formats (OCP MX, NVFP4):
elements of a small `FloatFormat` sharing one scale per block.  The C++
kernels receive these fields as op attributes, the pure-TensorFlow paths
(`tf_lowprec.numerics.tf_rounding`, `tf_block_scaling`) and the NumPy
reference (`tf_lowprec.numerics.reference`) read the derived quantities below.

Formats are immutable values (`replace` makes changed copies), so the
presets below can be shared.  Every kind of format (a class: float, DFP, block)
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


SCALE_KINDS = ("e8m0",)
NONFINITE_BLOCKS = ("nan", "pass_through")
_E8M0_MIN_EXPONENT = -127
_E8M0_MAX_EXPONENT = 127


class BlockFormat(_Immutable):
    """A block-scaled format: small elements sharing one scale per block.

    A tensor is cut into blocks of `block_size` consecutive elements along
    `axis` (the last block of a row may be shorter).  Each block has one
    scale X; each element is stored as a value P of the `element` format and
    stands for P * X.  This is the OCP Microscaling (MX) v1.0 layout (MXFP8,
    MXFP6, MXFP4, MXINT8: 32 elements, a power-of-two E8M0 scale) and
    NVIDIA's NVFP4 (16 E2M1 elements, an E4M3 scale, and one FP32 scale per
    tensor).  The conversion from float32, step by step in float32
    arithmetic, is in docs/block_formats.md; in short:

    * `scale_format="e8m0"` (MX): X = 2^s with
      s = floor(log2(amax)) - emax_elem, clamped to E8M0's -127..127, where
      amax is the block's largest magnitude and emax_elem the exponent of the
      element format's largest normal (`element.max_exponent`).  Elements are
      `element`-rounded x / X; values beyond the element's largest normal
      saturate ("clamped", as the MX specification says).
    * a `FloatFormat` scale (NVFP4: E4M3): the block's decode scale
      amax / element.max_value, times the tensor's encode scale when
      `tensor_scale` (element.max_value * scale_format.max_value / the
      tensor's amax), rounded to nearest even in `scale_format`.

    Blocks with no non-zero element stay zero.  NaN and Inf: with
    `nonfinite_blocks="nan"` (the default: a NaN scale, what the MX
    reference implementation does) a block holding a NaN or ±Inf becomes
    all NaN; with "pass_through" those elements keep their value and take no
    part in the scale.  Elements are rounded with the rounding mode of the
    call (`lp.quantize`): nearest even, stochastic or toward zero.

    Args:
      element: the `FloatFormat` of the elements (a preset name works).
        It must saturate (`overflow="saturate"`) and its smallest value
        must be at least 2^-22, so that every P * X is a float32 exactly.
      block_size: elements per block, >= 1 (32 for MX, 16 for NVFP4).
      scale_format: "e8m0" (power-of-two scales 2^-127..2^127) or a
        `FloatFormat` that saturates (E4M3 for NVFP4).
      tensor_scale: a second, per-tensor FP32 scale (NVFP4); float
        `scale_format` only.
      axis: the axis the blocks run along, -1 by default.  Inside a
        policy, blocks run along each GEMM's reduction axis instead.
      nonfinite_blocks: "nan" or "pass_through" (above).
      name: optional short name.

    >>> import tf_lowprec as lp
    >>> lp.MXFP8_E4M3
    BlockFormat(element='e4m3', block_size=32, name='mxfp8_e4m3')
    >>> lp.NVFP4.element.max_value, lp.NVFP4.scale_format.max_value
    (6.0, 448.0)
    """

    def __init__(self, element, block_size, *, scale_format="e8m0", tensor_scale=False,
                 axis=-1, nonfinite_blocks="nan", name=None):
        element = _element_format(element, "element")
        if element.overflow != "saturate":
            raise ValueError(
                f"element must saturate (overflow='saturate': MX clamps values beyond the "
                f"largest normal), got overflow={element.overflow!r}; use "
                f"element.replace(overflow='saturate')")
        if element.min_subnormal < 2.0**-22:
            raise ValueError(
                f"element's smallest value must be at least 2^-22 (so that every element "
                f"times the smallest scale is a float32), got {element.min_subnormal!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        if isinstance(scale_format, str) and scale_format in SCALE_KINDS:
            pass
        else:
            try:
                scale_format = _element_format(scale_format, "scale_format")
            except ValueError:
                raise ValueError(
                    f"scale_format must be 'e8m0' or a FloatFormat (e.g. lp.E4M3), got "
                    f"{scale_format!r}") from None
            if scale_format.overflow != "saturate":
                raise ValueError(
                    f"scale_format must saturate (overflow='saturate'), got "
                    f"overflow={scale_format.overflow!r}")
        if not isinstance(tensor_scale, bool):
            raise ValueError(f"tensor_scale must be True or False, got {tensor_scale!r}")
        if tensor_scale and scale_format == "e8m0":
            raise ValueError("tensor_scale=True needs a FloatFormat scale_format (a power-of-two "
                             "E8M0 scale already spans float32's range)")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis must be an int, got {axis!r}")
        _check_choice("nonfinite_blocks", nonfinite_blocks, NONFINITE_BLOCKS)
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name must be a string or None, got {name!r}")
        self._set(element=element, block_size=block_size, scale_format=scale_format,
                  tensor_scale=tensor_scale, axis=axis, nonfinite_blocks=nonfinite_blocks,
                  name=name)

    # What the package asks of a kind of format: the scales follow the data
    # (no fixed largest value, no loss scale needed), the elements are floats.
    kind = "block"
    fixed_range = False
    integer_mantissas = False
    needs_loss_scaling = False

    @property
    def power_of_two_scales(self):
        """Whether the scales are powers of two (E8M0, MX)."""
        return self.scale_format == "e8m0"

    @property
    def element_emax(self):
        """emax_elem of the MX specification: the exponent of the element's largest normal."""
        return self.element.max_exponent

    @property
    def bits_per_element(self):
        """Storage per element, the block's scale shared out (8 / 32 = 0.25 bit for MX)."""
        scale_bits = 8 if self.power_of_two_scales else self.scale_format.bits
        return self.element.bits + scale_bits / self.block_size

    def get_config(self):
        return {
            "element": _format_config(self.element),
            "block_size": self.block_size,
            "scale_format": (self.scale_format if self.power_of_two_scales
                             else _format_config(self.scale_format)),
            "tensor_scale": self.tensor_scale,
            "axis": self.axis,
            "nonfinite_blocks": self.nonfinite_blocks,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(config.pop("element"), config.pop("block_size"), **config)

    def replace(self, **changes):
        """Returns a copy with some fields changed, e.g. `MXFP8_E4M3.replace(block_size=16)`."""
        config = self.get_config()
        if "name" not in changes:
            config["name"] = None
        config.update(changes)
        return BlockFormat.from_config(config)

    def _key(self):
        return (self.element, self.block_size, self.scale_format, self.tensor_scale,
                self.axis, self.nonfinite_blocks)

    def __eq__(self, other):
        return isinstance(other, BlockFormat) and self._key() == other._key()

    def __hash__(self):
        return hash(("BlockFormat", self._key()))

    def __repr__(self):
        parts = [f"element={_format_label(self.element)}", f"block_size={self.block_size}"]
        if not self.power_of_two_scales:
            parts.append(f"scale_format={_format_label(self.scale_format)}")
        if self.tensor_scale:
            parts.append("tensor_scale=True")
        if self.axis != -1:
            parts.append(f"axis={self.axis}")
        if self.nonfinite_blocks != "nan":
            parts.append(f"nonfinite_blocks={self.nonfinite_blocks!r}")
        if self.name:
            parts.append(f"name={self.name!r}")
        return f"BlockFormat({', '.join(parts)})"


def _element_format(value, name):
    """A FloatFormat from a FloatFormat, a float preset name or a config."""
    fmt = get(value)
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"{name} must be a FloatFormat, got {fmt!r}")
    return fmt


def _format_config(fmt):
    """A preset's name, else the format's serialized config."""
    if fmt.name in PRESETS and PRESETS[fmt.name] == fmt:
        return fmt.name
    return serialize(fmt)


def _format_label(fmt):
    return repr(fmt.name) if fmt.name in PRESETS and PRESETS[fmt.name] == fmt else repr(fmt)


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
register_kind(FormatKind("block", BlockFormat, "element"))


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
# Element formats of OCP MX v1.0 (no Inf, no NaN; ml_dtypes' float6_e2m3fn,
# float6_e3m2fn, float4_e2m1fn).  MXINT8's elements are 8-bit two's
# complement integers times 2^-6: the uniform grid k/64, |k| <= 127, which
# is exactly a float format with one exponent bit (code 0: 0.f * 2^0, code
# 1: 1.f * 2^0) and six fraction bits.
E2M3 = FloatFormat(2, 3, exponent_bias=1, infinities=False, nan="none", overflow="saturate",
                   name="e2m3")
E3M2 = FloatFormat(3, 2, exponent_bias=3, infinities=False, nan="none", overflow="saturate",
                   name="e3m2")
E2M1 = FloatFormat(2, 1, exponent_bias=1, infinities=False, nan="none", overflow="saturate",
                   name="e2m1")
INT8_MX = FloatFormat(1, 6, exponent_bias=1, infinities=False, nan="none", overflow="saturate",
                      name="int8_mx")
# MX elements saturate: E5M2 keeps its Inf code, but MX clamps overflows.
E5M2_SATURATING = E5M2.replace(overflow="saturate", name="e5m2_saturating")

PRESETS = {
    f.name: f
    for f in (FP32, BF16, FP16, E4M3, E5M2, HFP8_FORWARD, HFP8_BACKWARD, E4M3FNUZ, E5M2FNUZ,
              BF16_INTEL, DFP16, E2M3, E3M2, E2M1, INT8_MX, E5M2_SATURATING)
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
        f"DfpFormat, a BlockFormat, a preset name ({', '.join(sorted(PRESETS))}) or a config dict"
    )


def serialize(fmt):
    """Returns a JSON-able dict that `get` turns back into `fmt`."""
    return {"class_name": type(fmt).__name__, "config": fmt.get_config()}


# Block-scaled presets: OCP MX v1.0 (32 elements, E8M0 scales) and NVIDIA's
# NVFP4 (16 E2M1 elements, E4M3 scales, an FP32 scale per tensor).
MXFP8_E4M3 = BlockFormat(E4M3, 32, name="mxfp8_e4m3")
MXFP8_E5M2 = BlockFormat(E5M2_SATURATING, 32, name="mxfp8_e5m2")
MXFP6_E2M3 = BlockFormat(E2M3, 32, name="mxfp6_e2m3")
MXFP6_E3M2 = BlockFormat(E3M2, 32, name="mxfp6_e3m2")
MXFP4_E2M1 = BlockFormat(E2M1, 32, name="mxfp4_e2m1")
MXINT8 = BlockFormat(INT8_MX, 32, name="mxint8")
NVFP4 = BlockFormat(E2M1, 16, scale_format=E4M3, tensor_scale=True, name="nvfp4")
PRESETS.update({f.name: f for f in (MXFP8_E4M3, MXFP8_E5M2, MXFP6_E2M3, MXFP6_E3M2, MXFP4_E2M1,
                                    MXINT8, NVFP4)})
