"""GEMMs that the policies cannot emulate, found when a step is traced, and reported.

The emulation sees only what reaches Keras' backend functions
(`keras.ops.matmul`, `einsum`, `dot`, `tensordot`, `inner`, `conv*`, attention).
A layer that multiplies with raw TensorFlow (`tf.matmul`, `tf.einsum`,
`x @ w` on tensors, `tf.nn.conv2d`, `tf.tensordot`, ...) runs that GEMM in
FP32 whatever its policy says.  Such GEMMs cannot be routed (they never pass
through Keras), but they can be found: while a layer under an emulating
`lp.Policy` is called in a traced function (`fit`, `predict`, a
`tf.function`), the adapter's "layer_call" event brackets the call, and the
ops it added to the graph are checked.  A GEMM op (`GEMM_OP_TYPES`) that the
emulation did not produce (`emulated_ops` brackets each emulated call) and
that no inner layer accounted for is the layer's own raw GEMM: it is
reported once per layer and op type, as the action set with
`set_unemulated_gemm_action` says:

- "warn" (default): an `UnemulatedGemmWarning` naming the layer and the op;
- "error": `UnemulatedGemmError` (raised while tracing, so `fit` stops);
- "ignore": no check (and no cost).

`unemulated_gemms(model)` lists what was found; `PrecisionMonitor` puts
their number in its logs (`unemulated_gemms`).  Eager calls build no graph
and are not checked, nor are traces under a strategy with several replicas
(traced concurrently into one graph: check on one device); GEMMs inside a
layer's own `tf.cond` / `tf.while_loop` branches (other graphs) are not seen
either (stock recurrent layers call their cells, which are layers, inside
the loop: those are checked).

>>> import warnings, keras, numpy as np, tensorflow as tf, tf_lowprec as lp
>>> class Raw(keras.layers.Layer):
...     def build(self, shape):
...         self.w = self.add_weight(shape=(shape[-1], 2))
...     def call(self, x):
...         return tf.matmul(x, self.w)  # not keras.ops.matmul
>>> layer = Raw(dtype=lp.Policy("fp8"), name="raw")
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     _ = tf.function(layer)(np.ones((1, 3), np.float32))
>>> [str(w.message).split(" (op")[0] for w in caught]
["layer 'raw' (Raw) computes MatMul"]
"""

import contextlib
import warnings
import weakref

import tensorflow as tf

from tf_lowprec.keras import adapter
from tf_lowprec.keras.policy import Policy

# TensorFlow ops that multiply matrices (or convolve): a layer's own ones are reported.
GEMM_OP_TYPES = frozenset({
    "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum", "SparseMatMul",
    "SparseTensorDenseMatMul", "_FusedMatMul", "Conv", "Conv1D", "Conv2D", "Conv3D",
    "DepthwiseConv2dNative", "Conv2DBackpropInput", "Conv2DBackpropInputV2",
    "Conv3DBackpropInputV2", "DepthwiseConv2dNativeBackpropInput", "_FusedConv2D",
})
ACTIONS = ("warn", "error", "ignore")
_action = "warn"
# Per graph: names of the ops already accounted for (emulated, or checked with an inner layer).
_accounted = weakref.WeakKeyDictionary()
# Per layer: {op type: name of the first such op found}.
_found = weakref.WeakKeyDictionary()


class UnemulatedGemmWarning(UserWarning):
    """A layer under an `lp.Policy` multiplies with an op the policy does not emulate."""


class UnemulatedGemmError(RuntimeError):
    """Raised instead of the warning under `set_unemulated_gemm_action("error")`."""


def set_unemulated_gemm_action(action):
    """What a raw TensorFlow GEMM in a layer under an `lp.Policy` causes: see ACTIONS.

    Process-wide; read when a step is traced (a traced step is not
    re-checked: call `model.make_train_function(force=True)` or retrace).

    >>> import tf_lowprec as lp
    >>> lp.set_unemulated_gemm_action("error"); lp.unemulated_gemm_action()
    'error'
    >>> lp.set_unemulated_gemm_action("warn")
    """
    global _action
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(map(repr, ACTIONS))}; got {action!r}")
    _action = action


def unemulated_gemm_action():
    """The action set by `set_unemulated_gemm_action` ("warn" unless changed)."""
    return _action


def unemulated_gemms(model):
    """{layer path: sorted op types} of the unemulated GEMMs found in `model`'s layers."""
    found = {}
    for layer in adapter.model_layers(model):
        ops = _found.get(layer)
        if ops:
            found[layer.path or layer.name] = sorted(ops)
    return found


def _graph_position():
    """(the graph being built, its number of ops), or (None, 0) when executing eagerly."""
    if tf.executing_eagerly():
        return None, 0
    graph = tf.compat.v1.get_default_graph()
    return graph, len(graph.get_operations())


def _new_ops(graph, start):
    accounted = _accounted.setdefault(graph, set())
    ops = [op for op in graph.get_operations()[start:] if op.name not in accounted]
    accounted.update(op.name for op in ops)
    return ops


@contextlib.contextmanager
def emulated_ops():
    """Marks the ops built inside as the emulation's own (never reported)."""
    graph, start = _graph_position()
    try:
        yield
    finally:
        if graph is not None:
            _new_ops(graph, start)


def _emulating(layer):
    policy = adapter.layer_policy(layer)
    return isinstance(policy, Policy) and policy.spec.emulates


def _report(layer, op):
    found = _found.setdefault(layer, {})
    name = layer.path or layer.name
    message = (
        f"layer {name!r} ({type(layer).__name__}) computes {op.type} (op {op.name!r}) with "
        f"raw TensorFlow, which its policy {adapter.layer_policy(layer).name!r} cannot "
        "emulate: that GEMM runs in FP32. Write it with keras.ops (matmul, einsum, dot, "
        "tensordot, inner, conv, depthwise_conv), which the policy emulates. "
        "lp.set_unemulated_gemm_action('error' or 'ignore') changes this warning."
    )
    if _action == "error":
        raise UnemulatedGemmError(message)
    if op.type not in found:
        found[op.type] = op.name
        warnings.warn(message, UnemulatedGemmWarning, stacklevel=2)


class _LayerCall:
    """Checks the ops one traced layer call adds (the adapter's "layer_call" listener)."""

    __slots__ = ("layer", "graph", "start")

    def __init__(self, layer, graph, start):
        self.layer, self.graph, self.start = layer, graph, start

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        if error_type is not None:
            return False
        ops = _new_ops(self.graph, self.start)  # inner layers have taken theirs
        raw = [op for op in ops if op.type in GEMM_OP_TYPES]
        if raw and _emulating(self.layer):
            for op in raw:
                _report(self.layer, op)
        return False


def check_layer_call(layer):
    """The adapter's "layer_call" listener: a `_LayerCall` for a traced call, else None."""
    if _action == "ignore" or tf.executing_eagerly():
        return None
    if tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        # Replicas are traced concurrently, in threads, into one graph: the ops one call
        # adds cannot be told from another replica's.
        return None
    graph, start = _graph_position()
    return _LayerCall(layer, graph, start)


adapter.set_listener("layer_call", check_layer_call)
