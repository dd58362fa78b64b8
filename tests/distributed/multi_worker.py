"""One worker of a two-process MultiWorkerMirroredStrategy run on 127.0.0.1.

Started twice by tests/test_distributed.py with TF_CONFIG set; prints the
trained weights' checksum and the layer scales as JSON.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tf_lowprec as lp  # noqa: E402

keras.config.disable_traceback_filtering()


def main():
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = (np.abs(x[:, :4]).argmax(axis=1)).astype(np.int64)
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", dtype=lp.Policy("fp16")),
            keras.layers.Dense(4, dtype=lp.Policy("fp16")),
        ])
        optimizer = lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.05 * 2.0**16),
                                                  initial_scale=2.0**10)
        optimizer.build(model.trainable_variables)
        # The layers find their error scaler as the model's optimizer.
        model.compile(optimizer=optimizer)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    global_batch = 16
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch).with_options(options)

    # A custom training loop (Keras 3.15's fit() cannot build a model under
    # MultiWorkerMirroredStrategy: _maybe_symbolic_build reduces a PerReplica
    # batch eagerly and fails, independently of tf_lowprec).
    @tf.function
    def train_step(batch):
        def replica_step(inputs, targets):
            with tf.GradientTape() as tape:
                # A small loss puts the FP16 errors below range: scales above 1.
                per_example = ce(targets, model(inputs, training=True)) * 2.0**-16
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss

        per_replica = strategy.run(replica_step, args=batch)
        return strategy.reduce("SUM", per_replica, axis=None)

    losses = []
    for _ in range(2):
        epoch = [float(train_step(batch)) for batch in strategy.experimental_distribute_dataset(ds)]
        losses.append(float(np.mean(epoch)) * 2.0**16)
    weights = [w.numpy() for w in model.weights]
    print("RESULT " + json.dumps({
        "task": json.loads(os.environ["TF_CONFIG"])["task"]["index"],
        "checksum": float(sum(np.sum(w.astype(np.float64) * (i + 1))
                              for i, w in enumerate(weights))),
        "losses": losses,
        "scales": sorted(float(v.numpy()) for v in optimizer.layer_scales.values()),
    }), flush=True)


if __name__ == "__main__":
    sys.exit(main())
