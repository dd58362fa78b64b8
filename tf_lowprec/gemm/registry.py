"""The accumulators a `PrecisionSpec` can name, each declared once with its GEMMs.

An accumulator says how the products of a policy's rounded operands are
summed.  "fp32" leaves that to TensorFlow's FP32 ops; the others have GEMM
kernels of their own in this package, and constrain the operand formats:

- "int32": INT16 x INT16 -> INT32 dynamic-fixed-point GEMM and convolutions
  (`tf_lowprec.gemm.dfp`, docs/dfp_gemm.md);
- "bf16_dot": FP32 accumulation in the fixed order of the AVX512_BF16
  instruction VDPBF16PS (`tf_lowprec.gemm.bf16`, docs/bf16_gemm.md);
- an `lp.Accumulator(format, chunk_size, rounding)` object: sums rounded
  to a float format at every addition, optionally in chunks
  (`tf_lowprec.gemm.accumulation`, docs/accumulation.md).  Its entry is
  made on demand by `get` (any operand formats).

A new kernel is one `register(Accumulator(...))` here (and its module);
`PrecisionSpec` validates against the entry, the emulation runs its
`matmul` / `conv2d`.

>>> from tf_lowprec.gemm import registry
>>> sorted(registry.ACCUMULATORS)
['bf16_dot', 'fp32', 'int32']
>>> registry.get("int32").operand_roles
('activations', 'weights')
"""

import dataclasses
import functools
import typing

from tf_lowprec.gemm import accumulation as accumulation_gemm
from tf_lowprec.gemm import bf16 as bf16_gemm
from tf_lowprec.gemm import dfp as dfp_gemm
from tf_lowprec.numerics import formats as formats_lib


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """One accumulator: its GEMM kernels and the operand formats they accept.

    Attributes:
      name: what `PrecisionSpec(accumulator=...)` says.
      matmul: `matmul(a, b, *, implementation)` on the rounded operands, or
        None (TensorFlow's FP32 op multiplies them).
      conv2d: `conv2d(x, filters, *, strides, padding, dilations,
        implementation)` (NHWC), or None; called with `groups=` too for a
        grouped or depthwise convolution (filters [kh, kw, C / groups, O]).
      conv3d: the same for NDHWC 3-D convolutions (filters [kd, kh, kw,
        C / groups, O]), or None.
      conv_transpose: `conv_transpose(x, filters, output_shape, *, strides,
        padding, dilations, implementation)`, channels last with 1 to 3
        spatial axes (filters [*k, O, C], as `tf.nn.conv_transpose`), or None.
      batched_matmul: whether `matmul` broadcasts [..., k] @ [k, n]; if not,
        only 2-D products run on it.
      stochastic: whether `matmul` and `conv2d` round randomly and take a
        `seed` (an int64[2] stateless seed; the emulation passes one derived
        from the layer call, so the sums are reproducible from the Keras seed).
      quantizing_kernels: whether `matmul` and `conv2d` also take `fmt`,
        `rounding` and `backward_rounding` and quantize their operands (and,
        in the gradient, the error) themselves, with straight-through
        gradients: the emulation then hands them the unrounded operands
        where that gives the same bits (`LayerContext.kernel_format`).
      operand_roles: roles that must have a format `operand_format` accepts.
      operand_format: predicate on a format object.
      requirement: the error message when a spec breaks the constraint.
    """

    name: str
    matmul: typing.Optional[typing.Callable] = None
    conv2d: typing.Optional[typing.Callable] = None
    conv3d: typing.Optional[typing.Callable] = None
    conv_transpose: typing.Optional[typing.Callable] = None
    batched_matmul: bool = False
    stochastic: bool = False
    quantizing_kernels: bool = False
    operand_roles: tuple = ()
    operand_format: typing.Optional[typing.Callable] = None
    requirement: str = ""

    def check(self, role_formats):
        """Raises ValueError unless every operand role has an accepted format.

        `role_formats` maps a role to its format object, or None (FP32).
        """
        for role in self.operand_roles:
            fmt = role_formats.get(role)
            if fmt is None or not self.operand_format(fmt):
                raise ValueError(self.requirement)


ACCUMULATORS = {}


def register(accumulator):
    """Adds an `Accumulator` (its name must be new)."""
    if accumulator.name in ACCUMULATORS:
        raise ValueError(f"accumulator {accumulator.name!r} is already registered")
    ACCUMULATORS[accumulator.name] = accumulator
    return accumulator


@functools.lru_cache(maxsize=None)
def _float_accumulator(accumulator):
    """The entry of an `lp.Accumulator`: `lp.matmul` / conv2d with it bound."""
    return Accumulator(
        accumulator.name,
        matmul=functools.partial(accumulation_gemm.matmul, accumulator=accumulator),
        conv2d=functools.partial(accumulation_gemm.conv2d, accumulator=accumulator),
        conv3d=functools.partial(accumulation_gemm.conv3d, accumulator=accumulator),
        conv_transpose=functools.partial(accumulation_gemm.conv_transpose,
                                         accumulator=accumulator),
        batched_matmul=True,
        stochastic=accumulator.rounding == "stochastic",
    )


def get(name):
    """The registered `Accumulator` called `name`, or the entry of an `lp.Accumulator`."""
    if isinstance(name, accumulation_gemm.Accumulator):
        return _float_accumulator(name)
    if not isinstance(name, str) or name not in ACCUMULATORS:
        raise ValueError(
            f"accumulator must be one of {', '.join(map(repr, ACCUMULATORS))} or an "
            f"lp.Accumulator(format, chunk_size, rounding); got {name!r}"
        )
    return ACCUMULATORS[name]


register(Accumulator("fp32"))
register(Accumulator(
    "int32",
    matmul=dfp_gemm.dfp_matmul,
    conv2d=dfp_gemm.dfp_conv2d,
    conv3d=dfp_gemm.dfp_conv3d,
    conv_transpose=dfp_gemm.dfp_conv_transpose,
    batched_matmul=True,
    quantizing_kernels=True,
    operand_roles=("activations", "weights"),
    # Per-block exponents are refused: they would have to run along each GEMM's
    # reduction axis (not fmt.axis), and the convolutions have one exponent per
    # tensor (docs/dfp_gemm.md).
    operand_format=lambda fmt: (fmt.integer_mantissas and fmt.bits <= dfp_gemm.MAX_BITS
                                and getattr(fmt, "block_size", None) is None),
    requirement=("accumulator='int32' needs DfpFormat activations and weights (integer "
                 f"mantissas) of at most {dfp_gemm.MAX_BITS} bits with one exponent per "
                 "tensor (block_size=None); use accumulator='fp32' for float formats, wider "
                 "DFP and block-scaled DFP"),
))
register(Accumulator(
    "bf16_dot",
    matmul=bf16_gemm.bf16_matmul,
    conv2d=bf16_gemm.bf16_conv2d,
    conv3d=bf16_gemm.bf16_conv3d,
    conv_transpose=bf16_gemm.bf16_conv_transpose,
    batched_matmul=True,
    operand_roles=("activations", "weights", "errors"),
    operand_format=lambda fmt: fmt == formats_lib.BF16,
    requirement=("accumulator='bf16_dot' needs BF16 activations, weights and errors (the "
                 "VDPBF16PS GEMM multiplies BF16 operands); use accumulator='fp32' for "
                 "other formats"),
))
