"""Layer-wise adaptive loss scaling (Zhao et al. 2019) for emulated training.

`AdaptiveLossScaleOptimizer` wraps any Keras optimizer.  On top of Keras'
global dynamic loss scale (skip the step and halve the scale on Inf/NaN
gradients, double it after `dynamic_growth_steps` finite steps), it gives every
emulated layer its own scale for the error tensor that layer rounds to its
backward format:

- In the backward pass, at the layer's GEMM/convolution boundary, the error
  dY that is about to be rounded to the backward format (FP16, E5M2, ...) is
  multiplied by a power of two chosen from dY's own statistics
  (`layer_scale`), rounded, fed to both backward GEMMs, and the FP32 GEMM
  outputs (dX, and dW after its own rounding) are divided by the same power
  of two.  Powers of two make both steps exact.
- The scale follows Zhao et al.'s "approx range" rule: for x ~ N(0, sigma^2)
  the scale alpha with P(|alpha x| < u_min) = T_uf is
  `alpha = u_min / (sigma * sqrt(2) * erfinv(T_uf))` (u_min the format's
  smallest subnormal, T_uf = 1e-3), raised to at least 1, lowered so that the
  largest element stays below the format's largest value (so scales below 1
  appear where the statistics call for them), rounded down to a power of two
  and clipped to [min_scale, max_scale] and to the global dynamic scale.

Why scales are applied and undone at each layer rather than accumulated down
the network as in the paper: there, GEMM outputs are stored in FP16, so a
scale applied at layer i must travel with the error to layer i-1 (and be
reconciled where branches join).  In the emulation every GEMM output is FP32,
and every low-precision error tensor is rounded at a GEMM boundary where its
own scale applies, so no scale needs to travel: each layer's error gets the
scale its own statistics call for, and the weight gradients the optimizer
sees are unscaled before the update.  `scaling_rule="paper"` runs the
paper's own algorithm instead (`paper_layer_scale`: statistics of the
product error x weight of the next GEMM, scales accumulated down the network
through `tf_lowprec.keras.scale_chain`, capped at 16 per layer and 1024
accumulated).  See docs/loss_scaling.md.

Only models compiled with an `AdaptiveLossScaleOptimizer` scale their
layers' errors: the emulated GEMMs (`tf_lowprec.keras.emulation.ErrorScaling`)
find the optimizer as the model's `optimizer`, compute each scale inside the
gradient graph as a value, and pass it between the gradient functions as
data; the scales leave the gradient graph as values (`collect_error_scales`)
and `apply` assigns them to `layer_scales`, outside it.  So recurrent layers,
whose backward pass runs inside a tf.while_loop, scale per timestep.

>>> import keras, tf_lowprec as lp
>>> opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.1))
>>> float(lp.loss_scaling.layer_scale(sigma=1e-7, max_abs=1e-6, fmt=lp.FP16))
256.0
"""

import contextlib
import math
import threading

import keras
import tensorflow as tf

from tf_lowprec.keras import adapter
from tf_lowprec.keras import policy as policy_lib
from tf_lowprec.numerics import formats as formats_lib

DEFAULT_UNDERFLOW_RATE = 1e-3
SCALING_RULES = ("local", "paper")
# The caps of Zhao et al.'s code (`scale_upper_bound`, `accum_upper_bound` of
# their AdaLoss class): no layer multiplies its error by more than 16, and the
# scales accumulated down the network stay within 1024 of the loss scale.
PAPER_LAYER_CAP = 16.0
PAPER_ACCUMULATED_CAP = 1024.0


def _erfinv(p):
    return tf.math.erfinv(tf.constant(p, tf.float64))


def underflow_scale(sigma, u_min, underflow_rate=DEFAULT_UNDERFLOW_RATE):
    """Zhao et al.'s scale with P(|alpha x| < u_min) = underflow_rate, x ~ N(0, sigma^2).

    The unclipped, unrounded value of the rule (a float64 tensor).
    """
    sigma = tf.cast(sigma, tf.float64)
    return u_min / (sigma * math.sqrt(2.0) * _erfinv(underflow_rate))


def layer_scale(sigma, max_abs, fmt, *, underflow_rate=DEFAULT_UNDERFLOW_RATE,
                min_scale=2.0**-24, max_scale=2.0**24, upper_bound=None):
    """The power-of-two scale for an error tensor with RMS `sigma` and max `max_abs`.

    Works on Python floats and on float32 tensors alike (the emulation calls
    it inside the gradient graph).  Returns 1 for tensors that are all zero
    and for DFP formats, whose shared exponent already follows the data.
    """
    fmt = formats_lib.get(fmt)
    if not fmt.fixed_range:
        return tf.constant(1.0)
    sigma = tf.cast(sigma, tf.float64)
    max_abs = tf.cast(max_abs, tf.float64)
    u_min, u_max = fmt.min_subnormal, fmt.max_value
    alpha = tf.math.divide_no_nan(
        tf.constant(u_min, tf.float64), sigma * math.sqrt(2.0) * _erfinv(underflow_rate)
    )
    alpha = tf.maximum(alpha, 1.0)  # scale up only where underflow threatens
    over = tf.math.divide_no_nan(tf.constant(u_max, tf.float64), max_abs)
    alpha = tf.where(max_abs > 0, tf.minimum(alpha, over), alpha)
    alpha = tf.clip_by_value(alpha, min_scale, max_scale)
    if upper_bound is not None:
        alpha = tf.minimum(alpha, tf.cast(upper_bound, tf.float64))
    alpha = tf.pow(tf.constant(2.0, tf.float64), tf.floor(tf.math.log(alpha) / math.log(2.0)))
    alpha = tf.where(sigma > 0, alpha, tf.ones_like(alpha))
    return tf.cast(alpha, tf.float32)


def paper_layer_scale(error_mean_square, error_max, weight_mean_square, weight_max, fan_in,
                      carried, fmt, *, underflow_rate=DEFAULT_UNDERFLOW_RATE,
                      layer_cap=PAPER_LAYER_CAP, accumulated_cap=PAPER_ACCUMULATED_CAP):
    """Zhao et al.'s scale for one layer, from the statistics of the product the next GEMM forms.

    The error (as stored: already multiplied by the accumulated scale
    `carried`, relative to the loss scale) is about to be multiplied by the
    weights in the dX GEMM, whose `fan_in` products are summed per output.
    For the products o = e * w, taken as zero-mean with
    sigma_o^2 = E[e^2] E[w^2] and |o| <= max|e| max|w|:

        alpha = max(u_min / (sigma_o sqrt(2) erfinv(T_uf)), 1)
        alpha = min(alpha, u_max / (fan_in max|o|), accumulated_cap / carried, layer_cap)
        alpha = 2^floor(log2 alpha)

    Returns 1 where the product is all zero, or for a DFP format.  Works on
    Python floats and float32 tensors.

    >>> import tf_lowprec as lp
    >>> float(lp.loss_scaling.paper_layer_scale(1e-14, 1e-6, 1e-2, 0.5, 256, 1.0, lp.FP16))
    16.0
    """
    fmt = formats_lib.get(fmt)
    if not fmt.fixed_range:
        return tf.constant(1.0)
    f64 = tf.float64
    sigma = tf.sqrt(tf.cast(error_mean_square, f64) * tf.cast(weight_mean_square, f64))
    o_max = tf.cast(error_max, f64) * tf.cast(weight_max, f64)
    alpha = tf.math.divide_no_nan(
        tf.constant(fmt.min_subnormal, f64), sigma * math.sqrt(2.0) * _erfinv(underflow_rate))
    alpha = tf.maximum(alpha, 1.0)
    over = tf.math.divide_no_nan(tf.constant(fmt.max_value, f64),
                                 tf.cast(fan_in, f64) * o_max)
    alpha = tf.where(o_max > 0, tf.minimum(alpha, over), alpha)
    alpha = tf.minimum(alpha, accumulated_cap / tf.cast(carried, f64))
    alpha = tf.minimum(alpha, layer_cap)
    # Scales below 2^-24 (only an overflow bound can ask for them) are not useful.
    alpha = tf.maximum(alpha, 2.0**-24)
    alpha = tf.pow(tf.constant(2.0, f64), tf.floor(tf.math.log(alpha) / math.log(2.0)))
    alpha = tf.where(sigma > 0, alpha, tf.ones_like(alpha))
    return tf.cast(alpha, tf.float32)


def error_statistics(errors):
    """(RMS, max |x|) of a tensor, averaged / maxed over replicas when distributed."""
    x = tf.cast(errors, tf.float32)
    finite = tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))
    mean_square = tf.reduce_mean(tf.square(finite))
    max_abs = tf.reduce_max(tf.abs(finite)) if x.shape.num_elements() != 0 else tf.constant(0.0)
    context = tf.distribute.get_replica_context()
    # Inside control flow (a recurrent layer's while-loop gradient, one
    # timestep at a time) tf.distribute cannot synchronise replicas: there
    # each replica scales its own errors.  The scales are powers of two,
    # divided out of the gradients exactly, so replicas stay consistent; only
    # which tiny values underflow can differ from one device.
    in_control_flow = getattr(tf.compat.v1.get_default_graph(), "is_control_flow_graph", False)
    if context is not None and context.num_replicas_in_sync > 1 and not in_control_flow:
        # Every replica must choose the same scale: combine their statistics.
        mean_square = context.all_reduce(tf.distribute.ReduceOp.MEAN, mean_square)
        max_abs = tf.reduce_max(context.all_gather(tf.reshape(max_abs, [1]), axis=0))
    return tf.sqrt(mean_square), max_abs


@keras.saving.register_keras_serializable(package="tf_lowprec")
class AdaptiveLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' dynamic loss scaling plus a scale per emulated layer.

    Args:
      inner_optimizer: any Keras optimizer (SGD, Adam, AdamW, ...), or what
        `keras.optimizers.get` accepts: a name ("adam") or a config dict.
      initial_scale: initial global loss scale: the upper bound of every
        layer's scale and the fallback when gradients overflow.
      dynamic_growth_steps: finite steps before the global scale doubles.
      underflow_rate: the target fraction T_uf of a layer's error that may
        underflow (Zhao et al. use 1e-3).
      min_scale, max_scale: bounds of a layer scale (powers of two).
      adaptive: False gives plain global dynamic loss scaling (the
        comparison the experiments make).
      scaling_rule: "local" (the default: each layer's scale from the
        statistics of the error it rounds, applied and undone at the layer)
        or "paper" (Zhao et al.'s algorithm: the scale from the statistics
        of the product error x weight of the next GEMM, scales accumulated
        down the network with the error stored in the error format at the
        accumulated scale, capped at 16 per layer and 1024 accumulated;
        docs/loss_scaling.md, "scaling_rule='paper'").

    The layer scales of the last step are kept in `layer_scales` (a dict from
    layer path to a variable) for callbacks and checkpoints; they are
    optimizer variables, so `model.save` and `tf.train.Checkpoint` keep them.
    A layer that scaled several errors in the step (a recurrent layer, one
    per timestep) records their geometric mean, rounded to a power of two.
    """

    def __init__(self, inner_optimizer, initial_scale=2.0**15, dynamic_growth_steps=2000,
                 underflow_rate=DEFAULT_UNDERFLOW_RATE, min_scale=2.0**-24,
                 max_scale=2.0**24, adaptive=True, scaling_rule="local", name=None,
                 **kwargs):
        super().__init__(keras.optimizers.get(inner_optimizer), initial_scale=initial_scale,
                         dynamic_growth_steps=dynamic_growth_steps, name=name, **kwargs)
        if not 0.0 < underflow_rate < 1.0:
            raise ValueError(f"underflow_rate must be in (0, 1), got {underflow_rate!r}")
        if not 0.0 < min_scale <= max_scale:
            raise ValueError(
                f"min_scale and max_scale must satisfy 0 < min_scale <= max_scale; got "
                f"{min_scale!r}, {max_scale!r}"
            )
        if not isinstance(adaptive, bool):
            raise ValueError(f"adaptive must be True or False, got {adaptive!r}")
        if scaling_rule not in SCALING_RULES:
            raise ValueError(
                f"scaling_rule must be one of 'local' or 'paper'; got {scaling_rule!r}")
        self.scaling_rule = scaling_rule
        self.underflow_rate = float(underflow_rate)
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.adaptive = adaptive
        self.layer_scales = {}
        # Scale statistics of the steps being computed, per (graph, replica):
        # {layer path: [sum of log2 scales, count]}, handed over as values by
        # the gradient computation and assigned in `apply`.
        self._collected = {}
        self._collected_lock = threading.Lock()

    def build(self, var_list):
        super().build(var_list)
        # One scale variable per layer that owns trainable variables, keyed by
        # the layer's path (a variable's path minus its own name).
        with keras.name_scope(self.name, caller=self):
            for path in sorted({v.path.rsplit("/", 1)[0] for v in var_list if "/" in v.path}):
                self.layer_scales[path] = self.add_variable(
                    shape=(), dtype="float32", initializer="ones",
                    aggregation="only_first_replica",
                    name="layer_scale_" + path.replace("/", "_"),
                )

    # The error scaler of the emulated GEMMs (tf_lowprec.keras.emulation.ErrorScaling).

    def gemm_error_scaler(self):
        """This optimizer, when it scales layer errors (adaptive), else None.

        A method, not a property: Keras' saving walks an optimizer's attributes.
        """
        return self if self.adaptive else None

    def global_error_scale(self):
        """float32 scalar: the global loss scale the errors carry (read in the forward pass)."""
        scale = self.dynamic_scale if self.built else self.initial_scale
        return tf.cast(tf.convert_to_tensor(scale), tf.float32)

    def error_scale(self, errors, global_scale, fmt):
        """The absolute power-of-two scale for `errors`, which carry `global_scale`.

        A value computed inside the gradient graph; the layer rounds
        `errors * scale / global_scale` and divides its GEMM gradients by
        `scale / global_scale`.
        """
        rms, max_abs = error_statistics(errors)
        return layer_scale(rms / global_scale, max_abs / global_scale, fmt,
                           underflow_rate=self.underflow_rate, min_scale=self.min_scale,
                           max_scale=self.max_scale, upper_bound=global_scale)

    def paper_error_scale(self, stored, weight_mean_square, weight_max, fan_in, carried, fmt):
        """Zhao et al.'s layer scale alpha (float32) for the stored error `stored`.

        `stored`: the error as the layer receives it, in units of the loss
        scale times `carried` (the accumulated scale relative to the loss
        scale); the weight statistics are those of the GEMM's other operand,
        as rounded; `fan_in`: the products summed per element of dX.
        """
        rms, max_abs = error_statistics(stored)
        return paper_layer_scale(tf.square(rms), max_abs, weight_mean_square, weight_max, fan_in,
                                 carried, fmt, underflow_rate=self.underflow_rate)

    def collect_error_scales(self, layer_path, statistics):
        """Receives [sum of log2 scales, count] of a layer, in the training step's graph."""
        key = _trace_key()
        with self._collected_lock:
            step = self._collected.setdefault(key, {})
            step[layer_path] = statistics + step[layer_path] if layer_path in step else statistics

    def apply(self, grads, trainable_variables=None):
        result = super().apply(grads, trainable_variables)
        # After the gradient computation, in the step's own graph: record the
        # scales the layers used.
        with self._collected_lock:
            step = self._collected.pop(_trace_key(), {})
        for path, statistics in step.items():
            variable = self.layer_scales.get(path)
            if variable is not None:
                variable.assign(tf.pow(2.0, tf.round(statistics[0] / statistics[1])))
        return result

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "underflow_rate": self.underflow_rate,
                "min_scale": self.min_scale,
                "max_scale": self.max_scale,
                "adaptive": self.adaptive,
                "scaling_rule": self.scaling_rule,
            }
        )
        return config


# Automatic loss scaling at compile ---------------------------------------

AUTOMATIC_MODES = ("adaptive", "dynamic", None)
# Process-wide, as Keras' own global dtype policy is.
_automatic = {"mode": "adaptive"}


def _trace_key():
    """The graph being built (None when eager) and the replica being traced."""
    graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
    context = tf.distribute.get_replica_context()
    replica = None if context is None else tf.get_static_value(
        context.replica_id_in_sync_group)
    return graph, None if replica is None else int(replica)


def set_automatic_loss_scaling(mode):
    """Chooses what `Model.compile` adds for policies whose errors need loss scaling.

    Args:
      mode: "adaptive" (the default: `AdaptiveLossScaleOptimizer`), "dynamic"
        (Keras' global `keras.optimizers.LossScaleOptimizer`) or None (leave
        the optimizer as given).

    >>> import tf_lowprec as lp
    >>> lp.set_automatic_loss_scaling("dynamic")
    >>> lp.automatic_loss_scaling()
    'dynamic'
    >>> lp.set_automatic_loss_scaling("adaptive")
    """
    if mode not in AUTOMATIC_MODES:
        raise ValueError(
            f"mode must be one of 'adaptive', 'dynamic' or None; got {mode!r}"
        )
    _automatic["mode"] = mode


def automatic_loss_scaling():
    """The mode `set_automatic_loss_scaling` set: "adaptive", "dynamic" or None."""
    return _automatic["mode"]


@contextlib.contextmanager
def automatic_loss_scaling_mode(mode):
    """`set_automatic_loss_scaling(mode)` inside a `with` block, the previous mode after it.

    >>> import keras, tf_lowprec as lp
    >>> model = keras.Sequential([keras.Input((3,)),
    ...                           keras.layers.Dense(2, dtype=lp.Policy("fp16"))])
    >>> with lp.loss_scaling.automatic_loss_scaling_mode(None):   # FP16 without loss scaling
    ...     model.compile(optimizer="sgd", loss="mse")
    >>> type(model.optimizer).__name__
    'SGD'
    """
    previous = automatic_loss_scaling()
    set_automatic_loss_scaling(mode)
    try:
        yield
    finally:
        set_automatic_loss_scaling(previous)


def needs_loss_scaling(policy):
    """Whether a policy rounds errors, unscaled, to a format with at most FP16's range."""
    if not isinstance(policy, policy_lib.Policy):
        return False
    specs = [policy.spec] + ([policy.spec.first_last] if policy.spec.first_last else [])
    for spec in specs:
        entry = spec.role("errors")
        if entry is not None and entry[0].needs_loss_scaling and spec.scaling("errors") is None:
            return True  # scaled errors (lp.Scaling) bring their own range
    return False


def _has_loss_scaling(optimizer):
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return True
    if getattr(optimizer, "loss_scale_factor", None):
        return True  # a fixed scale is a deliberate choice
    inner = getattr(optimizer, "inner_optimizer", None)  # e.g. LowPrecisionWeights
    return isinstance(inner, keras.optimizers.LossScaleOptimizer)


def with_automatic_loss_scaling(model, optimizer):
    """The optimizer `model` compiles with: wrapped when its policies need loss scaling.

    The adapter's "compiling" listener (before `Model.compile`), as Keras
    wraps the optimizer for "mixed_float16": when a layer's `lp.Policy`
    rounds backward errors to a format with FP16's range or less (fp16,
    fp8, hfp8, ...) and the optimizer has no loss scaling of its own, it is
    wrapped in `AdaptiveLossScaleOptimizer` (or Keras' `LossScaleOptimizer`,
    per `set_automatic_loss_scaling`).  `optimizer` is what the caller gave
    `compile`: a name, a config dict or an instance.
    """
    mode = _automatic["mode"]
    if mode is None or optimizer is None:
        return optimizer
    if not any(needs_loss_scaling(adapter.layer_policy(layer))
               for layer in adapter.model_layers(model)):
        return optimizer
    optimizer = keras.optimizers.get(optimizer)
    if _has_loss_scaling(optimizer):
        return optimizer
    if mode == "adaptive":
        return AdaptiveLossScaleOptimizer(optimizer)
    return keras.optimizers.LossScaleOptimizer(optimizer)


adapter.set_listener("compiling", with_automatic_loss_scaling)
