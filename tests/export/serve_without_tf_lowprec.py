"""Loads a SavedModel in a process where tf_lowprec cannot be imported.

Usage: python serve_without_tf_lowprec.py SAVED_MODEL INPUT.npy OUTPUT.npy
Prints the custom ops found in the graph (there must be none).
"""

import sys

sys.modules["tf_lowprec"] = None  # any `import tf_lowprec` now raises ImportError

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(path, inputs, outputs):
    try:
        import tf_lowprec  # noqa: F401, PLC0415
    except ImportError:
        pass
    else:
        raise SystemExit("tf_lowprec was importable")
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    graph = serve.graph.as_graph_def()
    ops = {n.op for n in graph.node}
    ops |= {n.op for f in graph.library.function for n in f.node_def}
    print("CUSTOM_OPS", sorted(o for o in ops if o.startswith("Lowprec")))
    x = np.load(inputs)
    result = serve(tf.constant(x))
    np.save(outputs, next(iter(result.values())).numpy())


if __name__ == "__main__":
    main(*sys.argv[1:])
