"""Run by tests/test_distributed.py in a fresh process: two logical CPU devices."""

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


def build(policy):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu", dtype=policy),
        keras.layers.Dense(4, dtype=policy),
    ])
    opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.05 * 2.0**16), initial_scale=2.0**10)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # A small loss puts the FP16 errors below range: the layer scales go above 1.
    model.compile(optimizer=opt, loss=lambda y, p: ce(y, p) * 2.0**-16)
    return model


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = (np.abs(x[:, :4]).argmax(axis=1)).astype(np.int64)
    return x, y


def fit(model, x, y):
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    model.fit(ds, epochs=2, verbose=0, shuffle=False)
    return [w.numpy() for w in model.weights]


def main():
    out = {}
    x, y = data()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    policy = lp.Policy("fp16")
    single = build(policy)
    single_weights = fit(single, x, y)
    with strategy.scope():
        mirrored = build(policy)
    mirrored_weights = fit(mirrored, x, y)
    out["max_weight_diff"] = max(float(np.max(np.abs(a - b)))
                                 for a, b in zip(single_weights, mirrored_weights))
    out["single_scales"] = {k.split("/")[-1]: float(v)
                            for k, v in single.optimizer.layer_scales.items()}
    out["mirrored_scales"] = {k.split("/")[-1]: float(v.numpy())
                              for k, v in mirrored.optimizer.layer_scales.items()}
    # Replicas agree on every variable after training.
    out["replicas_agree"] = all(
        all(np.array_equal(r.numpy(), strategy.experimental_local_results(v)[0].numpy())
            for r in strategy.experimental_local_results(v))
        for v in mirrored.weights + mirrored.optimizer.variables
    )
    # A NaN on one replica only: the all-reduced gradient is non-finite, the step
    # is skipped on every replica and the global scale halves.
    before = [w.numpy().copy() for w in mirrored.weights]
    scale_before = float(mirrored.optimizer.dynamic_scale.numpy())
    poisoned = x[:16].copy()
    poisoned[12, 0] = np.inf  # the second replica's half of the batch
    mirrored.train_on_batch(poisoned, y[:16])
    out["skipped"] = all(np.array_equal(b, w.numpy()) for b, w in zip(before, mirrored.weights))
    out["scale_halved"] = float(mirrored.optimizer.dynamic_scale.numpy()) == scale_before / 2
    # Stochastic rounding per replica equals one device on the same shard.
    sr = lp.Policy("bf16", rounding="stochastic")
    keras.utils.set_random_seed(3)
    with strategy.scope():
        layer = keras.layers.Dense(8, dtype=sr)
        layer.build((None, 8))

    @tf.function
    def replica_fn(inputs):
        return layer(inputs)

    shards = tf.constant(x[:32])
    per_replica = strategy.run(replica_fn, args=(strategy.experimental_distribute_values_from_function(
        lambda ctx: shards[ctx.replica_id_in_sync_group * 16:(ctx.replica_id_in_sync_group + 1) * 16]),))
    outputs = strategy.experimental_local_results(per_replica)
    singles = [replica_fn(shards[i * 16:(i + 1) * 16]) for i in range(2)]
    out["sr_per_replica_matches_single"] = all(
        np.array_equal(a.numpy(), b.numpy()) for a, b in zip(outputs, singles))
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
