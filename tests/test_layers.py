"""lp.layers.Quantize against the rounding functions it wraps."""


import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.numerics import rounding as rounding_lib
from tf_lowprec.training.layers import Quantize

FORMATS = [lp.BF16, lp.E4M3, lp.E5M2, lp.DFP16, lp.DfpFormat(8, block_size=4, axis=-1)]
ROUNDINGS = ["nearest_even", "stochastic", "toward_zero"]


def _data(shape=(6, 8), seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_forward_and_backward_match_rounding_functions(fmt, rounding):
    x = _data()
    upstream = _data(seed=1) * 1e-3
    layer = Quantize(fmt, backward_format=lp.E5M2, rounding=rounding,
                     backward_rounding=rounding, seed=5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * upstream)
    dx = tape.gradient(loss, x)
    # The layer's first draw from SeedGenerator(5) is the seed of this call.
    seed = keras.random.SeedGenerator(5).next()
    expected = lp.quantize(x, fmt, rounding, seed=seed)
    np.testing.assert_array_equal(y.numpy(), expected.numpy())
    backward_seed = tf.random.experimental.stateless_fold_in(
        tf.cast(seed, tf.int64), rounding_lib._BACKWARD_SALT
    )
    expected_dx = lp.round_to_format(upstream, lp.E5M2, rounding, seed=backward_seed)
    np.testing.assert_array_equal(dx.numpy(), expected_dx.numpy())


def test_straight_through_without_backward_format():
    x = _data()
    layer = Quantize("e4m3")
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * 3.0)
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), np.full(x.shape, 3.0))


def test_stochastic_rounding_draws_new_bits_each_call_and_reproduces():
    x = _data((64, 64))
    layer = Quantize("bf16", rounding="stochastic", seed=3)
    first, second = layer(x).numpy(), layer(x).numpy()
    assert (first != second).mean() > 0.1  # fresh bits per call (per training step)
    again = Quantize("bf16", rounding="stochastic", seed=3)
    np.testing.assert_array_equal(again(x).numpy(), first)
    np.testing.assert_array_equal(again(x).numpy(), second)


def test_global_keras_seed_makes_unseeded_layer_reproducible():
    x = _data((32, 32))
    keras.utils.set_random_seed(11)
    a = Quantize("e5m2", rounding="stochastic")(x).numpy()
    keras.utils.set_random_seed(11)
    b = Quantize("e5m2", rounding="stochastic")(x).numpy()
    np.testing.assert_array_equal(a, b)


def _residual_model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    stream = keras.layers.Add()([inputs, h])
    stream = Quantize(lp.BF16, backward_format=lp.E5M2, rounding="stochastic",
                      name="residual_q")(stream)
    h2 = keras.layers.Dense(16, activation="relu")(stream)
    stream = keras.layers.Add()([stream, h2])
    outputs = keras.layers.Dense(3)(stream)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_residual_stream_model_trains_reproducibly_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    histories, weights = [], []
    for _ in range(2):
        model = _residual_model(seed=4)
        history = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
        histories.append(history.history["loss"])
        weights.append([w.numpy() for w in model.weights])
    assert np.all(np.isfinite(histories[0]))
    assert histories[0][-1] < histories[0][0]
    assert histories[0] == histories[1]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
    path = tmp_path / "residual.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("residual_q")
    assert isinstance(layer, Quantize)
    assert layer.format == lp.BF16 and layer.backward_format == lp.E5M2
    assert layer.rounding == "stochastic"
    np.testing.assert_array_equal(
        layer.seed_generator.state.numpy(),
        model.get_layer("residual_q").seed_generator.state.numpy(),
    )
    # Deterministic rounding: predictions of the reloaded model are identical.
    det = keras.Sequential([keras.Input((16,)), Quantize(lp.E4M3), keras.layers.Dense(2)])
    det.save(tmp_path / "det.keras")
    np.testing.assert_array_equal(
        keras.models.load_model(tmp_path / "det.keras").predict(x, verbose=0),
        det.predict(x, verbose=0),
    )


def test_custom_training_loop_and_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)
            self.q = Quantize(lp.DFP16)

        def call(self, x):
            return self.q(self.dense(x))

    net = Net()
    optimizer = keras.optimizers.SGD(0.1)
    x = _data((8, 5))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(net(x) - 1.0))
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return loss

    losses = [float(step()) for _ in range(5)]
    assert losses[-1] < losses[0]
    out = net(x)
    np.testing.assert_array_equal(out.numpy(), lp.quantize_dfp(net.dense(x)).numpy())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"format": "bogus"}, "unknown format"),
        ({"format": "bf16", "rounding": "up"}, "rounding must be one of"),
        ({"format": "bf16", "backward_rounding": "up"}, "backward_rounding must be one of"),
        ({"format": "bf16", "seed": "x"}, "seed must be None or an int"),
        ({"format": "bf16", "random_bits": 0}, "random_bits must be"),
        ({"format": "bf16", "implementation": "gpu"}, "implementation must be one of"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Quantize(**kwargs)


def test_mixed_precision_inputs_are_cast_to_float32():
    x = tf.constant([[1.0 + 2.0**-9, 3.0]], tf.bfloat16)
    y = Quantize("e4m3")(x)
    assert y.dtype == tf.float32
    np.testing.assert_array_equal(y.numpy(), [[1.0, 3.0]])
