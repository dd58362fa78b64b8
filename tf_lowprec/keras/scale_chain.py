"""Scales that accumulate down the network: the chain of Zhao et al.'s loss scaling.

Under `AdaptiveLossScaleOptimizer(scaling_rule="paper")` every emulated layer
needs, in its backward pass, the accumulated scale its error arrives with:
the smallest accumulated scale of the scaled layers its output feeds (and 1,
the loss scale alone, for a path that reaches the model's output or a layer
that restarts the chain).  That scale is passed as data in the gradient
graph: a layer's error scaling has a second output, a "token" (a zero
float32 vector of `TOKEN_SIZE`), which every scaled layer fed by it takes as
an input; backward, the consumer returns as the token's gradient a one-hot
vector at its own accumulated exponent, TensorFlow sums them over the
consumers, and the producer takes the smallest exponent present.

Which layer feeds which comes from Keras' functional graph
(`adapter.layer_neighbours`): a layer of a subclassed model, a shared layer,
a layer calling more than one GEMM (an attention layer, a recurrent cell)
and a recurrent layer (its GEMMs run inside a tf.while_loop) restart the
chain: their own error arrives with the loss scale alone, and they report
the loss scale alone upwards.
"""

import weakref

import tensorflow as tf

from tf_lowprec.keras import adapter

# Accumulated exponents (log2 of the scale relative to the loss scale) from
# LOWEST_EXPONENT to LOWEST_EXPONENT + TOKEN_SIZE - 1; the caps keep them at
# most log2(1024) = 10, and only overflow bounds drive them below 0.
LOWEST_EXPONENT = -53
TOKEN_SIZE = 64
_NONE = 1 << 20

_graph_registries = weakref.WeakKeyDictionary()
_eager_registries = {}


class Entry:
    """What one layer's chain link holds during a forward pass and its backward pass."""

    def __init__(self, layer, token):
        self.layer = layer
        self.token = token
        self.eligible = True
        self.consumers = set()  # ids of the layers that took this token


def _registry(replica):
    """{id(layer): Entry} of the graph being built (or of eager execution), per replica."""
    if tf.executing_eagerly():
        return _eager_registries.setdefault(replica, {})
    graph = tf.compat.v1.get_default_graph()
    while hasattr(graph, "outer_graph") and type(graph).__name__ == "WhileBodyFuncGraph":
        graph = graph.outer_graph
    return _graph_registries.setdefault(graph, {}).setdefault(replica, {})


def enter(layer, first_gemm_of_call, in_loop, replica):
    """Registers one scaled GEMM of `layer` (forward); returns its Entry.

    The entry is eligible (carries the chain) when it is the layer's only
    GEMM, outside a recurrent loop, in a layer with one place in the graph.
    """
    registry = _registry(replica)
    entry = registry.get(id(layer))
    if not first_gemm_of_call and entry is not None:
        entry.eligible = False  # a second GEMM in the same call: restart
        return entry
    entry = Entry(layer, None)  # the token: the error scaling's second output
    entry.eligible = not in_loop and adapter.layer_neighbours(layer) is not None
    registry[id(layer)] = entry
    return entry


def upstream_tokens(entry, replica):
    """The tokens of the eligible scaled layers that feed `entry`'s layer (forward)."""
    if not entry.eligible:
        return []
    registry = _registry(replica)
    tokens, seen = [], set()
    pending = list(adapter.layer_neighbours(entry.layer)[0])
    while pending:
        layer = pending.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        found = registry.get(id(layer))
        if found is not None:
            if found.eligible:
                found.consumers.add(id(entry.layer))
                tokens.append(found.token)
            continue  # a scaled layer ends the path either way
        neighbours = adapter.layer_neighbours(layer)
        if neighbours is not None:
            pending.extend(neighbours[0])
    return tokens


def reaches_restart(entry, replica):
    """Whether a path from the layer's output reaches the model output or a restarting layer.

    Runs in the backward pass, when the forward registry is complete.
    """
    registry = _registry(replica)
    pending, seen = [entry.layer], set()
    while pending:
        layer = pending.pop()
        neighbours = adapter.layer_neighbours(layer)
        if neighbours is None or not neighbours[1]:
            return True  # the model's output, or a place the graph does not show
        for child in neighbours[1]:
            if id(child) in seen:
                continue
            seen.add(id(child))
            if id(child) in entry.consumers:
                continue
            if id(child) in registry:
                return True  # a scaled layer that did not take the token restarts
            pending.append(child)
    return False


def carried_exponent(token_gradient, restart):
    """int32: the smallest accumulated exponent among the consumers (0 where `restart`)."""
    exponents = tf.range(TOKEN_SIZE, dtype=tf.int32) + LOWEST_EXPONENT
    present = tf.where(token_gradient > 0, exponents, tf.fill([TOKEN_SIZE], _NONE))
    smallest = tf.reduce_min(present)
    if restart:
        smallest = tf.minimum(smallest, 0)
    return tf.where(smallest == _NONE, 0, smallest)


def one_hot(exponent):
    """The token gradient a consumer returns: 1 at its accumulated exponent."""
    index = tf.clip_by_value(tf.cast(exponent, tf.int32) - LOWEST_EXPONENT, 0, TOKEN_SIZE - 1)
    return tf.one_hot(index, TOKEN_SIZE, dtype=tf.float32)
