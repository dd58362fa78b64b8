"""Keras dtype policies that train stock layers in emulated low precision.

A `Policy` is a `keras.DTypePolicy` whose compute and variable dtypes stay
float32 (FP32 master weights, FP32 non-GEMM ops) and which carries a
`PrecisionSpec`: the number format and rounding mode of each tensor role of
a GEMM or convolution.  While a layer with such a policy runs, the TensorFlow
backend's matmul / einsum / conv ops round their operands and the incoming
error as the spec says (see `tf_lowprec.keras.emulation` and docs/design.md).

Tensor roles (the columns of the papers' tables):

- `activations`: the non-weight operands of forward GEMMs (rounded in the
  forward pass; the rounded values are also what the backward GEMMs read).
- `weights`: the weight operands of forward GEMMs (likewise).
- `errors`: the incoming error dY of a GEMM, rounded once before it enters
  both backward GEMMs (dX = dY W^T and dW = X^T dY).
- `weight_gradients`: the output dW of the backward weight GEMM.

Each role is None (left in FP32), a `(format, rounding)` pair, or for
activations, weights and errors in a float format a `(format, rounding,
Scaling(...))` triple: per-tensor (or, for weights, per-channel) scaling
before the rounding, "current" or "delayed" as Transformer Engine defines
them (docs/scaling.md); `format` is a `FloatFormat`/`DfpFormat` or a preset
name of `tf_lowprec.numerics.formats`.

>>> import keras, tf_lowprec as lp
>>> policy = lp.Policy("bf16")
>>> policy.spec.activations
('bf16', 'nearest_even')
>>> layer = keras.layers.Dense(4, dtype=policy)
>>> layer.dtype_policy.name, layer.compute_dtype
('bf16', 'float32')
"""

import keras

from tf_lowprec.gemm import accumulation as accumulation_gemm
from tf_lowprec.gemm import registry as gemm_registry
from tf_lowprec.keras import adapter
from tf_lowprec.numerics import formats as formats_lib
from tf_lowprec.numerics import rounding as rounding_lib

ROLES = ("activations", "weights", "errors", "weight_gradients", "storage")
ACCUMULATORS = tuple(gemm_registry.ACCUMULATORS)
# Roles a `Scaling` may be given: the operands of the GEMMs and the incoming error.
SCALED_ROLES = ("activations", "weights", "errors")
SCALING_MODES = ("current", "delayed")
GRANULARITIES = ("tensor", "channel")


class Scaling:
    """Per-tensor scaling of a role before it is rounded: y = Q(x * s) / s.

    Transformer Engine's definitions: s = (largest finite value of the
    format / amax) / 2^margin, optionally rounded down to a power of two;
    "current" takes amax = max|x| of the tensor being rounded, "delayed"
    the largest amax of the previous `history_length` training steps (the
    scale and the amax history are layer state, updated once per training
    step).  Details, edge cases and the exact arithmetic: docs/scaling.md.

    Args:
      mode: "current" or "delayed".
      history_length: amax history length of delayed scaling (int >= 1;
        Transformer Engine's default 1024).
      margin: int >= 0; the scale is divided by 2^margin.
      power_of_two: round the scale down to a power of two, which makes
        the scaling and unscaling exact.
      granularity: "tensor" (one scale) or "channel" (weights only, current
        scaling only: one scale per slice along the weight's last axis, the
        output channels of Dense and convolution kernels).

    >>> import tf_lowprec as lp
    >>> spec = lp.PrecisionSpec(activations=("e4m3", "nearest_even", lp.Scaling("delayed")))
    >>> spec.activations[:2], spec.scaling("activations").history_length
    (('e4m3', 'nearest_even'), 1024)
    >>> spec.get_config()["activations"][2]["mode"]
    'delayed'
    """

    def __init__(self, mode="delayed", *, history_length=1024, margin=0, power_of_two=False,
                 granularity="tensor"):
        if mode not in SCALING_MODES:
            raise ValueError(f"Scaling mode must be one of {', '.join(SCALING_MODES)}; "
                             f"got {mode!r}")
        if isinstance(history_length, bool) or not isinstance(history_length, int) or (
                history_length < 1):
            raise ValueError(f"history_length must be an int >= 1, got {history_length!r}")
        if isinstance(margin, bool) or not isinstance(margin, int) or not 0 <= margin <= 64:
            raise ValueError(f"margin must be an int in [0, 64], got {margin!r}")
        if not isinstance(power_of_two, bool):
            raise ValueError(f"power_of_two must be True or False, got {power_of_two!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}; "
                             f"got {granularity!r}")
        if granularity == "channel" and mode != "current":
            raise ValueError("granularity='channel' needs mode='current' (delayed scaling "
                             "keeps one amax history per layer and role)")
        self.mode = mode
        self.history_length = history_length
        self.margin = margin
        self.power_of_two = power_of_two
        self.granularity = granularity

    @property
    def delayed(self):
        return self.mode == "delayed"

    def get_config(self):
        return {"mode": self.mode, "history_length": self.history_length,
                "margin": self.margin, "power_of_two": self.power_of_two,
                "granularity": self.granularity}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        unknown = set(config) - {"mode", "history_length", "margin", "power_of_two",
                                 "granularity"}
        if unknown:
            raise ValueError(f"unknown Scaling keys {sorted(unknown)}; valid keys: mode, "
                             "history_length, margin, power_of_two, granularity")
        return cls(config.pop("mode", "delayed"), **config)

    def __eq__(self, other):
        return isinstance(other, Scaling) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(tuple(self.get_config().items()))

    def __repr__(self):
        return (f"Scaling({self.mode!r}, history_length={self.history_length}, "
                f"margin={self.margin}, power_of_two={self.power_of_two}, "
                f"granularity={self.granularity!r})")


def _format_name(fmt):
    """Preset name of `fmt` when it is one, else its config (for get_config)."""
    if fmt.name in formats_lib.PRESETS and formats_lib.PRESETS[fmt.name] == fmt:
        return fmt.name
    return formats_lib.serialize(fmt)


def _parse_scaling(role, fmt, scaling):
    """A role's `Scaling` (from an instance or its config), checked against role and format."""
    if isinstance(scaling, dict):
        scaling = Scaling.from_config(scaling)
    if not isinstance(scaling, Scaling):
        raise ValueError(f"{role}: the third entry must be an lp.Scaling (or its config); "
                         f"got {scaling!r}")
    if role not in SCALED_ROLES:
        raise ValueError(f"{role} cannot be scaled; Scaling applies to "
                         f"{', '.join(SCALED_ROLES)}")
    if fmt.kind != "float":
        raise ValueError(f"{role}: Scaling needs a float format (FloatFormat); got "
                         f"{fmt!r}, whose kind {fmt.kind!r} scales itself")
    if scaling.granularity == "channel" and role != "weights":
        raise ValueError(f"{role}: granularity='channel' is for weights only")
    return scaling


def _parse_role(role, value):
    """Normalises a role entry to None or (format, rounding, Scaling or None)."""
    if value is None:
        return None
    scaling = None
    if isinstance(value, (list, tuple)):
        if len(value) not in (2, 3):
            raise ValueError(
                f"{role} must be None, a format, a (format, rounding) pair or a (format, "
                f"rounding, lp.Scaling(...)) triple; got {value!r}"
            )
        fmt, rounding = value[:2]
        if len(value) == 3:
            scaling = value[2]
    else:
        fmt, rounding = value, "nearest_even"
    try:
        fmt = formats_lib.get(fmt)
    except ValueError as error:
        raise ValueError(f"{role}: {error}") from None
    formats_lib.check_rounding(rounding, f"{role} rounding")
    if scaling is not None:
        scaling = _parse_scaling(role, fmt, scaling)
    if fmt == formats_lib.FP32:
        return None  # rounding float32 onto float32 is the identity
    return fmt, rounding, scaling


class PrecisionSpec:
    """The format and rounding of every tensor role, and the accumulator.

    Args:
      activations, weights, errors, weight_gradients: None (FP32), a format
        (rounded to nearest even) or a `(format, rounding)` pair.
      storage: None, a format or a `(format, rounding)` pair: every output of
        a layer under the policy is rounded to it in the forward pass
        (straight-through gradient), emulating the activations a mixed-
        precision run stores in 16 bits (Micikevicius et al. 2018).  Costs
        one memory-bound rounding pass per layer output.
      accumulator: "fp32" (the FP32 op accumulates the rounded operands),
        "int32" (integer accumulation of DFP operands, run by
        `tf_lowprec.gemm.dfp` where that module is installed; needs DFP
        activations and weights) or "bf16_dot" (FP32 accumulation in the
        fixed order of the AVX512_BF16 instruction VDPBF16PS, run by
        `tf_lowprec.bf16_matmul` / `bf16_conv2d`: native instructions where
        the CPU has them, a bit-identical emulation elsewhere; needs BF16
        activations, weights and errors — docs/bf16_gemm.md), or an
        `lp.Accumulator(format, chunk_size=..., rounding=...)`: every
        emulated matmul (Dense, batched matmul) and Conv2D (NHWC, via image
        patches) sums its products rounded to that float format at every
        addition, in chunks (`lp.matmul`, docs/accumulation.md); einsum,
        attention, depthwise/transposed convolutions and RNN cells keep
        FP32 accumulation.
      first_last: None, or a spec (a preset name or a `PrecisionSpec`) used
        instead of this one for the first and the last GEMM-bearing layer of
        the model being called, as HFP8 keeps those at higher precision.
      wgrad_hadamard: None, or a power of two 2..256: the size of the random
        Hadamard transform applied to both inputs of every weight-gradient
        GEMM along the axis it sums over, before they are quantized (NVIDIA's
        NVFP4 recipe uses 16).  The transform is orthogonal, so it changes
        dW only through the quantization, whose outliers it spreads.  Only
        GEMMs with block-scaled operands take it (docs/block_formats.md).
      square_weight_blocks: quantize block-scaled weights in square tiles
        of block_size x block_size over the axis the forward GEMM sums over
        and the axis the dX GEMM sums over, so that both GEMMs read the same
        quantized weights (NVIDIA's NVFP4 recipe: 16 x 16); matrix products
        and einsums whose second operand is the weight.

    >>> import tf_lowprec as lp
    >>> spec = lp.PrecisionSpec(activations="e4m3", weights="e4m3",
    ...                         errors=("e5m2", "stochastic"))
    >>> spec.errors
    ('e5m2', 'stochastic')
    """

    def __init__(self, activations=None, weights=None, errors=None, weight_gradients=None,
                 storage=None, *, accumulator="fp32", first_last=None, wgrad_hadamard=None,
                 square_weight_blocks=False):
        parsed = {
            "activations": _parse_role("activations", activations),
            "weights": _parse_role("weights", weights),
            "errors": _parse_role("errors", errors),
            "weight_gradients": _parse_role("weight_gradients", weight_gradients),
            "storage": _parse_role("storage", storage),
        }
        # (format, rounding) per role, and the Scaling of the scaled ones.
        self._roles = {r: None if v is None else v[:2] for r, v in parsed.items()}
        self._scalings = {r: v[2] for r, v in parsed.items() if v is not None and v[2]}
        if isinstance(accumulator, dict):
            accumulator = accumulation_gemm.Accumulator.from_config(accumulator)
        gemm_registry.get(accumulator).check(
            {role: None if entry is None else entry[0] for role, entry in self._roles.items()})
        self.accumulator = accumulator
        if first_last is not None:
            first_last = get_spec(first_last)
            if first_last.first_last is not None:
                raise ValueError("first_last must be a spec without a first_last of its own")
        self.first_last = first_last
        if wgrad_hadamard is not None and (
                isinstance(wgrad_hadamard, bool) or not isinstance(wgrad_hadamard, int)
                or wgrad_hadamard not in [2**k for k in range(1, 9)]):
            raise ValueError(f"wgrad_hadamard must be None or a power of two in 2..256, got "
                             f"{wgrad_hadamard!r}")
        self.wgrad_hadamard = wgrad_hadamard
        if not isinstance(square_weight_blocks, bool):
            raise ValueError(f"square_weight_blocks must be True or False, got "
                             f"{square_weight_blocks!r}")
        self.square_weight_blocks = square_weight_blocks

    def role(self, role):
        """(format object, rounding) of `role`, or None when it stays FP32."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
        return self._roles[role]

    def scaling(self, role):
        """The role's `Scaling`, or None when it is rounded unscaled (or not at all)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
        return self._scalings.get(role)

    def __getattr__(self, name):
        # Public read access in config form: spec.activations -> ("bf16", "nearest_even"),
        # with the Scaling third for a scaled role.
        roles = self.__dict__.get("_roles")
        if roles is not None and name in ROLES:
            entry = roles[name]
            if entry is None:
                return None
            scaling = self._scalings.get(name)
            return (_format_name(entry[0]), entry[1]) + ((scaling,) if scaling else ())
        raise AttributeError(name)

    @property
    def emulates(self):
        """Whether any role is rounded or the sums are not FP32's (False for the FP32 control)."""
        return (any(v is not None for v in self._roles.values()) or self.first_last is not None
                or self.accumulator != "fp32")

    @property
    def stochastic(self):
        specs = [self] + ([self.first_last] if self.first_last else [])
        return any(v is not None and v[1] == "stochastic"
                   for s in specs for v in s._roles.values())

    def with_storage(self, storage):
        """A copy whose layers round their outputs to `storage` (None removes it)."""
        config = self.get_config()
        entry = _parse_role("storage", storage)
        config["storage"] = None if entry is None else [_format_name(entry[0]), entry[1]]
        return PrecisionSpec.from_config(config)

    def with_rounding(self, rounding):
        """A copy with every rounded role (and first_last's) set to `rounding`."""
        formats_lib.check_rounding(rounding)
        config = self.get_config()
        for role in ROLES:
            if config[role] is not None:
                config[role] = [config[role][0], rounding] + config[role][2:]
        if config["first_last"] is not None:
            config["first_last"] = PrecisionSpec.from_config(
                config["first_last"]).with_rounding(rounding).get_config()
        return PrecisionSpec.from_config(config)

    def get_config(self):
        config = {}
        for role in ROLES:
            entry = self._roles[role]
            config[role] = None if entry is None else [_format_name(entry[0]), entry[1]]
            if role in self._scalings:
                config[role].append(self._scalings[role].get_config())
        config["accumulator"] = (self.accumulator.get_config()
                                 if isinstance(self.accumulator, accumulation_gemm.Accumulator)
                                 else self.accumulator)
        config["first_last"] = None if self.first_last is None else self.first_last.get_config()
        if self.wgrad_hadamard is not None:  # (absent from older configs)
            config["wgrad_hadamard"] = self.wgrad_hadamard
        if self.square_weight_blocks:
            config["square_weight_blocks"] = True
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        options = {"accumulator", "first_last", "wgrad_hadamard", "square_weight_blocks"}
        unknown = set(config) - set(ROLES) - options
        if unknown:
            raise ValueError(
                f"unknown PrecisionSpec keys {sorted(unknown)}; valid keys: "
                f"{', '.join(ROLES)}, {', '.join(sorted(options))}"
            )
        for role in ROLES:
            if isinstance(config.get(role), dict):
                config[role] = formats_lib.get(config[role])
            elif isinstance(config.get(role), list) and isinstance(config[role][0], dict):
                config[role] = (formats_lib.get(config[role][0]),) + tuple(config[role][1:])
        if isinstance(config.get("first_last"), dict):
            config["first_last"] = cls.from_config(config["first_last"])
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, PrecisionSpec) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(repr(self.get_config()))

    def __repr__(self):
        parts = [f"{r}={getattr(self, r)!r}" for r in ROLES if self._roles[r] is not None]
        if self.accumulator != "fp32":
            parts.append(f"accumulator={self.accumulator!r}")
        if self.first_last is not None:
            parts.append(f"first_last={self.first_last!r}")
        if self.wgrad_hadamard is not None:
            parts.append(f"wgrad_hadamard={self.wgrad_hadamard}")
        if self.square_weight_blocks:
            parts.append("square_weight_blocks=True")
        return f"PrecisionSpec({', '.join(parts)})"


def _presets():
    bf16 = ("bf16", "nearest_even")
    fp16 = ("fp16", "nearest_even")
    fp16_spec = PrecisionSpec(activations=fp16, weights=fp16, errors=fp16,
                              weight_gradients=fp16)
    return {
        # The control: no rounding anywhere.
        "fp32": PrecisionSpec(),
        # Kalamkar et al. 2019: BF16 RNE inputs of every GEMM in all three
        # passes, FP32 accumulation, FP32 weight gradients and master weights.
        "bf16": PrecisionSpec(activations=bf16, weights=bf16, errors=bf16),
        # Micikevicius et al. 2018: IEEE half operands, errors and weight
        # gradients (loss scaling keeps the errors in range).
        "fp16": fp16_spec,
        # Sun et al. 2019: forward 1-4-3 with exponent bias 11, backward 1-5-2
        # for errors and weight gradients; first and last layer in FP16.
        "hfp8": PrecisionSpec(
            activations="hfp8_forward", weights="hfp8_forward", errors="hfp8_backward",
            weight_gradients="hfp8_backward", first_last=fp16_spec,
        ),
        # OCP FP8 formats, unscaled: E4M3 forward operands, E5M2 errors, weight
        # gradients left in FP32 (the GEMM's output precision).  Values beyond
        # E4M3's 448 saturate and small ones underflow; the loss scaling that
        # compile adds keeps the errors in range.  Not Transformer Engine's
        # recipe, which always scales: see fp8_delayed.
        "fp8": PrecisionSpec(activations="e4m3", weights="e4m3", errors="e5m2"),
        # The same numerics with the BF16 GEMM of `bf16_matmul`: FP32
        # accumulation in VDPBF16PS's fixed order, on the native AVX512_BF16
        # instructions where the CPU has them and bit-identical elsewhere.
        "bf16_native": PrecisionSpec(activations=bf16, weights=bf16, errors=bf16,
                                     accumulator="bf16_dot"),
        # Das et al. 2018: INT16 dynamic fixed point operands and errors (one
        # shared exponent per tensor), INT32 accumulation, FP32 weight gradients.
        "dfp16": PrecisionSpec(activations="dfp16", weights="dfp16", errors="dfp16",
                               accumulator="int32"),
        # Wang et al. 2018: FP8 1-5-2 operands, errors and weight gradients;
        # FP16 accumulation in chunks of 64 (the paper's CL).  FP16 weight
        # updates with stochastic rounding are the optimizer's part:
        # lp.LowPrecisionWeights(optimizer, "fp16", "stochastic").  What
        # could not be verified: docs/accumulation.md.
        "fp8_wang": PrecisionSpec(
            activations="e5m2", weights="e5m2", errors="e5m2", weight_gradients="e5m2",
            accumulator=accumulation_gemm.Accumulator(formats_lib.FP16, chunk_size=64)),
        # fp8's formats with per-tensor "current" scaling: each tensor
        # scaled by 448 / max|x| (E4M3) or 57344 / max|dY| (E5M2) before it
        # is rounded (Transformer Engine's Float8CurrentScaling recipe).
        "fp8_current": PrecisionSpec(
            activations=("e4m3", "nearest_even", Scaling("current")),
            weights=("e4m3", "nearest_even", Scaling("current")),
            errors=("e5m2", "nearest_even", Scaling("current"))),
        # Transformer Engine's default recipe, DelayedScaling(margin=0,
        # amax_history_len=1024, amax_compute_algo="max", fp8_format=HYBRID):
        # E4M3 forward operands, E5M2 errors, each scaled from the largest
        # amax of the previous 1024 training steps.
        "fp8_delayed": PrecisionSpec(
            activations=("e4m3", "nearest_even", Scaling("delayed")),
            weights=("e4m3", "nearest_even", Scaling("delayed")),
            errors=("e5m2", "nearest_even", Scaling("delayed"))),
        # Block-scaled formats (docs/block_formats.md): every GEMM's operands
        # blocked along the axis it sums over; FP32 sums, weight gradients and
        # master weights.
        # MXFP8 as Transformer Engine's MXFP8BlockScaling recipe defaults to:
        # E4M3 elements for every tensor, gradients included.
        "mxfp8": PrecisionSpec(activations="mxfp8_e4m3", weights="mxfp8_e4m3",
                               errors="mxfp8_e4m3"),
        # MXFP6: E2M3 forward, E3M2 (more range) for the errors, the split
        # FP8's "hybrid" recipes make (our choice; not from a paper).
        "mxfp6": PrecisionSpec(activations="mxfp6_e2m3", weights="mxfp6_e2m3",
                               errors="mxfp6_e3m2"),
        # MXFP4 everywhere, the errors rounded stochastically as in the NVFP4
        # recipe (unbiased gradients).
        "mxfp4": PrecisionSpec(activations="mxfp4_e2m1", weights="mxfp4_e2m1",
                               errors=("mxfp4_e2m1", "stochastic")),
        # NVIDIA's NVFP4 pre-training recipe, the parts emulated here: NVFP4
        # operands in all three GEMMs, stochastic rounding of the errors,
        # 16-point random Hadamard transforms of the weight-gradient GEMM's
        # inputs, 16x16 weight blocks (one quantized weight for the forward
        # and the dX GEMM), and the first and last GEMM layers in BF16 (NVIDIA
        # keeps a few final layers in higher precision); docs/block_formats.md.
        "nvfp4": PrecisionSpec(activations="nvfp4", weights="nvfp4",
                               errors=("nvfp4", "stochastic"),
                               first_last=PrecisionSpec(activations=bf16, weights=bf16,
                                                        errors=bf16),
                               wgrad_hadamard=16, square_weight_blocks=True),
    }


def get_spec(identifier):
    """A `PrecisionSpec` from a preset name, a config dict or a spec."""
    if isinstance(identifier, PrecisionSpec):
        return identifier
    if isinstance(identifier, str):
        if identifier not in PRESETS:
            raise ValueError(
                f"unknown precision policy {identifier!r}; valid presets: "
                f"{', '.join(PRESETS)} (or pass spec=lp.PrecisionSpec(...) for a custom one)"
            )
        return PRESETS[identifier]
    if isinstance(identifier, dict):
        return PrecisionSpec.from_config(identifier)
    raise ValueError(
        f"cannot interpret {identifier!r} as a precision spec: pass a preset name "
        f"({', '.join(PRESETS)}), a PrecisionSpec or its config dict"
    )


PRESETS = _presets()


class PolicyName(str):
    """A policy's name that still knows its policy.

    Keras' `Operation.from_config` replaces a deserialized float policy by its
    `name` before constructing the layer; the adapter's "policy_from_name"
    listener (`_policy_from_name`) lets `dtype_policies.get` turn this name
    back into the policy, so custom specs survive `load_model`.
    """

    def __new__(cls, text, policy):
        name = super().__new__(cls, text)
        name.policy = policy
        return name

    def __reduce__(self):
        return PolicyName, (str(self), self.policy)


@keras.saving.register_keras_serializable(package="tf_lowprec")
class Policy(keras.DTypePolicy):
    """A float32 Keras dtype policy whose GEMMs and convolutions run emulated.

    Args:
      name: a preset ("fp32", "bf16", "fp16", "hfp8", "fp8", "bf16_native",
        "dfp16", "fp8_wang", "fp8_current", "fp8_delayed", "mxfp8", "mxfp6",
        "mxfp4", "nvfp4") or, with
        `spec`, any label for a custom policy (default "custom").
      spec: a `PrecisionSpec` (or its config dict) for a custom policy.
      rounding: optional rounding mode applied to every rounded role of the
        preset or spec, e.g. "stochastic".
      implementation: "auto" (C++ kernels where they can run, the pure-TF
        path on GPUs and under XLA), "op" or "tf".

    Set it globally, per layer, or in a `keras.dtype_policies.DTypePolicyMap`:

    >>> import keras, tf_lowprec as lp
    >>> keras.config.set_dtype_policy(lp.Policy("bf16"))
    >>> keras.layers.Dense(2).dtype_policy
    <Policy "bf16">
    >>> keras.layers.Dense(2, dtype="float32").dtype_policy  # exempt a layer
    <DTypePolicy "float32">
    >>> keras.config.set_dtype_policy("float32")
    """

    def __init__(self, name=None, *, spec=None, rounding=None, storage=None,
                 implementation="auto"):
        if spec is None:
            if name is None:
                raise ValueError(
                    f"Policy needs a preset name ({', '.join(PRESETS)}) or spec=PrecisionSpec(...)"
                )
            spec = get_spec(name)
        else:
            spec = get_spec(spec)
            name = "custom" if name is None else name
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if rounding is not None:
            spec = spec.with_rounding(rounding)
        if storage is not None:
            spec = spec.with_storage(storage)
        rounding_lib.check_implementation(implementation)
        super().__init__("float32")
        self._name = name
        self._spec = spec
        self._implementation = implementation
        # Read on every Layer.__call__ (the storage hook's fast path).
        self._lowprec_storage = any(
            s.role("storage") is not None
            for s in [spec] + ([spec.first_last] if spec.first_last else []))
        if adapter.install_error() is not None:
            raise adapter.install_error()

    @property
    def name(self):
        return PolicyName(self._name, self)

    @property
    def spec(self):
        return self._spec

    @property
    def implementation(self):
        return self._implementation

    def with_implementation(self, implementation):
        """The same policy running the given implementation ("auto", "op" or "tf")."""
        return Policy(self._name, spec=self._spec, implementation=implementation)

    def get_config(self):
        config = {"name": self._name, "implementation": self._implementation}
        if PRESETS.get(self._name) != self._spec:
            config["spec"] = self._spec.get_config()
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return (
            type(other) is type(self)
            and self._name == other._name
            and self._spec == other._spec
            and self._implementation == other._implementation
        )

    def __hash__(self):
        return hash((self._name, self._spec))


def _policy_from_name(identifier):
    """The policy a `PolicyName` carries (the adapter's "policy_from_name" listener)."""
    return identifier.policy if isinstance(identifier, PolicyName) else None


adapter.set_listener("policy_from_name", _policy_from_name)


# ----------------------------------------------------------------------------
# Saved files: a clear error without tf_lowprec, and stock-Keras copies.

_REGISTERED_NAME = "tf_lowprec>Policy"


def _needs_tf_lowprec_class_name():
    """The class name a saved `Policy` config carries: Keras' error text without tf_lowprec.

    Keras looks a saved object up by its registered name first, so with
    tf_lowprec imported the name below is never read; without it,
    `load_model` raises "Cannot deserialize object of type `<this>`" (or
    "Could not locate class '<this>'" inside a DTypePolicyMap) instead of
    an AttributeError on a string.
    """
    import sys  # noqa: PLC0415

    version = getattr(sys.modules.get("tf_lowprec"), "__version__", "unknown")
    return (f"tf_lowprec.Policy (this file was saved with tf_lowprec {version}: import "
            "tf_lowprec before loading it, or write a stock-Keras copy with "
            "tf_lowprec.strip_policies(path, new_path))")


def _mark_saved_policies(config):
    """Rewrites the saved configs of `Policy` objects inside `config` (in place)."""
    if isinstance(config, dict):
        if config.get("registered_name") == _REGISTERED_NAME:
            config["module"] = None
            config["class_name"] = _needs_tf_lowprec_class_name()
        for value in config.values():
            _mark_saved_policies(value)
    elif isinstance(config, (list, tuple)):
        for value in config:
            _mark_saved_policies(value)
    return config


def _saved_policy_config(policy, config):
    """The adapter's "policy_config" listener: marks the Policy configs a layer saves."""
    del policy
    return _mark_saved_policies(config)


adapter.set_listener("policy_config", _saved_policy_config)

_FLOAT32_POLICY = {"module": "keras", "class_name": "DTypePolicy",
                   "config": {"name": "float32"}, "registered_name": None}


def _strip(config, found):
    """`config` with every Policy config replaced by float32; other tf_lowprec objects in `found`."""
    if isinstance(config, dict):
        registered = config.get("registered_name")
        if registered == _REGISTERED_NAME:
            return dict(_FLOAT32_POLICY, config=dict(_FLOAT32_POLICY["config"]))
        if isinstance(registered, str) and registered.startswith("tf_lowprec>"):
            found.append(registered.partition(">")[2])
        return {key: _strip(value, found) for key, value in config.items()}
    if isinstance(config, list):
        return [_strip(value, found) for value in config]
    return config


def strip_policies(path, new_path=None):
    """Writes a copy of a `.keras` file that loads with stock Keras (no tf_lowprec).

    Every `tf_lowprec.Policy` in the file becomes the float32 policy, so the
    copy computes in float32 with the same weights.  A training configuration
    (`compile`) that uses a tf_lowprec object (`AdaptiveLossScaleOptimizer`)
    is left out: the copy loads uncompiled.  Layers of tf_lowprec
    (`tf_lowprec.layers.Quantize`, ...) cannot be stripped: a file with
    them is refused with a ValueError naming them.

    Args:
      path: the `.keras` file to read, or a `keras.Model` (then the result
        is the stripped model itself, through a temporary file).
      new_path: where to write the copy (must differ from `path`); not
        used with a model.

    Returns:
      `new_path`, or the stripped model.

    >>> import keras, os, tempfile, tf_lowprec as lp
    >>> folder = tempfile.mkdtemp()
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype=lp.Policy("bf16"))])
    >>> model.save(os.path.join(folder, "bf16.keras"))
    >>> copy = lp.strip_policies(os.path.join(folder, "bf16.keras"),
    ...                          os.path.join(folder, "float32.keras"))
    >>> keras.saving.load_model(copy).layers[0].dtype_policy
    <DTypePolicy "float32">
    """
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415
    import tempfile  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    if isinstance(path, keras.Model):
        with tempfile.TemporaryDirectory() as folder:
            saved = os.path.join(folder, "model.keras")
            path.save(saved)
            return keras.saving.load_model(
                strip_policies(saved, os.path.join(folder, "stock.keras")))
    if new_path is None:
        raise ValueError("new_path (where to write the stock-Keras copy) is required for a file")
    if os.path.abspath(path) == os.path.abspath(new_path):
        raise ValueError(f"new_path must differ from path, got {new_path!r} for both")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"path must be a .keras file (a zip archive), got {path!r}")
    with zipfile.ZipFile(path) as source:
        config = json.loads(source.read("config.json"))
        compile_found = []
        compile_config = _strip(config.pop("compile_config", None), compile_found)
        found = []
        config = _strip(config, found)
        if found:
            raise ValueError(
                f"{path} holds tf_lowprec objects other than policies "
                f"({', '.join(sorted(set(found)))}); it cannot load without tf_lowprec")
        if compile_config is not None and not compile_found:
            config["compile_config"] = compile_config
        with zipfile.ZipFile(new_path, "w", zipfile.ZIP_DEFLATED) as target:
            for item in source.infolist():
                if item.filename == "config.json":
                    target.writestr(item, json.dumps(config))
                else:
                    target.writestr(item, source.read(item.filename))
    return new_path
