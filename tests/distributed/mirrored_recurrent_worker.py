"""Run by tests/test_distributed.py in a fresh process: ALS with a GRU under MirroredStrategy.

Two logical CPU devices.  The layer-wise error scales of a recurrent layer
are computed per timestep inside its backward tf.while_loop, on each
replica, and leave the gradient graph as values; the replicas must agree,
and the training must equal the one-device run up to the all-reduce's FP32
summation order.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tf_lowprec as lp  # noqa: E402


def build():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((5,), dtype="int32"),
        keras.layers.Embedding(20, 4),
        keras.layers.GRU(6, dtype=lp.Policy("fp16"), name="gru"),
        keras.layers.Dense(20),
    ])
    opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.1))
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=opt, loss=lambda y, p: ce(y, p) * 1e-6)  # scales above 1
    return model


def main():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 20, (16, 5)), rng.integers(0, 20, (16,))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    single = build()
    single.fit(dataset, epochs=1, verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = build()
    mirrored.fit(dataset, epochs=1, verbose=0)
    out = {
        "max_weight_diff": max(float(np.max(np.abs(a - b)))
                               for a, b in zip(single.get_weights(), mirrored.get_weights())),
        "single_scales": {k: float(v) for k, v in single.optimizer.layer_scales.items()
                          if "gru" in k.split("/")},
        "mirrored_scales": {k: float(v.numpy())
                            for k, v in mirrored.optimizer.layer_scales.items()
                            if "gru" in k.split("/")},
        "replicas_agree": all(
            all(np.array_equal(r.numpy(), strategy.experimental_local_results(v)[0].numpy())
                for r in strategy.experimental_local_results(v))
            for v in mirrored.weights + mirrored.optimizer.variables),
    }
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
