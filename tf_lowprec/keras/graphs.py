"""Where an op is being traced: in the body of a `tf.while_loop` (a recurrent layer's steps) or not.

A recurrent layer runs its cell in a `tf.while_loop`, whose body is a graph of
its own.  Values made there belong to one timestep; what must be made once per
training step (rounded weights, delayed scales) is made in the graph around
the loops, `outer_graph()`.
"""

import tensorflow as tf


def in_while_body(graph=None):
    """Whether `graph` (default: the current one) is the body of a tf.while_loop."""
    graph = graph if graph is not None else tf.compat.v1.get_default_graph()
    return type(graph).__name__ == "WhileBodyFuncGraph"


def outer_graph():
    """The graph around the current (nested) tf.while_loop bodies."""
    outer = tf.compat.v1.get_default_graph()
    while in_while_body(outer):
        outer = outer.outer_graph
    return outer
