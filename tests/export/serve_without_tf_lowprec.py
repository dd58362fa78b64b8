"""Loads SavedModels in a process where tf_lowprec cannot be imported.

Usage: python serve_without_tf_lowprec.py SAVED_MODEL INPUT.npy OUTPUT.npy
   or: python serve_without_tf_lowprec.py --requests
       (one process for many models: each stdin line, a JSON list [SAVED_MODEL, INPUT.npy,
       OUTPUT.npy], is answered on stdout, ending with a line "DONE" or "ERROR <message>")
Prints the custom ops found in the graph (there must be none).
"""

import json
import sys

sys.modules["tf_lowprec"] = None  # any `import tf_lowprec` now raises ImportError

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def serve(path, inputs, outputs):
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    graph = signature.graph.as_graph_def()
    ops = {n.op for n in graph.node}
    ops |= {n.op for f in graph.library.function for n in f.node_def}
    print("CUSTOM_OPS", sorted(o for o in ops if o.startswith("Lowprec")))
    x = np.load(inputs)
    result = signature(tf.constant(x))
    np.save(outputs, next(iter(result.values())).numpy())


def main(args):
    try:
        import tf_lowprec  # noqa: F401, PLC0415
    except ImportError:
        pass
    else:
        raise SystemExit("tf_lowprec was importable")
    if args != ["--requests"]:
        serve(*args)
        return
    # Requests from the tests: one TensorFlow start-up for every model they export.
    for line in sys.stdin:
        try:
            serve(*json.loads(line))
        except Exception as error:  # noqa: BLE001  (reported to the test, which fails)
            print("ERROR", f"{type(error).__name__}: {error}".replace("\n", " "), flush=True)
        else:
            print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
