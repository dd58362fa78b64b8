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
sees are unscaled before the update.  See docs/loss_scaling.md.

The emulated layers (tf_lowprec.emulation) ask `current_error_scaler()` for
the optimizer of the step being traced; `scale_loss` makes an
`AdaptiveLossScaleOptimizer` current and `apply` releases it.

>>> import keras, tf_lowprec as lp
>>> opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.1))
>>> float(lp.loss_scaling.layer_scale(sigma=1e-7, max_abs=1e-6, fmt=lp.FP16))
256.0
"""

import math
import threading
import weakref

import keras
import tensorflow as tf

from tf_lowprec import formats as formats_lib

DEFAULT_UNDERFLOW_RATE = 1e-3
_state = threading.local()


def current_error_scaler():
    """The AdaptiveLossScaleOptimizer whose step is being built, or None."""
    ref = getattr(_state, "scaler", None)
    return ref() if ref is not None else None


def _set_current(optimizer):
    _state.scaler = weakref.ref(optimizer) if optimizer is not None else None


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
    if isinstance(fmt, formats_lib.DfpFormat):
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


def error_statistics(errors):
    """(RMS, max |x|) of a tensor, averaged / maxed over replicas when distributed."""
    x = tf.cast(errors, tf.float32)
    finite = tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))
    mean_square = tf.reduce_mean(tf.square(finite))
    max_abs = tf.reduce_max(tf.abs(finite)) if x.shape.num_elements() != 0 else tf.constant(0.0)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        # Every replica must choose the same scale: combine their statistics.
        mean_square = context.all_reduce(tf.distribute.ReduceOp.MEAN, mean_square)
        max_abs = tf.reduce_max(context.all_gather(tf.reshape(max_abs, [1]), axis=0))
    return tf.sqrt(mean_square), max_abs


@keras.saving.register_keras_serializable(package="tf_lowprec")
class AdaptiveLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' dynamic loss scaling plus a scale per emulated layer.

    Args:
      inner_optimizer: any Keras optimizer (SGD, Adam, AdamW, ...).
      initial_scale: initial global loss scale: the upper bound of every
        layer's scale and the fallback when gradients overflow.
      dynamic_growth_steps: finite steps before the global scale doubles.
      underflow_rate: the target fraction T_uf of a layer's error that may
        underflow (Zhao et al. use 1e-3).
      min_scale, max_scale: bounds of a layer scale (powers of two).
      adaptive: False gives plain global dynamic loss scaling (the
        comparison the experiments make).

    The layer scales of the last step are kept in `layer_scales` (a dict from
    layer path to a variable) for callbacks and checkpoints; they are
    optimizer variables, so `model.save` and `tf.train.Checkpoint` keep them.
    """

    def __init__(self, inner_optimizer, initial_scale=2.0**15, dynamic_growth_steps=2000,
                 underflow_rate=DEFAULT_UNDERFLOW_RATE, min_scale=2.0**-24,
                 max_scale=2.0**24, adaptive=True, name=None, **kwargs):
        super().__init__(inner_optimizer, initial_scale=initial_scale,
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
        self.underflow_rate = float(underflow_rate)
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.adaptive = adaptive
        self.layer_scales = {}

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

    def scale_loss(self, loss):
        # The backward pass of this step is traced after scale_loss: make this
        # optimizer the one emulated layers consult for their error scales.
        _set_current(self if self.adaptive else None)
        return super().scale_loss(loss)

    def apply(self, grads, trainable_variables=None):
        _set_current(None)
        return super().apply(grads, trainable_variables)

    def error_scale(self, layer_path, errors, fmt):
        """Relative factor for `errors` (which carry the global scale) at a layer.

        Called by the emulation inside the gradient graph.  Returns a float32
        power of two alpha: the layer rounds alpha * errors and divides its
        GEMM outputs by alpha.  Records the layer's absolute scale.
        """
        global_scale = self.dynamic_scale if self.built else tf.constant(self.initial_scale)
        global_scale = tf.cast(global_scale, tf.float32)
        rms, max_abs = error_statistics(errors)
        absolute = layer_scale(rms / global_scale, max_abs / global_scale, fmt,
                               underflow_rate=self.underflow_rate, min_scale=self.min_scale,
                               max_scale=self.max_scale, upper_bound=global_scale)
        variable = self.layer_scales.get(layer_path)
        if variable is not None:
            variable.assign(absolute)
        return absolute / global_scale

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "underflow_rate": self.underflow_rate,
                "min_scale": self.min_scale,
                "max_scale": self.max_scale,
                "adaptive": self.adaptive,
            }
        )
        return config


# Warning when loss scaling is missing --------------------------------------

_warned = set()


def _needs_loss_scaling(policy):
    """Whether a policy rounds errors to a format with at most FP16's range."""
    from tf_lowprec import policy as policy_lib  # noqa: PLC0415

    if not isinstance(policy, policy_lib.Policy):
        return False
    specs = [policy.spec] + ([policy.spec.first_last] if policy.spec.first_last else [])
    for spec in specs:
        entry = spec.role("errors")
        if entry is not None and isinstance(entry[0], formats_lib.FloatFormat) and (
            entry[0].exponent_bits <= 5
        ):
            return True
    return False


def warn_if_unscaled(model):
    """Warns once per policy name when `model` needs loss scaling and has none.

    Called after `Model.compile` (see `_keras_hooks`).
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return
    if getattr(optimizer, "loss_scale_factor", None):
        return  # a fixed scale is a deliberate choice
    inner = getattr(optimizer, "inner_optimizer", None)  # e.g. LowPrecisionWeights
    if isinstance(inner, keras.optimizers.LossScaleOptimizer):
        return
    layers = [model] + list(model._flatten_layers(include_self=False))
    names = sorted({layer.dtype_policy.name for layer in layers
                    if _needs_loss_scaling(layer.dtype_policy)})
    new = [n for n in names if n not in _warned]
    if not new:
        return
    _warned.update(new)
    import warnings  # noqa: PLC0415

    warnings.warn(
        f"tf_lowprec: policies {', '.join(map(repr, new))} round backward errors to a format "
        "with FP16's range or less, and the optimizer has no loss scaling, so small "
        "gradients will underflow. Wrap it: optimizer=lp.AdaptiveLossScaleOptimizer(opt) "
        "(layer-wise, Zhao et al. 2019) or keras.optimizers.LossScaleOptimizer(opt) "
        "(global dynamic); Keras only does this itself for 'mixed_float16'.",
        UserWarning,
        stacklevel=3,
    )


# The backward-pass side: a role hook of tf_lowprec.emulation ---------------
#
# For one emulated GEMM the hook builds, in the forward pass,
#     y = scale_errors(round_errors(op(unscale(Q_a(a)), unscale(Q_w(w)))))
# (with unscale applied before each operand quantizer, so that a weight
# gradient rounded by Q_w's backward format is rounded while still scaled).
# Backward: scale_errors computes alpha from dY's statistics (when an
# AdaptiveLossScaleOptimizer is current) and multiplies; round_errors rounds
# alpha * dY; the FP32 GEMM gradients are divided by alpha in `unscale`.
# alpha travels from the first gradient function to the others in a cell of
# the call's LayerContext: TensorFlow runs them in that order (data
# dependence), in eager mode and when tracing alike.


def _scaled_error_format(context):
    entry = context.spec.role("errors")
    if entry is None or not isinstance(entry[0], formats_lib.FloatFormat):
        return None
    return entry[0]


def _cell(context):
    cell = getattr(context, "_lowprec_error_scale", None)
    if cell is None:
        cell = context._lowprec_error_scale = {}
    return cell


def _error_scale_hook(context, role, x, round_fn):
    fmt = _scaled_error_format(context)
    if fmt is None or role not in ("activations", "weights", "errors"):
        return round_fn(x)
    cell = _cell(context)
    if role == "errors":

        @tf.custom_gradient
        def scale_errors(v):
            def grad(dy):
                scaler = current_error_scaler()
                if scaler is None:
                    cell["alpha"] = None
                    return dy
                alpha = scaler.error_scale(context.layer.path or context.layer.name, dy, fmt)
                cell["alpha"] = alpha
                return dy * alpha

            return tf.identity(v), grad

        return scale_errors(round_fn(x))

    @tf.custom_gradient
    def unscale(v):
        def grad(dy):
            alpha = cell.get("alpha")
            return dy if alpha is None else dy / alpha

        return tf.identity(v), grad

    return round_fn(unscale(x))


def _install_hook():
    from tf_lowprec import emulation  # noqa: PLC0415

    emulation.add_role_hook(_error_scale_hook)


_install_hook()
