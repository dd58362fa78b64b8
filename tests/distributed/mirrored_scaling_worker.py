"""Run by tests/test_scaling.py in a fresh process: delayed scaling under MirroredStrategy.

Two logical CPU devices.  After one training step of an `fp8_delayed` MLP,
each layer's scale and amax history must be the same on both replicas and
equal to those of the one-device run on the whole batch (the amax is the
maximum over the replicas' shards, as Transformer Engine reduces it).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tf_lowprec as lp  # noqa: E402
from tf_lowprec.keras import scaling  # noqa: E402


def build():
    keras.utils.set_random_seed(1)
    policy = lp.Policy("fp8_delayed")
    model = keras.Sequential([keras.Input((8,)),
                              keras.layers.Dense(16, activation="relu", dtype=policy),
                              keras.layers.Dense(4, dtype=policy)])
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def states(model):
    """{layer/role: [[scale, history[:2]] per replica]}."""
    found = {}
    for index, layer in enumerate(model.layers):
        for role, (scale, history) in scaling.state_of(layer).items():
            scales = getattr(scale.value, "values", None) or [scale.value]
            histories = getattr(history.value, "values", None) or [history.value]
            found[f"{index}/{role}"] = [
                [float(s.numpy()), [float(v) for v in h.numpy()[:2]]]
                for s, h in zip(scales, histories)]
    return found


rng = np.random.default_rng(0)
x = (rng.normal(size=(16, 8)) * [1, 1, 1, 1, 1, 1, 1, 300]).astype(np.float32)
y = rng.integers(0, 4, 16)
# The largest input in the second replica's half: its amax must reach the first replica.
x[12, 7] = 1000.0
single = build()
single.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = build()
mirrored.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
single_state, mirrored_state = states(single), states(mirrored)
print("RESULT " + json.dumps({
    "replicas": {k: len(v) for k, v in mirrored_state.items()},
    "replicas_agree": all(v[0] == r for v in mirrored_state.values() for r in v),
    "mirrored": {k: v[0] for k, v in mirrored_state.items()},
    "single": {k: v[0] for k, v in single_state.items()},
}))
