"""Per-tensor scaling (lp.Scaling): numerics against NumPy, state, presets.

References are written from Transformer Engine's definitions: s = (M / amax)
/ 2^margin (rounded down to a power of two if asked), y = Q(clip(x * s)) / s
with ml_dtypes doing Q; delayed scaling uses the largest amax of the
previous steps.
"""

import json
import os
import subprocess
import sys

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.keras import scaling

HERE = os.path.dirname(os.path.abspath(__file__))
E4M3_MAX, E5M2_MAX = 448.0, 57344.0
F32_MAX = np.finfo(np.float32).max


def ref_scale(amax, fmt_max, margin=0, power_of_two=False, previous=1.0):
    amax = np.float32(amax)
    if not (np.isfinite(amax) and amax >= 2.0**-126):  # subnormal amax: as zero
        return np.float32(previous)
    with np.errstate(over="ignore"):
        s = np.float32(np.float32(fmt_max) / amax) / np.float32(2.0**margin)
    s = np.float32(min(max(s, np.float32(2.0**-126)), F32_MAX))
    if power_of_two:
        s = np.float32(2.0 ** np.floor(np.log2(np.float64(s))))
    return s


def ref_round(x, scale, dtype, fmt_max):
    x = np.asarray(x, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        product = (x * np.float32(scale)).astype(np.float32)
        product = np.where(np.isfinite(x), np.clip(product, -fmt_max, fmt_max), product)
        rounded = product.astype(dtype).astype(np.float32)
    if dtype == ml_dtypes.float8_e4m3fn:  # no infinities: Inf saturates (overflow="saturate")
        rounded = np.where(np.isinf(product), np.sign(product) * fmt_max, rounded)
    return (rounded / np.float32(scale)).astype(np.float32)


def spec(mode, role_format=("e4m3", "e4m3", "e5m2"), **kwargs):
    weights_scaling = kwargs.pop("weights_scaling", None)
    s = lp.Scaling(mode, **kwargs)
    a, w, e = role_format
    return lp.PrecisionSpec(activations=(a, "nearest_even", s),
                            weights=(w, "nearest_even", weights_scaling or s),
                            errors=(e, "nearest_even", s))


# The scale and the scaled rounding -------------------------------------------------------

@pytest.mark.parametrize("margin,power_of_two", [(0, False), (0, True), (3, False), (2, True)])
def test_compute_scale_matches_definition(margin, power_of_two):
    amaxes = np.array([3.5, 1e-3, 448.0, 1000.0, 7e-39, 1e-45, 3e38, 0.0, np.inf, np.nan,
                       -1.0], np.float32)
    got = scaling.compute_scale(amaxes, E4M3_MAX, margin, power_of_two, previous=5.0).numpy()
    want = [ref_scale(a, E4M3_MAX, margin, power_of_two, previous=5.0) for a in amaxes]
    np.testing.assert_array_equal(got, np.array(want, np.float32))


def test_scaled_round_matches_reference_and_power_of_two_is_exact():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(257) * 3000).astype(np.float32)
    x[:4] = [np.inf, -np.inf, np.nan, 0.0]
    fmt = lp.formats.get("e4m3")
    for scale in (np.float32(0.1234), np.float32(2.0**-3)):
        got = scaling.scaled_round(x, scale, fmt).numpy()
        np.testing.assert_array_equal(got, ref_round(x, scale, ml_dtypes.float8_e4m3fn,
                                                     E4M3_MAX))
    # With a power-of-two scale the results are exactly 8 times E4M3 values.
    y = scaling.scaled_round(x[4:], np.float32(2.0**-3), fmt).numpy()
    np.testing.assert_array_equal(y, (x[4:] / 8).clip(-448, 448).astype(
        ml_dtypes.float8_e4m3fn).astype(np.float32) * 8)


# Current scaling in a layer: forward operands, per-channel weights, errors ---------------

def test_current_scaling_of_a_dense_layer_forward_and_backward():
    keras.utils.set_random_seed(0)
    channel = lp.Scaling("current", granularity="channel", power_of_two=True)
    policy = lp.Policy("c", spec=spec("current", weights_scaling=channel, margin=1))
    layer = keras.layers.Dense(5, use_bias=False, dtype=policy)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((6, 7)) * 900).astype(np.float32)
    layer.build(x.shape)
    kernel = np.asarray(layer.kernel) * np.array([1, 10, 100, 1e-3, 1], np.float32)
    layer.kernel.assign(kernel)
    dy = (rng.standard_normal((6, 5)) * 1e-4).astype(np.float32)
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        out = layer(xt)
    dx = tape.gradient(out, xt, output_gradients=tf.constant(dy))
    xq = ref_round(x, ref_scale(np.abs(x).max(), E4M3_MAX, 1), ml_dtypes.float8_e4m3fn,
                   E4M3_MAX)
    channel_scales = np.array([ref_scale(a, E4M3_MAX, 1, True) for a in np.abs(kernel).max(0)])
    wq = ref_round(kernel, channel_scales[None], ml_dtypes.float8_e4m3fn, E4M3_MAX)
    np.testing.assert_array_equal(np.asarray(out), tf.matmul(xq, wq).numpy())
    dyq = ref_round(dy, ref_scale(np.abs(dy).max(), E5M2_MAX, 1), ml_dtypes.float8_e5m2,
                    E5M2_MAX)
    np.testing.assert_array_equal(dx.numpy(), tf.matmul(dyq, wq, transpose_b=True).numpy())
    # Unscaled E5M2 would flush most of these errors to zero.
    assert np.count_nonzero(dyq) == dy.size


# Delayed scaling: the scale of step t comes from the amaxes of earlier steps -------------

def _delayed_model(history_length=3, margin=0, power_of_two=False):
    keras.utils.set_random_seed(0)
    policy = lp.Policy("d", spec=spec("delayed", history_length=history_length, margin=margin,
                                      power_of_two=power_of_two))
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(3, use_bias=False, dtype=policy)])
    model.compile(keras.optimizers.SGD(0.0), "mse")  # weights fixed: the state alone moves
    return model


@pytest.mark.parametrize("margin,power_of_two", [(0, False), (2, True)])
def test_delayed_scaling_history_and_scales(margin, power_of_two):
    model = _delayed_model(3, margin, power_of_two)
    layer = model.layers[0]
    state = scaling.state_of(layer)
    assert sorted(state) == ["activations", "errors", "weights"]
    kernel = np.asarray(layer.kernel)
    rng = np.random.default_rng(2)
    amaxes, scale = [], np.float32(1.0)
    for step, factor in enumerate([1000.0, 3.0, 0.5, 0.25]):
        x = (rng.standard_normal((8, 4)) * factor).astype(np.float32)
        # The forward pass uses the stored scale, then the step's amax enters the history.
        want = tf.matmul(ref_round(x, scale, ml_dtypes.float8_e4m3fn, E4M3_MAX),
                         ref_round(kernel, state["weights"][0].numpy(),
                                   ml_dtypes.float8_e4m3fn, E4M3_MAX)).numpy()
        np.testing.assert_array_equal(model.predict_on_batch(x), want)
        model.train_on_batch(x, np.zeros((8, 3), np.float32))
        amaxes.insert(0, np.abs(x).max())
        history = (amaxes + [0.0] * 3)[:3]
        np.testing.assert_array_equal(state["activations"][1].numpy(), history)
        scale = ref_scale(max(history), E4M3_MAX, margin, power_of_two)
        assert state["activations"][0].numpy() == scale, step
        assert state["weights"][0].numpy() == ref_scale(np.abs(kernel).max(), E4M3_MAX,
                                                        margin, power_of_two)
        errors_history = state["errors"][1].numpy()
        assert errors_history[0] > 0 and state["errors"][0].numpy() == ref_scale(
            errors_history.max(), E5M2_MAX, margin, power_of_two)
    # After four steps the first (1000x) amax has left the history of three.
    assert state["activations"][1].numpy().max() < 100


def test_delayed_scaling_inference_does_not_update_the_state():
    model = _delayed_model()
    x = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)
    model.train_on_batch(x, np.zeros((8, 3), np.float32))
    before = [v.numpy().copy() for v in model.layers[0].weights]
    model.predict(x, verbose=0)
    model.evaluate(x * 100, np.zeros((8, 3), np.float32), verbose=0)
    for old, new in zip(before, model.layers[0].weights):
        np.testing.assert_array_equal(old, new.numpy())


# State round trips -------------------------------------------------------------------------

def _trained_delayed_mlp():
    keras.utils.set_random_seed(0)
    policy = lp.Policy("fp8_delayed")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, dtype=policy),
                              keras.layers.Dense(2, dtype=policy)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    rng = np.random.default_rng(4)
    model.fit(rng.standard_normal((16, 4)).astype(np.float32) * 50,
              rng.standard_normal((16, 2)).astype(np.float32), batch_size=8, verbose=0)
    return model


def _state_values(model):
    return {f"{i}/{role}/{k}": v.numpy().copy() for i, layer in enumerate(model.layers)
            for role, pair in scaling.state_of(layer).items() for k, v in zip("sh", pair)}


def test_state_survives_save_load_and_checkpoints(tmp_path):
    model = _trained_delayed_mlp()
    saved = _state_values(model)
    assert len(saved) == 12 and all(v.any() for v in saved.values())
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    got = _state_values(loaded)
    assert got.keys() == saved.keys()
    for key in saved:
        np.testing.assert_array_equal(got[key], saved[key])
    x = np.ones((2, 4), np.float32) * 30
    np.testing.assert_array_equal(loaded.predict_on_batch(x), model.predict_on_batch(x))
    # save_weights (ModelCheckpoint, BackupAndRestore) and tf.train.Checkpoint.
    model.save_weights(str(tmp_path / "w.weights.h5"))
    checkpoint = tf.train.Checkpoint(model=model)
    prefix = checkpoint.save(str(tmp_path / "ckpt"))
    for layer in model.layers:
        for scale, history in scaling.state_of(layer).values():
            scale.assign(7.0)
            history.assign(tf.zeros_like(history))
    checkpoint.restore(prefix).assert_existing_objects_matched()
    for key, value in _state_values(model).items():
        np.testing.assert_array_equal(value, saved[key])
    fresh = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(8, dtype=lp.Policy("fp8_delayed")),
                              keras.layers.Dense(2, dtype=lp.Policy("fp8_delayed"))])
    fresh.load_weights(str(tmp_path / "w.weights.h5"))
    for key, value in _state_values(fresh).items():
        np.testing.assert_array_equal(value, saved[key])


def test_mirrored_strategy_replicas_agree_with_one_device():
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "distributed", "mirrored_scaling_worker.py")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert out["replicas"] and set(out["replicas"].values()) == {2}
    assert out["replicas_agree"]
    # The activations' amax is the largest of both shards (the 1000 sits in the second).
    assert out["mirrored"]["0/activations"][1][0] == 1000.0
    assert out["mirrored"] == out["single"]


# The API's errors, the presets, serialisation ---------------------------------------------

def test_bad_scaling_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="mode must be one of current, delayed"):
        lp.Scaling("dynamic")
    with pytest.raises(ValueError, match="history_length"):
        lp.Scaling("delayed", history_length=0)
    with pytest.raises(ValueError, match="margin"):
        lp.Scaling("delayed", margin=-1)
    with pytest.raises(ValueError, match="needs mode='current'"):
        lp.Scaling("delayed", granularity="channel")
    with pytest.raises(ValueError, match="activations: granularity='channel' is for weights"):
        lp.PrecisionSpec(activations=("e4m3", "nearest_even",
                                      lp.Scaling("current", granularity="channel")))
    with pytest.raises(ValueError, match="weight_gradients cannot be scaled"):
        lp.PrecisionSpec(weight_gradients=("e5m2", "nearest_even", lp.Scaling("current")))
    with pytest.raises(ValueError, match="Scaling needs a float format"):
        lp.PrecisionSpec(activations=("dfp16", "nearest_even", lp.Scaling("current")))
    with pytest.raises(ValueError, match="third entry must be an lp.Scaling"):
        lp.PrecisionSpec(activations=("e4m3", "nearest_even", "delayed"))


def test_policy_with_scaling_round_trips_through_config():
    custom = lp.Policy("mine", spec=spec("delayed", history_length=16, margin=1,
                                         power_of_two=True))
    again = lp.Policy.from_config(json.loads(json.dumps(custom.get_config())))
    assert again == custom and again.spec.scaling("errors").history_length == 16
    assert lp.Policy("fp8_delayed").spec.scaling("activations") == lp.Scaling("delayed")
    assert lp.Policy("fp8_current").spec.scaling("errors").mode == "current"
    assert lp.Policy("fp8").spec.scaling("activations") is None
    stochastic = lp.Policy("fp8_delayed", rounding="stochastic").spec
    assert stochastic.errors[1:] == ("stochastic", lp.Scaling("delayed"))
    # Scaled errors need no loss scaling: compile keeps the optimizer.
    model = keras.Sequential([keras.Input((2,)),
                              keras.layers.Dense(1, dtype=lp.Policy("fp8_delayed"))])
    model.compile("sgd", "mse")
    assert type(model.optimizer) is keras.optimizers.SGD


def _bench_models():
    sys.path.insert(0, os.path.join(HERE, os.pardir, "benchmarks"))
    try:
        import bench_policies  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    return bench_policies.MODELS


@pytest.mark.parametrize("preset", ["fp8_current", "fp8_delayed"])
@pytest.mark.parametrize("name", ["MLP", "CNN", "LSTM"])
def test_presets_train_the_policy_benchmark_models(preset, name):
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(lp.Policy(preset))
    try:
        model, shape, _ = _bench_models()[name]()
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.random((4,) + shape).astype(np.float32)
    losses = [model.train_on_batch(x, np.arange(4)) for _ in range(2)]
    assert np.all(np.isfinite(losses)), losses


def test_where_delayed_scaling_does_not_apply():
    # In a recurrent layer's tf.while_loop, delayed activations and errors are scaled like
    # current ones (per timestep); the weights, rounded before the loop, keep delayed scaling.
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 4, 5)) * 1e4, tf.float32)

    def run(policy):
        keras.utils.set_random_seed(0)
        layer = keras.layers.SimpleRNN(3, dtype=policy, name="rnn")
        layer.build(x.shape)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                y = layer(x)
            return y, tape.gradient(y, layer.trainable_weights)

        return layer, *step()

    layer, y, gradients = run(lp.Policy("fp8_delayed"))
    assert set(scaling.state_of(layer.cell)) == {"activations", "weights", "errors"}
    # The state's variables still get new values (here unchanged ones) from the step.
    assert all(g is not None for g in gradients)
    current_spec = lp.PrecisionSpec(
        activations=("e4m3", "nearest_even", lp.Scaling("current")),
        weights=("e4m3", "nearest_even", lp.Scaling("delayed")),
        errors=("e5m2", "nearest_even", lp.Scaling("current")))
    _, expected, expected_gradients = run(lp.Policy("mixed", spec=current_spec))
    np.testing.assert_array_equal(y.numpy(), expected.numpy())
    for got, want in zip(gradients[:3], expected_gradients[:3]):  # kernel, recurrent, bias
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    # A policy given after build: no state, a clear error.
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    dense.dtype_policy = lp.Policy("fp8_delayed")
    with pytest.raises(ValueError, match="its policy was given after the layer was built"):
        dense(np.ones((1, 3), np.float32))
    # No kernel of its own (the attention core): current scaling, its projections delayed.
    attention = keras.layers.MultiHeadAttention(1, 2, dtype=lp.Policy("fp8_delayed"))
    x = np.full((1, 2, 3), 1000.0, np.float32)
    y = attention(x, x)
    assert not scaling.state_of(attention) and scaling.state_of(attention._query_dense)
    assert np.all(np.isfinite(np.asarray(y)))


def test_monitor_reports_amax_and_scale_and_weight_rounding_leaves_state_alone():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        3, name="d", dtype=lp.Policy("mixed", spec=lp.PrecisionSpec(
            activations=("e4m3", "nearest_even", lp.Scaling("current")),
            weights=("e4m3", "nearest_even", lp.Scaling("delayed")))))], name="net")
    # FP16 master weights: the optimizer rounds the weights, not the scale state.
    model.compile(lp.LowPrecisionWeights(keras.optimizers.SGD(0.01), "fp16"), "mse")
    monitor = lp.callbacks.PrecisionMonitor(every_n_steps=1)
    model.fit(np.full((8, 4), 100.0, np.float32), np.zeros((8, 3), np.float32), verbose=0,
              callbacks=[monitor], batch_size=8)
    stats = monitor.latest
    assert stats["precision/net/d/activations/amax"] == 100.0
    assert stats["precision/net/d/activations/scale"] == np.float32(448.0) / np.float32(100.0)
    scale, history = scaling.state_of(model.layers[0])["weights"]
    assert stats["precision/net/d/weights/amax"] == history.numpy()[0] > 0
    assert stats["precision/net/d/weights/scale"] == scale.numpy() == ref_scale(
        history.numpy()[0], E4M3_MAX)
    # The scale is not an FP16 value (448 / amax): LowPrecisionWeights did not round it.
    assert np.float16(scale.numpy()) != scale.numpy()


def test_delayed_scaling_with_steps_per_execution():
    # Keras runs the steps in a tf.while_loop of its own: each step updates the state.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(3, dtype=lp.Policy("fp8_delayed"))])
    model.compile(keras.optimizers.SGD(0.0), "mse", steps_per_execution=2)
    x = np.concatenate([np.full((4, 4), 5.0), np.full((4, 4), 7.0)]).astype(np.float32)
    model.fit(x, np.zeros((8, 3), np.float32), batch_size=4, verbose=0, shuffle=False)
    scale, history = scaling.state_of(model.layers[0])["activations"]
    np.testing.assert_array_equal(history.numpy()[:3], [7.0, 5.0, 0.0])
    assert scale.numpy() == np.float32(448.0) / np.float32(7.0)
