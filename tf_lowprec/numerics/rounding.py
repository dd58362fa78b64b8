"""Public rounding functions: float formats and dynamic fixed point.

Each function validates its arguments, picks an implementation (the C++
kernel or the bit-identical pure-TensorFlow path of `tf_rounding`) and adds
the gradient: straight-through by default, or the incoming gradient rounded
to a `backward_format`.

>>> import tensorflow as tf, tf_lowprec as lp
>>> lp.round_to_format(tf.constant([1.0 + 2.0**-8, 448.0 + 16.0]), lp.BF16).numpy()
array([  1., 464.], dtype=float32)
>>> lp.round_to_format(tf.constant([1000.0]), lp.E4M3).numpy()
array([448.], dtype=float32)
"""

import functools

import tensorflow as tf

from tf_lowprec import _op_library
from tf_lowprec.numerics import formats as formats_lib
from tf_lowprec.numerics import tf_rounding

IMPLEMENTATIONS = ("auto", "op", "tf")
_ZERO_SEED = (0, 0)
# Folded into a forward seed to key the backward pass's stochastic rounding.
_BACKWARD_SALT = 0x6261636B


@functools.lru_cache(maxsize=None)
def _gpu_visible():
    return bool(tf.config.list_physical_devices("GPU"))


def _in_xla_context():
    if tf.executing_eagerly():
        return False  # eager ops are never inside an XLA cluster
    try:
        from tensorflow.python.ops import control_flow_util  # noqa: PLC0415

        return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
    except (ImportError, AttributeError):  # pragma: no cover - TF internals moved
        return False


def check_implementation(implementation):
    """Raises ValueError unless `implementation` is "auto", "op" or "tf"."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {', '.join(map(repr, IMPLEMENTATIONS))}; "
            f"got {implementation!r}"
        )


def use_kernel(implementation="auto"):
    """Whether a call with `implementation` runs the C++ kernel here.

    "op" always does (and fails clearly if the library cannot load); "tf"
    never does; "auto" does on CPU-only TensorFlow outside XLA compilation,
    and falls back to the pure-TF path where the kernel has no place to run
    (a visible GPU, an XLA cluster).
    """
    check_implementation(implementation)
    if implementation == "tf":
        return False
    if implementation == "auto" and (_gpu_visible() or _in_xla_context()):
        return False
    _op_library.load()  # raises OpLibraryError with rebuild advice
    return True


def _as_float32(x, name="x"):
    if isinstance(x, tf.Tensor) and x.dtype == tf.float32:
        return x  # the common case, without convert_to_tensor's overhead
    x = tf.convert_to_tensor(x, dtype_hint=tf.float32)
    if x.dtype != tf.float32:
        raise ValueError(
            f"{name} must be float32, got {x.dtype.name}: the rounding ops read float32 bit "
            f"patterns; convert with tf.cast({name}, tf.float32) first (float16 and "
            "bfloat16 convert exactly; float64 does not, so its rounding is yours to decide)"
        )
    return x


_eager_zero_seed = []


def _zero_seed():
    """The (ignored) seed of deterministic rounding; one shared eager tensor in eager mode."""
    if not tf.executing_eagerly():
        return tf.constant(_ZERO_SEED, tf.int64)
    if not _eager_zero_seed:
        with tf.init_scope(), tf.device("/cpu:0"):
            _eager_zero_seed.append(tf.constant(_ZERO_SEED, tf.int64))
    return _eager_zero_seed[0]


def seed_tensor(seed, rounding):
    """int64[2] seed for the kernels.

    seed=None with stochastic rounding draws a fresh seed from TensorFlow's
    stateful RNG, so results follow `tf.random.set_seed` /
    `keras.utils.set_random_seed` and differ from call to call.
    """
    if rounding != "stochastic":
        return _zero_seed()
    if seed is None:
        return tf.random.uniform([2], minval=tf.int64.min, maxval=tf.int64.max, dtype=tf.int64)
    if isinstance(seed, bool):
        raise ValueError(f"seed must be an int, a pair of ints or an int64[2] tensor; got {seed!r}")
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int64)
    if isinstance(seed, (tuple, list)):
        if len(seed) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in seed):
            raise ValueError(f"seed must be an int or a pair of ints, got {seed!r}")
        return tf.constant(seed, tf.int64)
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64) or (
        seed.shape.rank is not None and seed.shape.as_list() not in ([2], [None])
    ):
        raise ValueError(
            f"seed must be an int, a pair of ints or an integer tensor of shape [2]; got a "
            f"{seed.dtype.name} tensor of shape {seed.shape}"
        )
    return tf.cast(seed, tf.int64)


def check_random_bits(random_bits):
    """Raises ValueError unless random_bits is an int in 1..32."""
    if isinstance(random_bits, bool) or not isinstance(random_bits, int) or not (
        1 <= random_bits <= 32
    ):
        raise ValueError(f"random_bits must be an int in 1..32, got {random_bits!r}")


_check_isa = _op_library.check_isa


def _straight_through(forward, x):
    """forward(x) with the straight-through gradient the kernels register."""

    @tf.custom_gradient
    def straight_through(v):
        def grad(*upstream):
            return upstream[0]  # d(values); the DFP exponents have no gradient

        return forward(v), grad

    return straight_through(x)


def _float_forward(x, fmt, rounding, seed, random_bits, kernel, isa):
    if kernel:
        return _op_library.load().lowprec_round_to_float_format(
            x,
            seed,
            exponent_bits=fmt.exponent_bits,
            mantissa_bits=fmt.mantissa_bits,
            exponent_bias=fmt.exponent_bias,
            subnormals=fmt.subnormals,
            nan_encoding=fmt.nan,
            overflow=fmt.overflow,
            flush_input_denormals=fmt.input_denormals == "flush",
            rounding=rounding,
            random_bits=random_bits,
            isa=isa,
        )
    return _straight_through(
        lambda v: tf_rounding.round_to_format(v, fmt, rounding, seed, random_bits), x)


def _dfp_forward(x, fmt, rounding, seed, random_bits, kernel, isa):
    if fmt.block_size is not None:
        rank = x.shape.rank
        if rank is None or rank == 0:
            raise ValueError(
                "a DfpFormat with block_size needs x of known rank >= 1 (blocks run along "
                f"axis); got shape {x.shape}"
            )
        if not -rank <= fmt.axis < rank:
            raise ValueError(f"axis={fmt.axis} is out of range for x of rank {rank}")
    if kernel:
        return _op_library.load().lowprec_quantize_dfp(
            x,
            seed,
            bits=fmt.bits,
            extra_shift=fmt.extra_shift,
            block_size=fmt.block_size or 0,
            axis=fmt.axis,
            rounding=rounding,
            random_bits=random_bits,
            isa=isa,
        )
    return _straight_through(
        lambda v: tf_rounding.quantize_dfp(v, fmt, rounding, seed, random_bits), x)


def _with_gradient(forward, x, seed, backward):
    """forward(x) with a straight-through or rounded-gradient backward pass."""
    if backward is None:
        return forward(x)
    backward_format, backward_rounding, random_bits, implementation = backward
    backward_seed = (
        tf.random.experimental.stateless_fold_in(seed, _BACKWARD_SALT)
        if backward_rounding == "stochastic"
        else None
    )

    @tf.custom_gradient
    def quantize_with_backward(x):
        def grad(dy):
            return quantize(
                dy,
                backward_format,
                backward_rounding,
                seed=backward_seed,
                random_bits=random_bits,
                implementation=implementation,
            )

        return forward(x), grad

    return quantize_with_backward(x)


def _backward_spec(backward_format, backward_rounding, random_bits, implementation):
    if backward_format is None:
        return None
    backward_format = formats_lib.get(backward_format)
    formats_lib.check_rounding(backward_rounding, "backward_rounding")
    return backward_format, backward_rounding, random_bits, implementation


def round_to_format(
    x,
    fmt,
    rounding="nearest_even",
    *,
    seed=None,
    random_bits=16,
    backward_format=None,
    backward_rounding="nearest_even",
    implementation="auto",
    isa="auto",
    name=None,
):
    """Rounds float32 `x` onto the grid of the float format `fmt`.

    Args:
      x: float32 tensor (or something convertible to one), any shape.
      fmt: a `FloatFormat` or a preset name ("bf16", "fp16", "e4m3", ...).
      rounding: "nearest_even" (IEEE round-to-nearest, ties to even),
        "stochastic" (round up with probability equal to the distance from the
        lower neighbour, in units of the grid step) or "toward_zero".
      seed: stochastic rounding only: an int, a pair of ints or an int64[2]
        tensor.  The same seed gives the same bits in eager mode, in
        `tf.function` and for any thread count.  None draws a seed from
        TensorFlow's stateful RNG (reproducible under `tf.random.set_seed`).
      random_bits: 1..32 random bits per element for stochastic rounding.
        With D the number of x's significand bits below the grid step (the
        discarded field), P(round up) is the discarded fraction F of a grid
        step truncated to random_bits bits, so the rounding is exactly
        unbiased when D <= random_bits and otherwise biased toward zero by
        F - floor(F * 2^random_bits) / 2^random_bits, at most
        2^-random_bits - 2^-D grid steps.  The default 16 draws half a
        Philox word per element (17..32 draw a whole word, about 1.5x
        slower): exact for every BF16 rounding (D = 16) and FP16 rounding of
        |x| >= 2^-17 (D <= 16), within 2^-16 of a grid step for FP8
        (D = 20 for E4M3 normals, 21 for E5M2) and smaller values.
      backward_format: None for a straight-through gradient; else a format
        (float or DFP) the incoming gradient is rounded to.
      backward_rounding: rounding mode of the backward pass.
      implementation: "auto", "op" (C++ kernel) or "tf" (stock TF ops).
      isa: "auto" (the fastest tier the CPU runs), "portable", "avx2" or
        "avx512": which kernel loops run (tests and benchmarks; all give the
        same bits); ignored by the "tf" implementation.

    Returns:
      float32 tensor of `x`'s shape holding values of the format.

    >>> import tf_lowprec as lp
    >>> lp.round_to_format([0.1], "bf16").numpy()
    array([0.10009766], dtype=float32)
    """
    fmt = formats_lib.get(fmt)
    if not isinstance(fmt, formats_lib.FloatFormat):
        raise ValueError(f"fmt must be a FloatFormat (use quantize_dfp for {fmt!r})")
    formats_lib.check_rounding(rounding)
    check_random_bits(random_bits)
    _check_isa(isa)
    backward = _backward_spec(backward_format, backward_rounding, random_bits, implementation)
    with tf.name_scope(name or "round_to_format"):
        x = _as_float32(x)
        kernel = use_kernel(implementation)
        seed = seed_tensor(seed, rounding if backward is None else "stochastic")

        def forward(v):
            return _float_forward(v, fmt, rounding, seed, random_bits, kernel, isa)

        return _with_gradient(forward, x, seed, backward)


def quantize_dfp(
    x,
    fmt=formats_lib.DFP16,
    rounding="nearest_even",
    *,
    seed=None,
    random_bits=16,
    backward_format=None,
    backward_rounding="nearest_even",
    return_exponents=False,
    implementation="auto",
    isa="auto",
    name=None,
):
    """Quantizes float32 `x` to dynamic fixed point with shared exponents.

    Returns float32 values `I * 2^E` (see `DfpFormat` for E and the range of
    I); with `return_exponents=True`, also the int32 shared exponents, shaped
    like `x` with the blocked axis divided into blocks (all ones for one
    exponent per tensor).  Blocks with no finite non-zero value get -1024.
    Other arguments as for `round_to_format`.

    >>> import tf_lowprec as lp
    >>> y, e = lp.quantize_dfp([3.0, 1e-5], return_exponents=True)
    >>> y.numpy(), e.numpy()
    (array([3., 0.], dtype=float32), array([-13], dtype=int32))
    """
    fmt = formats_lib.get(fmt)
    if not isinstance(fmt, formats_lib.DfpFormat):
        raise ValueError(f"fmt must be a DfpFormat (use round_to_format for {fmt!r})")
    formats_lib.check_rounding(rounding)
    check_random_bits(random_bits)
    _check_isa(isa)
    backward = _backward_spec(backward_format, backward_rounding, random_bits, implementation)
    return _run_per_block_quantizer(
        lambda v, s, kernel: _dfp_forward(v, fmt, rounding, s, random_bits, kernel, isa),
        x, rounding, seed, backward, implementation, ("return_exponents", return_exponents),
        name or "quantize_dfp")


def _run_per_block_quantizer(forward, x, rounding, seed, backward, implementation, extra, name):
    """A quantizer with a second, per-block output (DFP exponents, block scales).

    `forward(x, seed, kernel)` gives (values, per-block output) with a
    straight-through gradient for the values; `extra` is the (name, value)
    of the caller's flag that asks for both outputs instead of the values
    with their gradient (straight through, or rounded by `backward`).
    """
    flag, return_extra = extra
    if not isinstance(return_extra, bool):
        raise ValueError(f"{flag} must be True or False, got {return_extra!r}")
    if backward is not None and return_extra:
        raise ValueError(f"{flag}=True cannot be combined with a backward_format")
    with tf.name_scope(name):
        x = _as_float32(x)
        kernel = use_kernel(implementation)
        seed = seed_tensor(seed, rounding if backward is None else "stochastic")
        if return_extra:
            return forward(x, seed, kernel)
        return _with_gradient(lambda v: forward(v, seed, kernel)[0], x, seed, backward)


def _block_axis(x, fmt):
    rank = x.shape.rank
    if rank is None or rank == 0:
        raise ValueError(
            "a BlockFormat needs x of known rank >= 1 (blocks run along axis); got shape "
            f"{x.shape}")
    if not -rank <= fmt.axis < rank:
        raise ValueError(f"axis={fmt.axis} is out of range for x of rank {rank}")
    return fmt.axis % rank


def _block_forward(x, fmt, rounding, seed, random_bits, kernel, isa):
    """(values, decoded block scales) of the block-scaled conversion."""
    axis = _block_axis(x, fmt)
    if kernel:
        scale = fmt.scale_format
        float_scale = not fmt.power_of_two_scales
        return _op_library.load().lowprec_quantize_block_scaled(
            x,
            seed,
            exponent_bits=fmt.element.exponent_bits,
            mantissa_bits=fmt.element.mantissa_bits,
            exponent_bias=fmt.element.exponent_bias,
            subnormals=fmt.element.subnormals,
            nan_encoding=fmt.element.nan,
            overflow=fmt.element.overflow,
            flush_input_denormals=fmt.element.input_denormals == "flush",
            block_size=fmt.block_size,
            axis=axis,
            scale_kind="float" if float_scale else "e8m0",
            scale_exponent_bits=scale.exponent_bits if float_scale else 8,
            scale_mantissa_bits=scale.mantissa_bits if float_scale else 0,
            scale_exponent_bias=scale.exponent_bias if float_scale else 127,
            scale_subnormals=scale.subnormals if float_scale else False,
            scale_nan_encoding=scale.nan if float_scale else "all_ones",
            scale_flush_input_denormals=float_scale and scale.input_denormals == "flush",
            tensor_scale=fmt.tensor_scale,
            nonfinite_blocks=fmt.nonfinite_blocks,
            rounding=rounding,
            random_bits=random_bits,
            isa=isa,
        )
    from tf_lowprec.numerics import tf_block_scaling  # noqa: PLC0415  (sibling, deferred)

    return _straight_through(lambda v: tf_block_scaling.quantize_block_scaled(
        v, fmt.replace(axis=axis), rounding, seed, random_bits), x)


def quantize_block_scaled(
    x,
    fmt,
    rounding="nearest_even",
    *,
    axis=None,
    seed=None,
    random_bits=16,
    backward_format=None,
    backward_rounding="nearest_even",
    return_scales=False,
    implementation="auto",
    isa="auto",
    name=None,
):
    """Quantizes float32 `x` to a block-scaled format (OCP MX, NVFP4) and back.

    Returns float32 values P * X of `x`'s shape: each block of
    `fmt.block_size` consecutive elements along `axis` shares one scale X,
    and each P is rounded to `fmt.element` (see `BlockFormat` and
    docs/block_formats.md).  With `return_scales=True`, also the float32
    decoded block scales, shaped like `x` with `axis` replaced by its number
    of blocks (NaN for a block that became NaN).

    Args:
      x: float32 tensor of rank >= 1.
      fmt: a `BlockFormat` or a preset name ("mxfp8_e4m3", "nvfp4", ...).
      rounding: of the elements: "nearest_even", "stochastic" (the same
        Philox stream as `round_to_format`, keyed by the element's index in
        `x`) or "toward_zero".  Scales are always computed as the format
        says, whatever the rounding.
      axis: the axis the blocks run along; None takes `fmt.axis`.
      Other arguments as for `round_to_format`.

    >>> import tf_lowprec as lp
    >>> lp.quantize_block_scaled([0.3, -1.0, 2.6, 5.0], lp.MXFP4_E2M1).numpy()
    array([ 0.5, -1. ,  3. ,  4. ], dtype=float32)
    """
    fmt = formats_lib.get(fmt)
    if not isinstance(fmt, formats_lib.BlockFormat):
        raise ValueError(f"fmt must be a BlockFormat (use quantize for {fmt!r})")
    if axis is not None:
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis must be an int or None, got {axis!r}")
        fmt = fmt.replace(axis=axis, name=fmt.name)
    formats_lib.check_rounding(rounding)
    check_random_bits(random_bits)
    _check_isa(isa)
    backward = _backward_spec(backward_format, backward_rounding, random_bits, implementation)
    return _run_per_block_quantizer(
        lambda v, s, kernel: _block_forward(v, fmt, rounding, s, random_bits, kernel, isa),
        x, rounding, seed, backward, implementation, ("return_scales", return_scales),
        name or "quantize_block_scaled")


# The rounding function of each kind of format (`formats.KINDS`).
QUANTIZERS = {"float": round_to_format, "dfp": quantize_dfp, "block": quantize_block_scaled}


def quantize(x, fmt, rounding="nearest_even", *, axis=None, **kwargs):
    """Rounds `x` with its kind's function: `round_to_format` for a FloatFormat,
    `quantize_dfp` for a DfpFormat, `quantize_block_scaled` for a BlockFormat.

    `axis`: the axis blocks run along, for a BlockFormat or a DfpFormat with
    `block_size` (None keeps the format's own); ignored by formats without
    blocks.

    >>> import tf_lowprec as lp
    >>> lp.quantize([[1.0, 3.0], [100.0, 7.0]], lp.MXINT8, axis=0).numpy()
    array([[  1.,   3.],
           [100.,   7.]], dtype=float32)
    """
    fmt = formats_lib.get(fmt)
    if fmt.kind == "block":
        return quantize_block_scaled(x, fmt, rounding, axis=axis, **kwargs)
    if axis is not None and getattr(fmt, "block_size", None) is not None:
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis must be an int or None, got {axis!r}")
        fmt = fmt.replace(axis=axis, name=fmt.name)
    return QUANTIZERS[fmt.kind](x, fmt, rounding, **kwargs)


def round_gradient(x, fmt, rounding="nearest_even", *, seed=None, random_bits=16,
                   implementation="auto", name=None):
    """Identity in the forward pass; rounds the incoming gradient to `fmt`.

    Put on the output of a GEMM, it rounds the error dY before it enters both
    backward GEMMs, which is where the mixed-precision papers quantize it.

    >>> import tensorflow as tf, tf_lowprec as lp
    >>> x = tf.constant([1.0])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = lp.round_gradient(x, "bf16") * (1.0 + 2.0**-9)
    >>> tape.gradient(y, x).numpy()
    array([1.], dtype=float32)
    """
    fmt = formats_lib.get(fmt)
    formats_lib.check_rounding(rounding)
    check_random_bits(random_bits)
    with tf.name_scope(name or "round_gradient"):
        x = _as_float32(x)
        seed = seed_tensor(seed, rounding)

        @tf.custom_gradient
        def identity_rounding_gradient(v):
            def grad(dy):
                return quantize(dy, fmt, rounding, seed=seed, random_bits=random_bits,
                                implementation=implementation)

            return tf.identity(v), grad

        return identity_rounding_gradient(x)


@tf.RegisterGradient("LowprecRoundToFloatFormat")
def _round_to_float_format_grad(op, dy):
    del op
    return dy, None  # straight-through estimator


@tf.RegisterGradient("LowprecQuantizeDfp")
def _quantize_dfp_grad(op, dy, d_exponents):
    del op, d_exponents
    return dy, None  # straight-through estimator


@tf.RegisterGradient("LowprecQuantizeBlockScaled")
def _quantize_block_scaled_grad(op, dy, d_scales):
    del op, d_scales
    return dy, None  # straight-through estimator
