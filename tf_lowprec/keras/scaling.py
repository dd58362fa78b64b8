"""Per-tensor scaling of a role before it is rounded: current and delayed (`lp.Scaling`).

A scaled role is rounded as y = Q(sat(x * s)) / s, where Q rounds to the
role's float format, sat clips finite values to the format's largest finite
value M, and s is Transformer Engine's scale

    s = (M / amax) / 2^margin        (rounded down to a power of two if asked)

with amax = max|x| of the tensor itself ("current") or the largest amax of
the previous `history_length` training steps ("delayed").  docs/scaling.md
gives the arithmetic and the edge cases.

Delayed scaling keeps, per layer and scaled role, a scale and an amax
history: variables of a `ScaleState` sublayer the layer gets when it is
built (the adapter's "layer_built" event), so `model.save`, checkpoints and
`tf.distribute` treat them as layer state.  They are updated once per training step through
Keras' `overwrite_with_gradient` mechanism: the variables are read through an
identity (`_tracked_scale`) whose gradient function returns their new
values, and the optimizer assigns them outside the gradient computation.
The amax of each rounding of the step reaches that gradient function as a
value: forward operands are forward tensors; an error's amax is computed in
the gradient function of its rounding, which TensorFlow runs before the
identity's (the identity's output feeds every rounding of the step).

>>> from tf_lowprec.keras import scaling
>>> float(scaling.compute_scale(3.5, 448.0))  # E4M3's largest value / amax
128.0
>>> float(scaling.compute_scale(3.0, 448.0, power_of_two=True))  # 149.33 rounded down
128.0
"""

import keras
import tensorflow as tf

from tf_lowprec.keras import adapter
from tf_lowprec.keras import graphs
from tf_lowprec.keras.policy import ROLES, Policy
from tf_lowprec.numerics import rounding as rounding_lib

STATE_ATTRIBUTE = "_lowprec_scaling"
_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_MIN_NORMAL = 2.0**-126


def compute_scale(amax, fmt_max, margin=0, power_of_two=False, previous=1.0):
    """Transformer Engine's scale for `amax` (float32 tensor, any shape).

    s = (fmt_max / amax) / 2^margin in float32, clamped to [2^-126, float32
    max], rounded down to a power of two when `power_of_two`; `previous`
    where amax is below 2^-126 (zero, or a float32 subnormal, which
    TensorFlow's CPU kernels flush to zero anyway) or not finite.
    """
    amax = tf.convert_to_tensor(amax, tf.float32)
    raw = tf.math.divide(tf.constant(fmt_max, tf.float32), amax) / (2.0**margin)
    raw = tf.clip_by_value(raw, _FLOAT32_MIN_NORMAL, _FLOAT32_MAX)
    if power_of_two:  # keep the exponent bits: 2^floor(log2 raw) for a normal raw
        raw = tf.bitcast(tf.bitwise.bitwise_and(tf.bitcast(raw, tf.int32), 0x7F800000),
                         tf.float32)
    valid = tf.logical_and(amax >= _FLOAT32_MIN_NORMAL, tf.math.is_finite(amax))
    return tf.where(valid, raw, tf.cast(previous, tf.float32))


def scaled_round(x, scale, fmt, rounding="nearest_even", *, seed=None,
                 implementation="auto"):
    """Q(sat(x * scale)) / scale: the values of a scaled rounding (no gradient of its own).

    `scale` broadcasts against x.  Finite products beyond the format's largest
    finite value saturate to it; Inf and NaN follow the format.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    limit = fmt.max_value
    product = x * scale
    product = tf.where(tf.math.is_finite(x), tf.clip_by_value(product, -limit, limit), product)
    rounded = rounding_lib.round_to_format(product, fmt, rounding, seed=seed,
                                           implementation=implementation)
    return rounded / scale


def amax_of(x, granularity="tensor"):
    """max|x| (a scalar), or per slice along the last axis (shape [1, ..., 1, C])."""
    x = tf.convert_to_tensor(x, tf.float32)
    if granularity == "tensor":
        return tf.reduce_max(tf.abs(x))
    axes = list(range(x.shape.rank - 1))
    return tf.reduce_max(tf.abs(x), axis=axes, keepdims=True)


def _max_over_replicas(amax):
    """The largest amax of all replicas (Transformer Engine's amax reduction)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return amax
    return tf.reduce_max(context.all_gather(tf.reshape(amax, [1]), axis=0))


# State -------------------------------------------------------------------

def _delayed_roles(policy):
    """{role: Scaling} of the delayed roles of a policy (its first/last spec included)."""
    specs = [policy.spec] + ([policy.spec.first_last] if policy.spec.first_last else [])
    found = {}
    for spec in specs:
        for role in ROLES:
            scaling = spec.scaling(role)
            if scaling is None or not scaling.delayed:
                continue
            other = found.setdefault(role, scaling)
            if other.history_length != scaling.history_length:
                raise ValueError(
                    f"{role}: delayed scaling with history lengths {other.history_length} "
                    f"and {scaling.history_length} in one policy (spec and first_last); a "
                    "layer keeps one history per role")
    return found


def _owns_kernel(layer):
    return any(len(w.shape) >= 2 for w in adapter.own_weights(layer))


class ScaleState(keras.layers.Layer):
    """The scale and amax history of each delayed role of one layer (its sublayer).

    A sublayer rather than variables of the layer itself: layers such as
    Dense save and load exactly the variables they know, and a sublayer is
    saved by `model.save` and tracked by `tf.train.Checkpoint` on its own.
    The variables are trainable with `overwrite_with_gradient`, so Keras'
    train step computes their new values as "gradients" and the optimizer
    assigns them; `only_first_replica` aggregation keeps one value on every
    replica.
    """

    def __init__(self, history_lengths, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.history_lengths = dict(history_lengths)

    def build(self, input_shape=None):
        for role, length in self.history_lengths.items():
            setattr(self, f"{role}_scale", self.add_weight(
                shape=(), initializer="ones", name=f"{role}_scale", trainable=True,
                aggregation="only_first_replica", overwrite_with_gradient=True))
            setattr(self, f"{role}_amax_history", self.add_weight(
                shape=(length,), initializer="zeros", name=f"{role}_amax_history",
                trainable=True, aggregation="only_first_replica", overwrite_with_gradient=True))

    def get_config(self):
        return dict(super().get_config(), history_lengths=self.history_lengths)


def create_state(layer):
    """The adapter's "layer_built" listener: a `ScaleState` for a layer with delayed roles.

    Created for layers that own a kernel (a weight of rank >= 2; not models,
    not Embedding) under a `Policy` with delayed roles.  A layer without a
    kernel (Keras' Attention, the attention core of MultiHeadAttention) has
    no state; its delayed roles are scaled like current ones.
    """
    if isinstance(layer, (keras.Model, keras.layers.Embedding, ScaleState)):
        return
    policy = adapter.layer_policy(layer)
    if not isinstance(policy, Policy):
        return
    roles = _delayed_roles(policy)
    if not roles or not _owns_kernel(layer):
        return
    state = ScaleState({role: s.history_length for role, s in roles.items()},
                       name=f"{layer.name}_scaling")
    state.build()
    setattr(layer, STATE_ATTRIBUTE, state)


adapter.set_listener("layer_built", create_state)


def state_of(layer):
    """{role: (scale variable, amax-history variable)} of a layer's delayed roles."""
    state = getattr(layer, STATE_ATTRIBUTE, None)
    if state is None:
        return {}
    return {role: (getattr(state, f"{role}_scale"), getattr(state, f"{role}_amax_history"))
            for role in ROLES if role in state.history_lengths}


def _replica_id():
    """Index of the replica being traced (0 outside tf.distribute)."""
    context = tf.distribute.get_replica_context()
    replica = None if context is None else tf.get_static_value(
        context.replica_id_in_sync_group)
    return 0 if replica is None else int(replica)


def _tracked_scale(context, role, scaling, fmt):
    """(the delayed scale of this step, the list the step's amaxes go into), or None.

    One per outermost call (one traced training step) and replica, layer and
    role: every rounding of the role in the step uses the same scale and
    appends its amax; the identity's gradient function turns them into the
    new scale and history.  None for a layer without state (no kernel).

    Inside a recurrent layer's loop the list is None: the amax of every
    timestep cannot leave the loop as one value, so those roundings scale
    like current scaling, and the scale (made outside the loop) is only tied
    in, so that the state still gets its (then unchanged) new values.
    """
    layer = context.layer
    variables = state_of(layer).get(role)
    if variables is None:
        if _owns_kernel(layer):
            raise ValueError(
                f"layer {layer.name!r} has no delayed-scaling state for {role}: its policy "
                "was given after the layer was built.  Give the policy before building "
                "(construct the layer with it, or set keras.config.set_dtype_policy first)")
        return None
    # (Not the loop of Keras' steps_per_execution, around the whole training step.)
    in_loop = graphs.in_while_body() and any(isinstance(c, keras.layers.RNN)
                                             for c in context.callers)
    outer = context.outer_scope if context.outer_scope is not None else context
    registry = outer.__dict__.setdefault("_lowprec_delayed_scales", {})
    key = (id(layer), role, _replica_id())
    if key not in registry:
        scale_variable, history_variable = variables
        amaxes = []
        margin, power_of_two, fmt_max = scaling.margin, scaling.power_of_two, fmt.max_value

        @tf.custom_gradient
        def track(scale, history):
            def grad(unused_dscale):
                if not amaxes:
                    return scale, history
                amax = _max_over_replicas(tf.reduce_max(tf.stack(amaxes)))
                new_history = tf.concat([tf.reshape(amax, [1]), history[:-1]], 0)
                new_scale = compute_scale(tf.reduce_max(new_history), fmt_max, margin,
                                          power_of_two, previous=scale)
                return new_scale, new_history

            return tf.identity(scale), grad

        def tracked():
            return track(tf.convert_to_tensor(scale_variable),
                         tf.convert_to_tensor(history_variable))

        if in_loop:  # made once, around the loop (not once per timestep)
            with graphs.outer_graph().as_default():
                scale = tracked()
        else:
            scale = tracked()
        registry[key] = (scale, amaxes)
    scale, amaxes = registry[key]
    return scale, None if in_loop else amaxes


def _forward(x, scale, fmt, rounding, seed, implementation):
    """Scaled rounding with a straight-through gradient (zero for the scale)."""
    @tf.custom_gradient
    def rounded(v, s):
        def grad(dy):
            return dy, tf.zeros_like(s)

        return scaled_round(v, s, fmt, rounding, seed=seed, implementation=implementation), grad

    return rounded(x, scale)


def round_operand(context, x, role, fmt, rounding, scaling, seed):
    """A forward operand (activations, weights) rounded with its `Scaling`."""
    x = tf.convert_to_tensor(x, tf.float32)
    tracked = _tracked_scale(context, role, scaling, fmt) if scaling.delayed else None
    amax = amax_of(x, scaling.granularity)
    if tracked is None or tracked[1] is None:
        scale = compute_scale(amax, fmt.max_value, scaling.margin, scaling.power_of_two)
        if tracked is not None:  # in a recurrent loop: current scaling, the state tied in
            scale = scale + 0.0 * tracked[0]
    else:
        scale, amaxes = tracked
        amaxes.append(amax)
    return _forward(x, scale, fmt, rounding, seed, context.implementation)


def round_error(context, y, fmt, rounding, scaling, seed):
    """Identity on a GEMM's output whose gradient dY is rounded with its `Scaling`."""
    tracked = _tracked_scale(context, "errors", scaling, fmt) if scaling.delayed else None
    implementation = context.implementation
    margin, power_of_two = scaling.margin, scaling.power_of_two
    if tracked is None:
        @tf.custom_gradient
        def current(v):
            def grad(dy):
                scale = compute_scale(amax_of(dy), fmt.max_value, margin, power_of_two)
                return scaled_round(dy, scale, fmt, rounding, seed=seed,
                                    implementation=implementation)

            return tf.identity(v), grad

        return current(y)
    scale, amaxes = tracked

    @tf.custom_gradient
    def delayed(v, s):
        def grad(dy):
            if amaxes is None:  # in a recurrent loop: current scaling (docs/scaling.md)
                used = compute_scale(amax_of(dy), fmt.max_value, margin, power_of_two)
            else:
                amaxes.append(amax_of(dy))
                used = s
            return (scaled_round(dy, used, fmt, rounding, seed=seed,
                                 implementation=implementation), tf.zeros_like(s))

        return tf.identity(v), grad

    return delayed(y, scale)
