"""Unchanged Keras training code runs under every preset (must-show 2)."""

import keras
import numpy as np
import pytest

import tf_lowprec as lp
from tf_lowprec.cli import datasets

PRESETS = ["fp32", "bf16", "fp16", "fp8", "hfp8", "dfp16", "bf16_native"]


@pytest.fixture(autouse=True)
def _float32_global_policy():
    yield
    keras.config.set_dtype_policy("float32")


# The user's model code: stock layers, no tf_lowprec in sight.

def sequential_cnn():
    return keras.Sequential([
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.SeparableConv2D(6, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])


def functional_residual():
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    branch = keras.layers.DepthwiseConv2D(3, padding="same")(h)
    branch = keras.layers.LayerNormalization()(branch)
    h = keras.layers.Add()([h, branch])
    h = keras.layers.Conv2DTranspose(2, 2, strides=2)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


class Gated(keras.layers.Layer):
    """A user's custom layer built on keras.ops.matmul / einsum."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 2 * self.units),
                                 initializer="glorot_uniform")

    def call(self, x):
        h = keras.ops.matmul(x, self.w)
        a, b = keras.ops.split(h, 2, axis=-1)
        return keras.ops.einsum("bi,bi->bi", a, keras.ops.sigmoid(b))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.flatten = keras.layers.Flatten()
        self.gated = Gated(16)
        self.head = keras.layers.EinsumDense("bi,ic->bc", output_shape=10, bias_axes="c")

    def call(self, x):
        return self.head(self.gated(self.flatten(x)))


def lstm_text():
    return keras.Sequential([
        keras.Input((8,), dtype="int32"),
        keras.layers.Embedding(20, 8),
        keras.layers.LSTM(8, return_sequences=True),
        keras.layers.GRU(6),
        keras.layers.Dense(10),
    ])


MODELS = {"sequential_cnn": sequential_cnn, "functional_residual": functional_residual,
          "subclassed": Subclassed, "lstm_text": lstm_text}


def _data(model_name, n=48):
    rng = np.random.RandomState(0)
    y = rng.randint(0, 10, n)
    if model_name == "lstm_text":
        return (y[:, None] + rng.randint(0, 10, (n, 8))).astype("int32"), y
    return rng.rand(n, 12, 12, 1).astype("float32"), y


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_unchanged_code_fits_under_every_preset(model_name, preset):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(lp.Policy(preset))  # the one added line
    model = MODELS[model_name]()
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    x, y = _data(model_name)
    history = model.fit(x, y, batch_size=16, epochs=2, validation_data=(x[:16], y[:16]),
                        verbose=0)
    losses = history.history["loss"] + history.history["val_loss"]
    assert np.all(np.isfinite(losses)), losses
    assert np.isfinite(model.evaluate(x, y, verbose=0)[0])
    assert np.all(np.isfinite(model.predict(x[:4], verbose=0)))
    assert np.isfinite(model.train_on_batch(x[:16], y[:16])[0])
    emulated = [layer for layer in model._flatten_layers()
                if isinstance(layer.dtype_policy, lp.Policy)]
    assert emulated, "the global policy reached the layers"


def _mnist_losses(preset, epochs=4):
    keras.backend.clear_session()
    keras.utils.set_random_seed(1)
    keras.config.set_dtype_policy(lp.Policy(preset))
    (x, y), _ = datasets.load_mnist_5k()
    x, y = x[:512, ::2, ::2, None], y[:512]  # 14x14 to keep the test short
    model = keras.Sequential([keras.Input((14, 14, 1)),
                              keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return np.array(model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False,
                              verbose=0).history["loss"])


def test_bf16_loss_curve_tracks_fp32_on_real_mnist():
    fp32, bf16 = _mnist_losses("fp32"), _mnist_losses("bf16")
    assert fp32[-1] < 0.6 * fp32[0]  # it learns
    # Within noise: per-epoch losses within 5 % of FP32 on the same seed.
    np.testing.assert_allclose(bf16, fp32, rtol=0.05)
    assert not np.array_equal(bf16, fp32)  # and it is emulated
