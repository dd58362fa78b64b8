"""Emulated GEMMs and convolutions: the numerics behind `tf_lowprec.Policy`.

Every emulated op follows the tensor flow of the mixed-precision papers:

    forward:   y  = op(Q_a(a), Q_w(w))          FP32 op on rounded operands
    backward:  dY' = Q_e(dY)                    the error, rounded once
               da = op_grad_a(dY', Q_w(w))      (straight through Q_a)
               dw = Q_g(op_grad_w(Q_a(a), dY'))

Q_a and Q_w are operand quantizers with a straight-through gradient (Q_w's
gradient rounds dw to the `weight_gradients` format when the spec has one),
and Q_e is `round_gradient`, an identity on the op's *output* whose gradient
rounds dY before it reaches both backward GEMMs.

Block-scaled formats (`BlockFormat`: OCP MX, NVFP4) are blocked along the
axis each GEMM sums over: in matrix products and einsums every one of the
three GEMMs quantizes its own operands (`block_scaled_product`); in
convolutions the operands are blocked along their channels and the error
along the output channels, once (docs/block_formats.md, "In a policy").

A `LayerContext` holds what the rounding of one layer call needs: the layer,
its policy, the spec in force (the first/last-layer override included), the
implementation and the seeds.  The Keras adapter (`tf_lowprec.keras.adapter`)
hands every routed backend op to `route_gemm`, which builds one when the
innermost layer has a `Policy`; every rounding goes through
`LayerContext.round`, where role hooks (`add_role_hook`) can observe tensors
per layer and role (the `PrecisionMonitor`'s statistics).

Per-layer loss scaling is not a hook: a GEMM scales its error only for a
model compiled with an optimizer that offers a `gemm_error_scaler`
(`tf_lowprec.AdaptiveLossScaleOptimizer`), and everything that passes
between the gradient functions of one GEMM travels as data in the gradient
graph (see `ErrorScaling`).

>>> import keras, numpy as np, tf_lowprec as lp
>>> layer = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones",
...                            dtype=lp.Policy("bf16"))
>>> float(layer(np.array([[1.0 + 2.0**-9]], "float32"))[0, 0])  # input rounds to 1.0
1.0
"""

import functools
import math
import random
import weakref
import zlib

import keras
import numpy as np
import tensorflow as tf

from tf_lowprec.gemm import common as gemm_common
from tf_lowprec.gemm import registry as gemm_registry
from tf_lowprec.keras import adapter
from tf_lowprec.keras import coverage
from tf_lowprec.keras import graphs
from tf_lowprec.keras import scale_chain
from tf_lowprec.keras import scaling as scaling_lib
from tf_lowprec.keras.policy import ROLES, Policy
from tf_lowprec.numerics import rounding as rounding_lib

# Salts that make the seeds of the roles of one layer call independent
# ("accumulator": the stochastic rounding of the sums of a GEMM).
_ROLE_IDS = {role: index + 1 for index, role in enumerate(ROLES + ("accumulator",))}
_role_hooks = []
_process_seed = None
# GEMM-bearing layers of each model: first and last (for first_last specs).
_first_last_cache = weakref.WeakKeyDictionary()
# Weights rounded once per graph (and layer call) outside a recurrent loop.
_hoisted_weights = weakref.WeakKeyDictionary()


def add_role_hook(hook):
    """Registers `hook(context, role, x, round_fn, axis) -> tensor` around every rounding.

    Hooks run outermost-first; each must return `round_fn(x)` or a tensor
    derived from it (or from x).  `axis`: the axis block-scaled formats are
    blocked along for this tensor (`LayerContext.role_format`).  Returns a
    function that removes the hook.
    """
    _role_hooks.append(hook)

    def remove():
        if hook in _role_hooks:
            _role_hooks.remove(hook)

    return remove


def _global_seed():
    seed = adapter.keras_global_seed()
    if seed is not None:
        return int(seed)
    # Keras keeps its seed per thread, and tf.distribute traces replicas in
    # threads of their own; `keras.utils.set_random_seed` also sets
    # TensorFlow's process-wide seed, which every thread sees.
    graph_seed = tf.compat.v1.get_default_graph().seed
    if graph_seed is not None:
        return int(graph_seed)
    global _process_seed
    if _process_seed is None:  # no seed set anywhere: one random base per process
        _process_seed = random.SystemRandom().getrandbits(31)
    return _process_seed


def _replica_id():
    """Index of the replica being traced (0 outside tf.distribute)."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return 0
    replica = tf.get_static_value(context.replica_id_in_sync_group)
    return 0 if replica is None else int(replica)


def _is_variable(x):
    return isinstance(x, (keras.Variable, tf.Variable))


def _gemm_layers(model):
    """Leaf layers with a weight matrix (or kernel) in execution order, Embedding excluded."""
    found = []

    def visit(layer):
        sublayers = getattr(layer, "layers", None)
        if isinstance(layer, keras.Model) and sublayers is not None:
            for sub in sublayers:
                visit(sub)
            return
        if isinstance(layer, keras.layers.Embedding):
            return
        if any(len(w.shape) >= 2 for w in layer.trainable_weights):
            found.append(layer)

    visit(model)
    return found


def first_and_last_layers(model):
    """The first and last GEMM-bearing layers of `model` (None, None if it has none)."""
    key = len(model.layers) if hasattr(model, "layers") else 0
    cached = _first_last_cache.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    layers = _gemm_layers(model)
    result = (layers[0], layers[-1]) if layers else (None, None)
    _first_last_cache[model] = (key, result)
    return result


class LayerContext:
    """What the emulated ops of one layer call need.

    Args:
      layer: the innermost Keras layer being called (its policy applies).
      policy: that layer's `tf_lowprec.Policy`.
      callers: the layers being called, outermost first (`callers[-1]` is
        `layer`): the outermost model decides the training step, XLA and the
        first/last layers.
      scope: the Keras name-scope entry of this call, which holds the
        per-call GEMM counter.
      outer_scope: the name-scope entry of the outermost call, which holds
        the per-layer call counters.
    """

    def __init__(self, layer, policy, callers, scope=None, outer_scope=None):
        self.layer = layer
        self.policy = policy
        self.callers = callers
        self.scope = scope
        self.outer_scope = outer_scope
        models = [c for c in callers if isinstance(c, keras.Model)]
        self.model = models[0] if models else None
        spec = policy.spec
        if spec.first_last is not None and self.model is not None:
            first, last = first_and_last_layers(self.model)
            if any(c is first or c is last for c in callers if c is not None):
                spec = spec.first_last
        self.spec = spec
        self.implementation = policy.implementation
        if self.model is not None and getattr(self.model, "jit_compile", False) is True:
            # XLA cannot compile the C++ kernels: use the bit-identical pure-TF path.
            self.implementation = "tf"
        self._gemm_index = None
        self._step = None

    # Seeds -------------------------------------------------------------

    def _call_index(self):
        """(call number of this layer in the outermost call, GEMM number in this call).

        Both count from 0 in each outermost layer call (one traced train step,
        or one eager call), so eager and graph execution draw the same seeds.
        """
        if self._gemm_index is None:
            scope = self.scope if self.scope is not None else self
            if not hasattr(scope, "_lowprec_call"):
                outer = self.outer_scope if self.outer_scope is not None else scope
                counters = outer.__dict__.setdefault("_lowprec_calls", {})
                # Per replica: MirroredStrategy traces each replica in its own
                # thread, in one graph; counting per replica keeps the seeds
                # independent of the thread order and equal to a one-device
                # run on the same shard.
                key = (id(self.layer), _replica_id())
                scope._lowprec_call = counters.get(key, 0)
                counters[key] = scope._lowprec_call + 1
                scope._lowprec_gemms = 0
            self._gemm_index = (scope._lowprec_call, scope._lowprec_gemms)
            scope._lowprec_gemms += 1
        return self._gemm_index

    def training_step(self):
        """int64 scalar: the outermost model's optimizer step (0 without one)."""
        if self._step is None:
            optimizer = getattr(self.model, "optimizer", None) if self.model is not None else None
            iterations = getattr(optimizer, "iterations", None)
            if iterations is None:
                self._step = tf.constant(0, tf.int64)
            else:
                self._step = tf.cast(tf.convert_to_tensor(iterations), tf.int64)
        return self._step

    def layer_key(self):
        """The layer's name chain below the outermost model, e.g. "block/dense_1".

        What the seeds hash to tell layers apart: the names of the layers
        being called, without the outermost model's, are saved with the model
        and unique within each model level, so they survive save/load (where
        `layer.path` changes: "sequential/dense" is "dense" after
        `load_model`) and renaming the model, and an exact resume from a
        checkpoint draws the uninterrupted run's stochastic roundings.
        """
        chain = list(self.callers)
        if len(chain) > 1 and isinstance(chain[0], keras.Model):
            chain = chain[1:]
        return "/".join(c.name for c in chain if c is not None)

    def seed(self, role):
        """int64[2] stateless seed from the global Keras seed, layer, call, role and step."""
        call, gemm = self._call_index()
        layer_hash = zlib.crc32(self.layer_key().encode())
        high = (_global_seed() * 1000003 + layer_hash) & 0x7FFFFFFFFFFFFFFF
        low = (((call * 4096 + gemm) * 8 + _ROLE_IDS[role]) * 0x9E3779B1) & 0x7FFFFFFFFFFFFFFF
        base = tf.constant([high, low], tf.int64)
        return tf.random.experimental.stateless_fold_in(base, self.training_step())

    # Rounding -----------------------------------------------------------

    def role_format(self, role, axis=-1):
        """(format, rounding) of `role` for a tensor blocked along `axis`, or None.

        A block-scaled format's blocks run along `axis` (the tensor's
        reduction axis in its GEMM); other formats are returned as they are.
        """
        entry = self.spec.role(role)
        if entry is None or entry[0].kind != "block" or entry[0].axis == axis:
            return entry
        if isinstance(axis, tuple):  # square tiles, laid out by _to_tiles: one block each
            return entry[0].replace(axis=-1, block_size=entry[0].block_size ** 2), entry[1]
        return entry[0].replace(axis=axis, name=entry[0].name), entry[1]

    def layout_for(self, x, role, axis):
        """x in the layout `role_format(role, axis)` applies to (tiled for a pair of axes)."""
        if isinstance(axis, tuple) and self.spec.role(role) is not None:
            return _to_tiles(x, axis, self.spec.role(role)[0].block_size)[0]
        return x

    def _round_now(self, x, role, axis):
        if isinstance(axis, tuple):  # square tiles over two axes (square_weight_blocks)
            tiles, restore = _to_tiles(x, axis, self.spec.role(role)[0].block_size)
            return restore(self._round_flat(tiles, role, axis))
        return self._round_flat(x, role, axis)

    def _round_flat(self, x, role, axis):
        if _is_block_scalar(self.spec, role, x):  # a block of one element
            return tf.reshape(self._round_now(tf.reshape(x, [1]), role, -1), [])
        spec = self.spec
        if role == "errors":
            entry = self.role_format("errors", axis)
            if entry is None:
                return x
            fmt, rounding = entry
            seed = self.seed("errors") if rounding == "stochastic" else None
            if spec.scaling("errors") is not None:
                return scaling_lib.round_error(self, x, fmt, rounding, spec.scaling("errors"),
                                               seed)
            return rounding_lib.round_gradient(
                x, fmt, rounding, seed=seed, implementation=self.implementation)
        entry = self.role_format(role, axis)
        gradient = self.role_format("weight_gradients", axis) if role == "weights" else None
        if entry is None and gradient is None:
            return x
        if entry is not None and spec.scaling(role) is not None:
            fmt, rounding = entry
            seed = self.seed(role) if rounding == "stochastic" else None
            y = scaling_lib.round_operand(self, x, role, fmt, rounding, spec.scaling(role), seed)
            if gradient is None:
                return y
            gradient_seed = self.seed("weight_gradients") if gradient[1] == "stochastic" else None
            return rounding_lib.round_gradient(y, gradient[0], gradient[1], seed=gradient_seed,
                                               implementation=self.implementation)
        if entry is None:  # FP32 operand, rounded weight gradient
            fmt, rounding = gradient
            seed = self.seed("weight_gradients") if rounding == "stochastic" else None
            return rounding_lib.round_gradient(
                x, fmt, rounding, seed=seed, implementation=self.implementation)
        fmt, rounding = entry
        stochastic = rounding == "stochastic" or (gradient is not None and gradient[1] ==
                                                  "stochastic")
        kwargs = {}
        if gradient is not None:
            kwargs = {"backward_format": gradient[0], "backward_rounding": gradient[1]}
        return rounding_lib.quantize(
            x, fmt, rounding, seed=self.seed(role) if stochastic else None,
            implementation=self.implementation, **kwargs)

    def round(self, x, role, axis=-1):
        """Rounds `x` as the spec says for `role`, through the registered role hooks.

        `axis`: the axis a block-scaled format is blocked along (x's
        reduction axis in its GEMM; the channel axis of an error).
        """
        return self._through_hooks(x, role, axis, lambda v: self._round_now(v, role, axis))

    def _through_hooks(self, x, role, axis, last):
        def chain(index, value):
            if index == len(_role_hooks):
                return last(value)
            return _role_hooks[index](self, role, value, lambda v: chain(index + 1, v), axis)

        return chain(0, x)

    def quantize(self, x, role, axis, seed):
        """x rounded to `role`'s format blocked along `axis`, without hooks or gradient rounding.

        For a backward GEMM's own quantization of an operand (`block_scaled_product`);
        `seed`: the int64[2] seed of stochastic rounding (made in the forward pass).
        """
        if _is_block_scalar(self.spec, role, x):  # a block of one element
            return tf.reshape(self.quantize(tf.reshape(x, [1]), role, -1, seed), [])
        if isinstance(axis, tuple):  # square tiles over two axes (square_weight_blocks)
            tiles, restore = _to_tiles(x, axis, self.spec.role(role)[0].block_size)
            return restore(self._quantize_flat(tiles, role, axis, seed))
        return self._quantize_flat(x, role, axis, seed)

    def _quantize_flat(self, x, role, axis, seed):
        entry = self.role_format(role, axis)
        if entry is None:
            return x
        fmt, rounding = entry
        return rounding_lib.quantize(x, fmt, rounding,
                                     seed=seed if rounding == "stochastic" else None,
                                     implementation=self.implementation)

    def kernel_format(self):
        """The format the accumulator's kernels quantize to themselves, or None.

        Where the accumulator's GEMMs quantize their own operands and error
        (`quantizing_kernels`: the INT16 GEMM, which rounds to nearest while
        packing) and that gives the bits of the explicit rounding — the
        activations, weights and errors share one per-tensor format, all
        rounded to nearest even, with no weight-gradient format — the
        emulation hands the kernel the unrounded operands: one quantization
        per operand per GEMM, no rounded copy.  None (explicit rounding) while
        a role hook is installed, since hooks observe the rounded tensors.
        """
        if _role_hooks or any(self.spec.scaling(r) for r in ("activations", "weights",
                                                               "errors")):
            return None
        if not gemm_registry.get(self.spec.accumulator).quantizing_kernels:
            return None
        entries = {self.spec.role(r) for r in ("activations", "weights", "errors")}
        if len(entries) != 1 or self.spec.role("weight_gradients") is not None:
            return None
        entry = entries.pop()
        if entry is None or entry[1] != "nearest_even":
            return None
        fmt = entry[0]
        return fmt if getattr(fmt, "block_size", None) is None else None

    def gemm(self, op, operands, quantized_by_kernel=False, error_axis=-1):
        """`op(*rounded operands)` with the output's gradient rounded as an error.

        `operands` is a list of (tensor, role, reduction axis) triples (the
        axis block-scaled formats are blocked along); the result is None when an
        operand is not float32 (the caller then runs the op unemulated).
        `error_axis`: the output's channel axis, along which a block-scaled
        error format is blocked.  For a
        model compiled with an error-scaling optimizer, the error is scaled
        before it is rounded and the operands' gradients are unscaled
        (`ErrorScaling`).  `quantized_by_kernel`: `op` runs the accumulator's
        kernels bound to `kernel_format()`, which quantize the operands and
        the error themselves, so they are not rounded here.
        """
        scaling = ErrorScaling.for_context(self)
        quantized_by_kernel = quantized_by_kernel and self.kernel_format() is not None
        tensors = []
        for x, role, axis in operands:
            if role == "weights" and _is_variable(x) and graphs.in_while_body():
                # A recurrent layer's step runs in a tf.while_loop: round its
                # weights once, before the loop, not at every timestep (the
                # weights do not change within a forward pass).
                rounded = self._round_weights_before_loop(x, axis)
                if rounded is None:
                    return None
                # Unscaled inside the loop: each timestep has its own scale.
                tensors.append(rounded if scaling is None else scaling.unscale(rounded))
                if scaling is not None:
                    scaling.operands.append((rounded, role, axis))
                continue
            x = tf.convert_to_tensor(x)
            if x.dtype != tf.float32:
                return None
            if scaling is not None:
                # Before the operand's quantizer, so that a weight gradient it
                # rounds is rounded while still scaled.
                x = scaling.unscale(x)
            tensors.append(x if quantized_by_kernel else self.round(x, role, axis))
            if scaling is not None:  # Zhao et al.'s rule reads the operand the error meets
                scaling.operands.append((tensors[-1], role, axis))
        y = op(*tensors)
        if not quantized_by_kernel:
            y = self.round(y, "errors", error_axis)
        return y if scaling is None else scaling.scale_errors(y)

    def _round_weights_before_loop(self, variable, axis):
        return self.before_loop(variable, ("forward", axis),
                                lambda value: self.round(value, "weights", axis))

    def before_loop(self, variable, purpose, compute):
        """`compute(variable's value)`, made once in the graph outside the recurrent loop.

        None for a variable that is not float32.  `purpose` tells apart the
        values made from one variable (the forward rounding, a backward
        GEMM's own quantization).
        """
        outer = graphs.outer_graph()
        cache = _hoisted_weights.setdefault(outer, {})
        # Per replica: MirroredStrategy traces its replicas in one graph, and
        # each must read its own copy of the variable (or it gets no gradient).
        key = (id(variable), self._call_index()[0], _replica_id(), purpose)
        if key not in cache:
            # The step (read for stochastic-rounding seeds) is cached per
            # context; read it again in the outer graph, then restore it.
            step, self._step = self._step, None
            try:
                with outer.as_default():
                    value = tf.convert_to_tensor(variable)
                    cache[key] = None if value.dtype != tf.float32 else compute(value)
            finally:
                self._step = step
        return cache[key]


def _to_tiles(x, axes, size):
    """(x as [..., tiles_a, tiles_b, size * size], the inverse) for square tiles over `axes`.

    Both axes are zero-padded to whole tiles (zeros change no block's amax)
    and the inverse crops them again; every op is a reshape, transpose, pad
    or slice, so gradients pass straight through.
    """
    rank = x.shape.rank
    a, b = (axis % rank for axis in axes)
    perm = [i for i in range(rank) if i not in (a, b)] + [a, b]
    moved = tf.transpose(x, perm)
    lead, (length_a, length_b) = tf.shape(moved)[:-2], tf.unstack(tf.shape(moved)[-2:])
    tiles_a, tiles_b = (length_a + size - 1) // size, (length_b + size - 1) // size
    padded = tf.pad(moved, [[0, 0]] * (rank - 2) + [[0, tiles_a * size - length_a],
                                                    [0, tiles_b * size - length_b]])
    grid = tf.reshape(padded, tf.concat([lead, [tiles_a, size, tiles_b, size]], 0))
    swap = list(range(rank - 2)) + [rank - 2, rank, rank - 1, rank + 1]
    tiles = tf.reshape(tf.transpose(grid, swap),
                       tf.concat([lead, [tiles_a, tiles_b, size * size]], 0))

    def restore(y):
        grid_y = tf.transpose(tf.reshape(y, tf.concat([lead, [tiles_a, tiles_b, size, size]], 0)),
                              swap)
        full = tf.reshape(grid_y, tf.concat([lead, [tiles_a * size, tiles_b * size]], 0))
        return tf.transpose(full[..., :length_a, :length_b], [perm.index(i) for i in range(rank)])

    return tiles, restore


def _is_block_scalar(spec, role, x):
    """Whether `x` is a scalar that `role` (or, for weights, the weight gradient) blocks.

    A block-scaled format needs an axis; the scalar output of a dot product
    of two vectors (its error) is treated as one block of one element.
    """
    roles = (role, "weight_gradients") if role == "weights" else (role,)
    return x.shape.rank == 0 and any(
        spec.role(r) is not None and spec.role(r)[0].kind == "block" for r in roles)


def round_layer_outputs(layer, policy, outputs):
    """Rounds a layer's float32 outputs to the policy's `storage` format.

    The adapter's "layer_outputs" listener (after `Layer.__call__`); symbolic
    (KerasTensor) and non-float32 outputs pass unchanged.
    """
    callers = [c for c, _ in adapter.current_callers()] + [layer]
    context = LayerContext(layer, policy, callers)
    if context.spec.role("storage") is None:
        return outputs

    def round_one(x):
        if isinstance(x, tf.Tensor) and not isinstance(x, keras.KerasTensor) and (
            x.dtype == tf.float32
        ):
            return context.round(x, "storage")
        return x

    return keras.tree.map_structure(round_one, outputs)


def _error_scaler(model):
    """What `gemm_error_scaler()` of `model`'s optimizer (or of one it wraps) gives, or None."""
    optimizer = getattr(model, "optimizer", None) if model is not None else None
    while optimizer is not None:
        method = getattr(optimizer, "gemm_error_scaler", None)
        if method is not None:
            return method()
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


class ErrorScaling:
    """Per-layer error scaling of one emulated GEMM; its state is data in the graph.

    Used for a model whose optimizer (or one it wraps) has a
    `gemm_error_scaler()` method that returns a scaler
    (`tf_lowprec.AdaptiveLossScaleOptimizer`), on layers
    whose errors round to a float format.  The scaler offers three methods:

    - `global_error_scale()`: the float32 scale the errors already carry
      (read in the forward pass);
    - `error_scale(errors, global_scale, fmt)`: the absolute power-of-two
      scale for `errors`, a pure function of values;
    - `collect_error_scales(layer_path, statistics)`: receives, as a value
      in the graph of the training step, the sum over the layer's scaled
      errors of [log2(absolute scale), 1]; the scaler assigns its variables
      from it outside the gradient computation.

    Forward, for y = op(Q_a(a), Q_w(w)) the GEMM builds

        y' = scale(Q_e(op(Q_a(unscale(a)), Q_w(unscale(w)))), global, probe, links)

    where each `unscale` has a second output, a zero scalar "link", that
    feeds `scale`.  Backward, `scale`'s gradient function computes alpha from
    dY's statistics and returns alpha * dY for y, alpha as the gradient of
    each link and the statistics as the gradient of the probe.  So every
    `unscale` gradient function receives alpha with its incoming gradient
    (dv / alpha) whatever order TensorFlow runs them in, and inside a
    recurrent loop, where each timestep has its own alpha.

    The probe is a zero [2] tensor made outside any tf.while_loop from a
    trainable variable of the layer, so that TensorFlow computes its
    gradient (summed over timesteps); its gradient function, in the graph of
    the training step, hands that sum to the scaler.  A layer without
    trainable variables is scaled without statistics.
    """

    def __init__(self, context, scaler, fmt):
        self.context = context
        self.scaler = scaler
        self.fmt = fmt
        self.links = []
        self.operands = []  # (rounded operand, role, reduction axis), for the paper's rule

    @classmethod
    def for_context(cls, context):
        """An ErrorScaling for one GEMM of `context`, or None where errors are not scaled."""
        entry = context.spec.role("errors")
        if entry is None or not entry[0].fixed_range or context.spec.scaling("errors"):
            return None  # unrounded, wide-range or scaled errors (lp.Scaling) are not scaled here
        scaler = _error_scaler(context.model)
        if scaler is None:
            return None
        return cls(context, scaler, entry[0])

    def unscale(self, x):
        """Identity on x whose gradient is divided by the alpha its link receives."""
        @tf.custom_gradient
        def unscale(v):
            def grad(dv, alpha):
                # alpha is 0 only when the GEMM's output got no gradient (dv is 0 then too).
                return tf.math.divide_no_nan(dv, alpha)

            return (tf.identity(v), tf.zeros([], tf.float32)), grad

        value, link = unscale(x)
        self.links.append(link)
        return value

    def _step_inputs(self):
        """(global scale, probe or None), made outside any tf.while_loop."""
        layer = self.context.layer
        path = layer.path or layer.name
        scaler = self.scaler
        if not graphs.in_while_body():
            global_scale = scaler.global_error_scale()
        else:
            with graphs.outer_graph().as_default():
                global_scale = scaler.global_error_scale()
        probe = gradient_probe(layer, 2, lambda total: scaler.collect_error_scales(path, total))
        return global_scale, probe

    def scale_errors(self, y):
        """Identity on the GEMM's (error-rounded) output; its gradient scales dY."""
        if getattr(self.scaler, "scaling_rule", "local") == "paper":
            return self._scale_errors_paper(y)
        global_scale, probe = self._step_inputs()
        scaler, fmt, links = self.scaler, self.fmt, self.links
        extra = [] if probe is None else [probe]

        @tf.custom_gradient
        def scale(v, carried_scale, *rest):
            def grad(dy):
                absolute = scaler.error_scale(dy, carried_scale, fmt)
                alpha = absolute / carried_scale
                grads = [dy * alpha, tf.zeros_like(carried_scale)]
                if extra:
                    exponent = tf.round(tf.math.log(absolute) / math.log(2.0))
                    grads.append(tf.stack([exponent, tf.ones_like(exponent)]))
                return grads + [alpha] * len(links)

            return tf.identity(v), grad

        return scale(y, global_scale, *extra, *links)

    def _met_operand(self):
        """(the operand the error meets in the dX GEMM, products summed per dX element).

        The weights where the GEMM has them, else its last operand; the sum
        length is the operand's size over its reduction axis (Dense:
        the output units; a convolution: kernel area times output channels).
        """
        operands = self.operands
        w, _, axis = next((o for o in operands if o[1] == "weights"), operands[-1])
        axis = axis if isinstance(axis, int) else -1
        size = tf.cast(tf.size(w), tf.float32)
        fan_in = size / tf.maximum(tf.cast(tf.shape(w)[axis], tf.float32), 1.0)
        return w, fan_in

    def _scale_errors_paper(self, y):
        """`scale_errors` under Zhao et al.'s rule (scaling_rule="paper").

        Backward, with S the loss scale the incoming dY carries and 2^r the
        accumulated scale its consumers report (`scale_chain`):
        stored = Q_e(dY 2^r) is the error as the paper stores it between
        layers; alpha comes from the statistics of stored x W; the GEMMs get
        stored * alpha (rounded again, exact for a power of two) and their
        FP32 gradients are divided by 2^r alpha.  Dividing at every layer
        rather than carrying the scale in the values changes no bit (powers
        of two in FP32), and leaves every other gradient (biases,
        normalisation) at S alone.  The layer reports r + log2(alpha) to
        the layers that feed it.
        """
        context = self.context
        global_scale, probe = self._step_inputs()
        scaler, fmt, links = self.scaler, self.fmt, self.links
        w, fan_in = self._met_operand()
        # Statistics of the weights, taken forward (the weights do not change in a step).
        w = tf.stop_gradient(tf.stack([tf.reduce_mean(tf.square(w)), tf.reduce_max(tf.abs(w))]))
        replica = _replica_id()
        call, gemm = context._call_index()
        entry = scale_chain.enter(context.layer, gemm == 0 and call == 0,
                                  graphs.in_while_body(), replica)
        upstream = scale_chain.upstream_tokens(entry, replica) if gemm == 0 else []
        extra = [] if probe is None else [probe]
        rounding = context.spec.role("errors")[1]
        seed = context.seed("errors") if rounding == "stochastic" else None
        implementation = context.implementation

        @tf.custom_gradient
        def scale(v, carried_scale, met, *rest):
            def grad(dy, token_gradient):
                if entry.eligible:
                    if token_gradient is None:
                        token_gradient = tf.zeros([scale_chain.TOKEN_SIZE], tf.float32)
                    exponent = scale_chain.carried_exponent(
                        token_gradient, scale_chain.reaches_restart(entry, replica))
                else:
                    exponent = tf.constant(0, tf.int32)
                carried = tf.pow(2.0, tf.cast(exponent, tf.float32))
                # The error as stored between layers, at the accumulated scale.
                stored = rounding_lib.quantize(dy * carried, fmt, rounding, seed=seed,
                                               implementation=implementation)
                alpha = scaler.paper_error_scale(stored, met[0], met[1], fan_in, carried, fmt)
                relative = carried * alpha
                grads = [stored * alpha, tf.zeros_like(carried_scale), tf.zeros_like(met)]
                if extra:
                    absolute = tf.math.log(relative * carried_scale) / math.log(2.0)
                    absolute = tf.round(absolute)
                    grads.append(tf.stack([absolute, tf.ones_like(absolute)]))
                own = tf.round(tf.math.log(relative) / math.log(2.0))
                report = scale_chain.one_hot(own if entry.eligible else 0)
                grads += [report] * len(upstream)
                return grads + [relative] * len(links)

            return (tf.identity(v), tf.zeros([scale_chain.TOKEN_SIZE], tf.float32)), grad

        value, token = scale(y, global_scale, w, *extra, *upstream, *links)
        if gemm == 0:
            entry.token = token
        return value


def gradient_probe(layer, size, deliver):
    """A zero float32 [size] tensor whose gradient is handed to `deliver`, or None.

    The way values computed in gradient functions leave the gradient graph:
    pass the probe into a `tf.custom_gradient` function of the forward pass
    and return the values as the probe's gradient.  The probe is made
    outside any tf.while_loop from a trainable variable of `layer`, so
    TensorFlow computes its gradient (the sum of the values over every use
    and every timestep of a recurrent loop) and calls `deliver(total)` in
    the graph of the training step.  None when `layer` has no trainable
    float variable.
    """
    sources = [w for w in layer.trainable_weights
               if tf.as_dtype(w.dtype).is_floating] if layer.trainable else []
    if not sources:
        return None

    @tf.custom_gradient
    def probe(v):
        def grad(total):
            deliver(total)
            return tf.zeros_like(v)

        return tf.zeros([size], tf.float32), grad

    if not graphs.in_while_body():
        return probe(tf.convert_to_tensor(sources[0]))
    with graphs.outer_graph().as_default():
        return probe(tf.convert_to_tensor(sources[0]))


def operand_role(x):
    """"weights" for a variable (a layer's kernel), else "activations"."""
    return "weights" if _is_variable(x) else "activations"


def accumulator_gemm(accumulator, name):
    """The op that runs `name` ("matmul", "conv2d", "conv3d", "conv_transpose") with
    `accumulator`, or None.

    The registered kernel of `tf_lowprec.gemm.registry` (None for "fp32":
    the rounded operands are then multiplied by the FP32 op).
    """
    return getattr(gemm_registry.get(accumulator), name)


def _gemm_options(context):
    """The accumulator GEMM's keyword arguments: implementation, the seed of stochastic sums,
    and the format a quantizing kernel rounds its operands to (`_kernel_options`)."""
    seeded = gemm_registry.get(context.spec.accumulator).stochastic
    return dict(implementation=context.implementation,
                **({"seed": context.seed("accumulator")} if seeded else {}),
                **_kernel_options(context))


# Emulated backend functions.  Each takes the LayerContext and the backend's
# original function, and has the backend function's signature after those.

def _flattened_matmul(op):
    """op for [..., k] @ [k, n] run as one [rows, k] @ [k, n] GEMM.

    Each output row is computed on its own, so flattening the leading
    dimensions changes no bit; it gives the kernel one large GEMM instead of
    a batch of small ones (a Dense layer on a sequence).
    """
    def matmul(x1, x2):
        if len(x1.shape) <= 2 or len(x2.shape) != 2:
            return op(x1, x2)
        rows = tf.reshape(x1, [-1, tf.shape(x1)[-1]])
        y = op(rows, x2)
        return tf.reshape(y, tf.concat([tf.shape(x1)[:-1], tf.shape(x2)[-1:]], 0))

    return matmul


def _kernel_options(context):
    """Keyword arguments binding a quantizing kernel to `context.kernel_format()` (or {})."""
    fmt = context.kernel_format()
    if fmt is None:
        return {}
    return {"fmt": fmt, "rounding": "nearest_even", "backward_rounding": "nearest_even"}


def _accumulator_matmul(context):
    """(the accumulator's matmul with the context's implementation, batched?) or (None, False)."""
    accumulator = gemm_registry.get(context.spec.accumulator)
    if accumulator.matmul is None:
        return None, False
    kernel = functools.partial(accumulator.matmul, **_gemm_options(context))
    return _flattened_matmul(kernel), accumulator.batched_matmul


def matmul(context, original, x1, x2):
    """`keras.ops.matmul` on rounded operands; any rank on the accumulator's GEMM.

    1-D operands become a row / column (NumPy's rule); batch dimensions
    broadcast, which the accumulator's GEMM must support (`batched_matmul`)
    unless only x1 has them (flattened into rows).
    """
    op = original
    rank1, rank2 = _rank(x1), _rank(x2)
    if _uses_block_formats(context) and rank1 is not None and rank2 is not None and (
            rank1 >= 2 and (rank2 == 2 or rank2 == rank1)):
        equation = "...mk,kn->...mn" if rank2 == 2 else "...mk,...kn->...mn"
        y = block_scaled_product(context, equation, x1, x2,
                                 [operand_role(x1), operand_role(x2)])
        if y is not None:
            return y
    kernel, batched = _accumulator_matmul(context)
    if kernel is not None and None not in (rank1, rank2) and (batched or rank2 <= 2) and (
            min(rank1, rank2) >= 1):
        op = lambda a, b: gemm_common.matmul_any_rank(kernel, a, b)  # noqa: E731
    axis2 = -2 if rank2 is None or rank2 >= 2 else -1  # K: x1's last axis, x2's row axis
    y = context.gemm(op, [(x1, operand_role(x1), -1), (x2, operand_role(x2), axis2)],
                     quantized_by_kernel=op is not original)
    return original(x1, x2) if y is None else y


def _rank(x):
    """x's rank, or None when unknown."""
    shape = x.shape if hasattr(x, "shape") else tf.convert_to_tensor(x).shape
    return shape.rank if isinstance(shape, tf.TensorShape) else len(shape)


def _all_operands_rounded(context, original_call, operands):
    """`original_call(*rounded operands)` as one emulated GEMM (FP32 op), or None.

    Without subscripts the reduction axes are not known: block-scaled formats
    are blocked along each operand's last axis.
    """
    return context.gemm(original_call, [(x, operand_role(x), -1) for x in operands])


def _reduction_axes(equation, ranks):
    """Each operand's contracted axis (its last one) in a 2-operand einsum, -1 if none."""
    try:
        (a_terms, b_terms), out_terms = gemm_common.parse_einsum(equation, ranks)
    except ValueError:
        return -1, -1
    return tuple(_contracted_axes(a_terms, b_terms, out_terms))


_BLOCK_ROLES = ("activations", "weights", "errors")


def _uses_block_formats(context):
    """Whether a GEMM of `context` takes the per-GEMM path of `block_scaled_product`.

    It does when a forward operand or the error is in a block-scaled format,
    the sums are FP32, no role is scaled per tensor (`lp.Scaling`) and the
    errors are not loss-scaled per layer.
    """
    spec = context.spec
    entries = [spec.role(role) for role in _BLOCK_ROLES]
    return (any(e is not None and e[0].kind == "block" for e in entries)
            and spec.accumulator == "fp32" and ErrorScaling.for_context(context) is None
            and all(spec.scaling(role) is None for role in _BLOCK_ROLES))


def _contracted_axes(first, second, output):
    """The axis of `first` and of `second` holding the label einsum first,second->output sums
    over last in `first` (the same label in both, so that blocks pair up), or -1, -1."""
    contracted = (set(first) & set(second)) - set(output)
    labels = [label for label in first if label in contracted]
    if not labels:
        return [-1, -1]
    return [first.index(labels[-1]) - len(first), second.index(labels[-1]) - len(second)]


def _hadamard_matrix(size):
    """The orthonormal Sylvester Hadamard matrix of order `size` (a power of two), float32."""
    matrix = np.ones((1, 1), np.float32)
    while matrix.shape[0] < size:
        matrix = np.block([[matrix, matrix], [matrix, -matrix]])
    return matrix / np.float32(np.sqrt(size))


def random_hadamard(x, axis, size, seed):
    """x with a random Hadamard transform of order `size` applied along `axis`, in tiles.

    The axis is zero-padded to a multiple of `size` and each tile of `size`
    entries multiplied by H diag(s), H the orthonormal Hadamard matrix and s
    random signs from `seed` (one draw for every tile).  Two tensors
    transformed alike along the axis a GEMM sums over give the same product
    (H diag(s) is orthogonal), but their quantization sees spread-out values.
    """
    rank = x.shape.rank
    axis %= rank
    perm = list(range(axis)) + list(range(axis + 1, rank)) + [axis]
    moved = tf.transpose(x, perm)
    length = tf.shape(moved)[-1]
    tiles = (length + size - 1) // size
    padded = tf.pad(moved, [[0, 0]] * (rank - 1) + [[0, tiles * size - length]])
    shape = tf.concat([tf.shape(moved)[:-1], [tiles, size]], 0)
    signs = tf.sign(tf.random.stateless_uniform([size], seed, -1.0, 1.0))
    signs = tf.where(signs == 0, tf.ones_like(signs), signs)
    matrix = tf.constant(_hadamard_matrix(size)) * signs[:, None]  # diag(s) H^T, by rows
    transformed = tf.reshape(tf.reshape(padded, shape) @ matrix,
                             tf.concat([tf.shape(moved)[:-1], [tiles * size]], 0))
    return tf.transpose(transformed, [perm.index(i) for i in range(rank)])


def block_scaled_product(context, equation, a, b, roles):
    """A 2-operand einsum whose three GEMMs each quantize their own operands, or None.

    Block-scaled formats (OCP MX) block each GEMM operand along the axis
    that GEMM sums over, so a tensor used by two GEMMs is quantized twice,
    once per GEMM, as the MX reference emulation does:

        forward  y  = Q(a, K) . Q(b, K)
        dA          = Q(dY, N) . Q(b, N)^T       (einsum out,b->a)
        dB          = Q(a, M)^T . Q(dY, M)       (einsum a,out->b)

    with each axis the contracted one of that GEMM; with the spec's
    `wgrad_hadamard`, a and dY are transformed alike along M
    (`random_hadamard`) before the dB GEMM quantizes them.  The forward operands go
    through the role hooks (the monitor) and their straight-through
    quantizers, which receive dA and dB (so a weight-gradient format still
    rounds dB).  None where the equation has a label that is summed in one
    operand alone, broadcasts, or repeats, and for operands that are not
    float32 (the caller then takes the shared path of `LayerContext.gemm`).
    """
    try:
        (ta, tb), to = gemm_common.parse_einsum(equation, [_rank(a), _rank(b)])
    except ValueError:
        return None
    labels = set(ta) | set(tb)
    if (len(set(ta)) != len(ta) or len(set(tb)) != len(tb) or len(set(to)) != len(to)
            or not set(ta) <= set(tb) | set(to) or not set(tb) <= set(ta) | set(to)
            or not set(to) <= labels):
        return None
    a, b = (x if _is_variable(x) else tf.convert_to_tensor(x) for x in (a, b))
    if any(tf.as_dtype(x.dtype) != tf.float32 for x in (a, b)):
        return None
    shared = set(ta) & set(tb) & set(to)  # batch labels: both operands must have equal sizes
    for label in shared:
        if a.shape[ta.index(label)] is None or a.shape[ta.index(label)] != b.shape[tb.index(label)]:
            return None
    forward = _contracted_axes(ta, tb, to)
    for_da = _contracted_axes(to, tb, ta)  # (dY's axis, b's axis) of dA = dY . b
    for_db = _contracted_axes(ta, to, tb)  # (a's axis, dY's axis) of dB = a . dY

    weight_entry = context.spec.role(roles[1])
    square = (context.spec.square_weight_blocks and roles[1] == "weights"
              and weight_entry is not None and weight_entry[0].kind == "block"
              and forward[1] % len(tb) != for_da[1] % len(tb))
    # Square weight blocks: one quantized weight, tiled over the forward GEMM's and
    # the dA GEMM's summed axes, serves both.
    b_axis = (forward[1], for_da[1]) if square else forward[1]
    quantized = []
    for x, role, axis in ((a, roles[0], forward[0]), (b, roles[1], b_axis)):
        if role == "weights" and _is_variable(x) and graphs.in_while_body():
            quantized.append(context._round_weights_before_loop(x, axis))
        else:
            quantized.append(context.round(tf.convert_to_tensor(x), role, axis))

    def seed(role, salt):  # made here, in the forward pass, for the gradient function
        entry = context.spec.role(role)
        if entry is None or entry[1] != "stochastic":
            return None
        return tf.random.experimental.stateless_fold_in(context.seed(role), salt)

    seeds = {"a": seed(roles[0], 1), "b": seed(roles[1], 1), "dy_da": seed("errors", 1),
             "dy_db": seed("errors", 2)}
    hadamard = context.spec.wgrad_hadamard
    hadamard_seed = (tf.random.experimental.stateless_fold_in(context.seed("weight_gradients"), 3)
                     if hadamard is not None else None)
    raw_a, raw_b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
    b_da = quantized[1] if square else None
    if b_da is None and roles[1] == "weights" and _is_variable(b) and graphs.in_while_body():
        # A recurrent step's weights, as the dA GEMM quantizes them: once,
        # outside the loop (the seed too, so the bits match an unrolled run).
        b_da = context.before_loop(b, ("dA", for_da[1]), lambda value: context.quantize(
            value, "weights", for_da[1], seed("weights", 1)))

    @tf.custom_gradient
    def product(qa, qb, unused_raw_a, unused_raw_b):
        def grad(dy):
            dy_da = context.quantize(dy, "errors", for_da[0], seeds["dy_da"])
            b_for_da = b_da if b_da is not None else context.quantize(raw_b, roles[1],
                                                                      for_da[1], seeds["b"])
            a_for_db, dy_for_db = raw_a, dy
            if hadamard is not None:  # M is zero-padded alike in both: the product keeps
                a_for_db = random_hadamard(raw_a, for_db[0], hadamard, hadamard_seed)
                dy_for_db = random_hadamard(dy, for_db[1], hadamard, hadamard_seed)
            a_db = context.quantize(a_for_db, roles[0], for_db[0], seeds["a"])
            dy_db = context.quantize(dy_for_db, "errors", for_db[1], seeds["dy_db"])
            return (tf.einsum(f"{to},{tb}->{ta}", dy_da, b_for_da),
                    tf.einsum(f"{ta},{to}->{tb}", a_db, dy_db), None, None)

        return tf.einsum(f"{ta},{tb}->{to}", qa, qb), grad

    y = product(quantized[0], quantized[1], raw_a, raw_b)
    # The error as the role hooks see it (the monitor's statistics of dY).
    return context._through_hooks(y, "errors", for_da[0], lambda v: v)


def _pair_product(context, fallback, equation, a, b, roles):
    """One emulated GEMM of two operands given by an einsum equation (2 operands).

    On the accumulator's GEMM when the equation is a (batched) matrix
    product (`gemm_common.einsum_pair_as_matmul`), else `fallback(x, y)` (an
    FP32 op) on the rounded operands.  None when an operand is not float32.
    """
    if _uses_block_formats(context):
        y = block_scaled_product(context, equation, a, b, roles)
        if y is not None:
            return y
    kernel, batched = _accumulator_matmul(context)
    op = fallback
    by_kernel = kernel is not None and context.kernel_format() is not None
    if kernel is not None:
        (a_terms, b_terms), out_terms = gemm_common.parse_einsum(equation, [_rank(a), _rank(b)])

        def op(x, y):
            product = gemm_common.einsum_pair_as_matmul(kernel, a_terms, b_terms, out_terms, x,
                                                        y, batched=batched)
            if product is not None:
                return product
            if by_kernel:  # the FP32 op: it needs the rounded operands and error
                return context.round(fallback(context.round(x, roles[0], axis_a),
                                              context.round(y, roles[1], axis_b)), "errors")
            return fallback(x, y)

    axis_a, axis_b = _reduction_axes(equation, [_rank(a), _rank(b)])
    return context.gemm(op, [(a, roles[0], axis_a), (b, roles[1], axis_b)],
                        quantized_by_kernel=by_kernel)


def einsum(context, original, subscripts, *operands, **kwargs):
    """`keras.ops.einsum`: each product of two operands one emulated GEMM.

    Two operands: one GEMM (on the accumulator's kernel where the equation
    is a batched matrix product).  More than two: contracted left to right,
    each intermediate result rounded as the activation operand of the next
    GEMM (as a chain of layers would be).  One operand (a transpose, trace
    or sum) is not a GEMM and runs unchanged.
    """
    if len(operands) < 2:  # a transpose or reduction, not a GEMM
        return original(subscripts, *operands, **kwargs)
    try:
        inputs, output = gemm_common.parse_einsum(subscripts, [_rank(x) for x in operands])
    except ValueError:  # unknown ranks with '...' (or a bad equation: Keras' own error)
        y = _all_operands_rounded(
            context, lambda *ops: original(subscripts, *ops, **kwargs), operands)
        return original(subscripts, *operands, **kwargs) if y is None else y
    if len(operands) == 2:
        y = _pair_product(context, lambda a, b: original(subscripts, a, b, **kwargs), subscripts,
                          operands[0], operands[1], [operand_role(x) for x in operands])
        return original(subscripts, *operands, **kwargs) if y is None else y
    result, terms = operands[0], inputs[0]
    for index in range(1, len(operands)):
        later = "".join(inputs[index + 1:]) + output
        pair_output = output if index == len(operands) - 1 else "".join(dict.fromkeys(
            c for c in terms + inputs[index] if c in later))
        equation = f"{terms},{inputs[index]}->{pair_output}"
        roles = [operand_role(result) if index == 1 else "activations",
                 operand_role(operands[index])]
        y = _pair_product(context, functools.partial(tf.einsum, equation), equation, result,
                          operands[index], roles)
        if y is None:
            return original(subscripts, *operands, **kwargs)
        result, terms = y, pair_output
    return result


def _tensordot_product(context, original_call, x1, x2, axes, original=None):
    rank1, rank2 = _rank(x1), _rank(x2)
    if rank1 == 0 or rank2 == 0:
        return original_call()  # a scalar times a tensor: not a GEMM
    if rank1 is None or rank2 is None:  # no subscripts: the FP32 op on rounded operands
        y = _all_operands_rounded(context, original, [x1, x2])
        return original_call() if y is None else y
    a, b, out = gemm_common.tensordot_subscripts(rank1, rank2, axes)
    y = _pair_product(context, lambda p, q: tf.einsum(f"{a},{b}->{out}", p, q),
                      f"{a},{b}->{out}", x1, x2, [operand_role(x1), operand_role(x2)])
    return original_call() if y is None else y


def tensordot(context, original, x1, x2, axes=2):
    """`keras.ops.tensordot` as an einsum of two operands (one emulated GEMM)."""
    return _tensordot_product(context, lambda: original(x1, x2, axes=axes), x1, x2, axes,
                              lambda a, b: original(a, b, axes=axes))


def dot(context, original, x1, x2):
    """`keras.ops.dot` (and `vdot`, which calls it): NumPy's dot as a tensordot."""
    axes = [[-1], [-1]] if _rank(x2) == 1 else [[-1], [-2]]
    return _tensordot_product(context, lambda: original(x1, x2), x1, x2, axes, original)


def inner(context, original, x1, x2):
    """`keras.ops.inner`: the last axes of both operands contracted."""
    return _tensordot_product(context, lambda: original(x1, x2), x1, x2, [[-1], [-1]],
                              original)


# The backend functions' positional arguments after (inputs, kernel).
_CONV_ARGUMENT_NAMES = {
    "conv": ("strides", "padding", "data_format", "dilation_rate"),
    "depthwise_conv": ("strides", "padding", "data_format", "dilation_rate"),
    "conv_transpose": ("strides", "padding", "output_padding", "data_format", "dilation_rate"),
}


def _conv_arguments(args, kwargs, name="conv"):
    options = dict(zip(_CONV_ARGUMENT_NAMES[name], args), **kwargs)
    options["data_format"] = options.get("data_format") or keras.config.image_data_format()
    return options


def _spatial_pair(value, rank):
    """A Keras stride/dilation (int or tuple) as the (height, width) pair of a 2-D conv."""
    values = (value,) * (rank - 2) if isinstance(value, int) else tuple(value)
    return values if rank == 4 else (1,) + values


def _spatial(value, count):
    """A Keras stride/dilation (int or tuple) as `count` ints."""
    return (value,) * count if isinstance(value, int) else tuple(value)


def _accumulator_conv(context, name, inputs, kernel, options):
    """The accumulator's convolution bound to Keras conv arguments, or None where it has none.

    `name`: the backend function ("conv", "depthwise_conv", "conv_transpose").
    Channels-first inputs are transposed to channels last around the op (a
    copy: no bit changes).
    """
    rank = len(inputs.shape)
    if rank not in (3, 4, 5) or options["data_format"] not in ("channels_last",
                                                              "channels_first"):
        return None
    to_last = [0] + list(range(2, rank)) + [1]
    channels_first = options["data_format"] == "channels_first"
    shape = tf.TensorShape([inputs.shape[i] for i in to_last]) if channels_first else (
        tf.TensorShape(inputs.shape))
    if name == "conv_transpose":
        op = _accumulator_conv_transpose(context, shape, kernel, options)
    else:
        op = _accumulator_conv_forward(context, shape, kernel, options,
                                       depthwise=name == "depthwise_conv")
    if op is None or not channels_first:
        return op
    to_first = [0, rank - 1] + list(range(1, rank - 1))
    return lambda x, k: tf.transpose(op(tf.transpose(x, to_last), k), to_first)


def _accumulator_conv_forward(context, shape, kernel, options, depthwise=False):
    """The accumulator's conv2d / conv3d for channels-last inputs of `shape`, or None.

    1-D and 2-D convolutions run on its conv2d (a 1-D one is a 2-D one of
    height 1), 3-D ones on its conv3d; grouped ones included (`groups` = input
    channels / the kernel's input channels), and depthwise ones (`depthwise`:
    groups = input channels, the kernel [kh, kw, C, M] read as [kh, kw, 1, C * M]).
    """
    accumulator = gemm_registry.get(context.spec.accumulator)
    rank = len(shape)
    conv = accumulator.conv3d if rank == 5 else accumulator.conv2d
    if conv is None or (rank == 5 and (depthwise or None in shape[1:])):
        return None
    channels, kernel_channels = shape[-1], kernel.shape[-2]
    if channels is None or kernel_channels is None or None in kernel.shape[:-2]:
        return None
    groups = channels if depthwise else channels // kernel_channels
    if rank == 5:
        strides = _spatial(options.get("strides", 1), 3)
        dilations = _spatial(options.get("dilation_rate", 1), 3)
    else:
        strides = _spatial_pair(options.get("strides", 1), rank)
        dilations = _spatial_pair(options.get("dilation_rate", 1), rank)
    padding = options.get("padding", "valid").upper()
    extra = {"groups": groups} if groups > 1 else {}

    def op(x, k):
        if depthwise:
            k = tf.reshape(k, list(k.shape[:-2]) + [1, channels * k.shape[-1]])
        if rank == 3:
            x, k = x[:, None], k[None]
        y = conv(x, k, strides=strides, padding=padding, dilations=dilations,
                 **_gemm_options(context), **extra)
        return y[:, 0] if rank == 3 else y

    return op


def _accumulator_conv_transpose(context, shape, kernel, options):
    """The accumulator's conv_transpose for channels-last inputs of `shape`, or None.

    The output shape is Keras' (`output_padding` included); the kernel is
    [*k, out, in], as `tf.nn.conv_transpose` takes it.
    """
    conv_transpose = gemm_registry.get(context.spec.accumulator).conv_transpose
    if conv_transpose is None or None in shape[1:] or None in kernel.shape:
        return None
    count = len(shape) - 2
    strides = _spatial(options.get("strides", 1), count)
    dilations = _spatial(options.get("dilation_rate", 1), count)
    padding = options.get("padding", "valid")
    output_shape = adapter.conv_transpose_output_shape(
        [None] + list(shape[1:]), list(kernel.shape[:-2]), kernel.shape[-2], strides, padding,
        options.get("output_padding"), "channels_last", dilations)

    def op(x, k):
        return conv_transpose(x, k, output_shape[1:-1], strides=strides,
                              padding=padding.upper(), dilations=dilations,
                              **_gemm_options(context))

    return op


def _conv_like(name):
    # The kernel's input-channel axis: [..., in, out] for conv and depthwise
    # (whose "in" axis is the channel, not a reduction, axis), [..., out, in]
    # for the transposed convolution.
    kernel_axis = -1 if name == "conv_transpose" else -2

    def emulated(context, original, inputs, kernel, *args, **kwargs):
        fallback = lambda a, k: original(a, k, *args, **kwargs)  # noqa: E731
        options = _conv_arguments(args, kwargs, name)
        op = _accumulator_conv(context, name, inputs, kernel, options) or fallback
        channel_axis = 1 if options["data_format"] == "channels_first" else -1
        y = context.gemm(op, [(inputs, "activations", channel_axis),
                              (kernel, operand_role(kernel), kernel_axis)],
                         quantized_by_kernel=op is not fallback, error_axis=channel_axis)
        return original(inputs, kernel, *args, **kwargs) if y is None else y

    emulated.__name__ = name
    return emulated


conv = _conv_like("conv")
depthwise_conv = _conv_like("depthwise_conv")
conv_transpose = _conv_like("conv_transpose")


def separable_conv(context, original, inputs, depthwise_kernel, pointwise_kernel, strides=1,
                   padding="valid", data_format=None, dilation_rate=1):
    """Two emulated GEMMs: the depthwise conv, then the 1x1 pointwise conv.

    The depthwise output is an activation entering the pointwise GEMM, so it
    is rounded (and its error too), as a separately written pair of layers
    would be.
    """
    del original  # tf.nn.separable_conv2d fuses the two GEMMs; they are run one by one
    hidden = depthwise_conv(context, adapter.original("nn", "depthwise_conv"), inputs, depthwise_kernel,
                            strides, padding, data_format, dilation_rate)
    return conv(context, adapter.original("nn", "conv"), hidden, pointwise_kernel, 1, "valid", data_format, 1)


def dot_product_attention_core(context, original, query, key, value, bias, mask, is_causal,
                               scale):
    """The TF backend's attention core with both einsums emulated; softmax in FP32."""
    def product(equation, a, b):
        return _pair_product(
            context, lambda x, y: tf.einsum(equation, x, y, optimize="optimal"), equation, a, b,
            ["activations", "activations"])

    if query.dtype != tf.float32:
        return original(query, key, value, bias, mask, is_causal, scale)
    logits = product("BTNH,BSNH->BNTS", query, key)
    logits = tf.multiply(logits, tf.cast(scale, logits.dtype))
    if bias is not None:
        logits = tf.add(logits, tf.cast(bias, logits.dtype))
    padded_logits = adapter.apply_attention_masks(logits, mask, is_causal)
    probs = tf.nn.softmax(padded_logits, axis=-1)
    return product("BNTS,BSNH->BTNH", probs, value)


# The emulated twin of each routed backend function.
_EMULATED = {
    "matmul": matmul,
    "einsum": einsum,
    "dot": dot,
    "tensordot": tensordot,
    "inner": inner,
    "conv": conv,
    "depthwise_conv": depthwise_conv,
    "conv_transpose": conv_transpose,
    "separable_conv": separable_conv,
    "_dot_product_attention_xla": dot_product_attention_core,
}


def active_context(callers):
    """A `LayerContext` when the innermost of `callers` has an emulating `Policy`, else None.

    `callers`: (layer, name-scope entry) pairs, outermost first, as
    `adapter.current_callers()` gives them.
    """
    layer, entry = callers[-1]
    policy = adapter.layer_policy(layer)
    if not isinstance(policy, Policy) or not policy.spec.emulates:
        return None
    return LayerContext(layer, policy, [c for c, _ in callers], scope=entry,
                        outer_scope=callers[0][1])


def route_gemm(name, original, callers, args, kwargs):
    """The adapter's "gemm" listener: runs the backend function `name` emulated, or declines."""
    context = active_context(callers)
    if context is None:
        return NotImplemented
    with coverage.emulated_ops():
        return _EMULATED[name](context, original, *args, **kwargs)


adapter.set_listener("gemm", route_gemm)
adapter.set_listener("layer_outputs", round_layer_outputs)
