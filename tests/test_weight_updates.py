"""Pure low-precision weights: nearest rounding stalls, SR and Kahan recover."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp


def _run(rounding, steps=1000, update=1e-3, n=4096):
    v = keras.Variable(np.ones(n, np.float32))
    opt = lp.LowPrecisionWeights(keras.optimizers.SGD(1.0), "bf16", rounding, seed=1)
    grad = np.full(n, -update, np.float32)

    @tf.function
    def step():
        opt.apply([grad], [v])

    for _ in range(steps):
        step()
    return v.numpy()


def test_microbenchmark_matches_papers_table():
    # docs/papers.md §0.6: w = 1.0 plus 1000 updates of 1e-3 in BF16.
    assert np.all(_run("nearest_even") == 1.0)  # every update is cancelled
    kahan = _run("kahan")
    np.testing.assert_allclose(kahan, 2.0, atol=2.0**-7)
    sr = _run("stochastic")
    assert abs(sr.mean() - 2.0) < 0.01  # unbiased on average
    # Values stay on the bf16 grid.
    for values in (kahan, sr):
        np.testing.assert_array_equal(values, lp.round_to_format(values, lp.BF16).numpy())


def test_weights_are_rounded_at_build_and_seeded_sr_reproduces():
    v = keras.Variable(np.full(3, 1.0 + 2.0**-10, np.float32))
    opt = lp.LowPrecisionWeights(keras.optimizers.SGD(0.1), "bf16")
    opt.build([v])
    np.testing.assert_array_equal(v.numpy(), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(_run("stochastic", steps=50), _run("stochastic", steps=50))


def test_fit_with_adam_and_serialization(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=lp.LowPrecisionWeights(keras.optimizers.Adam(1e-2), "bf16",
                                                   "kahan"), loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    history = model.fit(x, x[:, :2] * 0.5, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    for w in model.weights:
        np.testing.assert_array_equal(w.numpy(), lp.round_to_format(w, lp.BF16).numpy())
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, lp.LowPrecisionWeights)
    assert loaded.optimizer.rounding == "kahan" and loaded.optimizer.format == lp.BF16
    for a, b in zip(model.optimizer.compensations, loaded.optimizer.compensations):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize(
    "args, match",
    [
        (("bf16", "up"), "rounding must be one of"),
        (("dfp16", "kahan"), "format must be a FloatFormat"),
        (("nope", "kahan"), "unknown format"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        lp.LowPrecisionWeights(keras.optimizers.SGD(), *args)
    with pytest.raises(ValueError, match="inner_optimizer"):
        lp.LowPrecisionWeights("sgd")
