"""AdaptiveLossScaleOptimizer(scaling_rule="paper"): Zhao et al.'s rule, the chain, the config."""

import math

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.training import loss_scaling

F16 = ml_dtypes.finfo(np.float16)


def _erfinv(p):
    # Independent of TF: bisection on math.erf.
    lo, hi = 0.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def _reference_scale(e, w, fan_in, carried, u_min=2.0**-24, u_max=65504.0, rate=1e-3):
    """Zhao et al.'s approx-range scale, written out in NumPy (float64)."""
    e, w = np.asarray(e, np.float64), np.asarray(w, np.float64)
    sigma = math.sqrt(np.mean(e**2) * np.mean(w**2))
    if sigma == 0:
        return 1.0
    alpha = max(u_min / (sigma * math.sqrt(2) * _erfinv(rate)), 1.0)
    o_max = np.max(np.abs(e)) * np.max(np.abs(w))
    alpha = min(alpha, u_max / (fan_in * o_max), 1024.0 / carried, 16.0)
    return 2.0 ** math.floor(math.log2(alpha))


@pytest.mark.parametrize(
    "error_ms, error_max, weight_ms, weight_max, fan_in, carried, expected",
    [
        (1e-14, 1e-6, 1e-2, 0.5, 256, 1.0, 16.0),      # underflow-driven, the layer cap
        (1e-8, 1e-3, 1e-2, 0.5, 256, 1.0, 4.0),        # the rule itself: floor2(4.76)
        (1e-14, 1e-6, 1e-2, 0.5, 256, 256.0, 4.0),     # the accumulated cap: 1024 / 256
        (1e-14, 1e-6, 1e-2, 0.5, 256, 1024.0, 1.0),    # the accumulated cap reached
        (1.0, 100.0, 1.0, 4.0, 256, 1.0, 0.5),         # overflow: 65504 / (256 * 400) = 0.64
        (1e-2, 0.5, 1e-2, 0.5, 16, 1.0, 1.0),          # no underflow risk: 1
        (0.0, 0.0, 1e-2, 0.5, 16, 1.0, 1.0),           # all-zero error: identity
    ],
)
def test_paper_layer_scale_cases(error_ms, error_max, weight_ms, weight_max, fan_in, carried,
                                 expected):
    got = float(loss_scaling.paper_layer_scale(error_ms, error_max, weight_ms, weight_max,
                                               fan_in, carried, lp.FP16))
    assert got == expected


def test_paper_layer_scale_matches_the_written_out_rule_on_random_tensors():
    rng = np.random.default_rng(0)
    for trial in range(20):
        e = rng.normal(0, 10.0 ** rng.uniform(-9, -1), size=(32, 16)).astype(np.float32)
        w = rng.normal(0, 10.0 ** rng.uniform(-3, 0), size=(8, 16)).astype(np.float32)
        fan_in, carried = 16.0, 2.0 ** int(rng.integers(0, 11))
        got = float(loss_scaling.paper_layer_scale(
            np.mean(e.astype(np.float64)**2), np.abs(e).max(), np.mean(w.astype(np.float64)**2),
            np.abs(w).max(), fan_in, carried, lp.FP16))
        assert got == _reference_scale(e, w, fan_in, carried), trial


def test_paper_layer_scale_uses_the_format_range_and_skips_dfp():
    # E5M2's u_min is 2^-16: the same statistics call for a larger scale than FP16.
    args = (1e-16, 1e-7, 1e-2, 0.5, 16, 1.0)
    assert float(loss_scaling.paper_layer_scale(*args, lp.E5M2)) == 16.0
    assert float(loss_scaling.paper_layer_scale(1e-6, 1e-2, 1e-2, 0.5, 16, 1.0, lp.FP16)) == 1.0
    assert float(loss_scaling.paper_layer_scale(1e-6, 1e-2, 1e-2, 0.5, 16, 1.0, lp.E5M2)) == 16.0
    assert float(loss_scaling.paper_layer_scale(*args, lp.DFP16)) == 1.0


def test_bad_scaling_rule_names_the_argument_and_the_values():
    with pytest.raises(ValueError, match=r"scaling_rule.*'local'.*'paper'.*'global'"):
        lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.1), scaling_rule="global")


def test_config_and_saved_model_keep_the_rule(tmp_path):
    opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.1), scaling_rule="paper")
    config = opt.get_config()
    assert config["scaling_rule"] == "paper"
    restored = lp.AdaptiveLossScaleOptimizer.from_config(config)
    assert restored.scaling_rule == "paper"
    assert lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.1)).scaling_rule == "local"
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, dtype=lp.Policy("fp16"))])
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.ones((8, 4), "float32"), np.zeros((8, 2), "float32"), verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer).__name__ == "AdaptiveLossScaleOptimizer"
    assert loaded.optimizer.scaling_rule == "paper"


def _chain_model(depth=3, width=8, stddev=0.05):
    keras.utils.set_random_seed(1)
    init = keras.initializers.RandomNormal(stddev=stddev)
    layers = [keras.Input((width,))]
    layers += [keras.layers.Dense(width, use_bias=False, kernel_initializer=init,
                                  dtype=lp.Policy("fp16")) for _ in range(depth)]
    return keras.Sequential(layers)


def _f16(x):
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def _reference_gradients(x, ws, target):
    """Weight gradients and accumulated scales of a linear chain under the paper's rule.

    Forward: FP16 operands, FP32 products; loss = mean((y - target)^2), loss scale 1.
    Backward, last layer first: stored = f16(dY * carried); alpha from stored x W;
    dW = f16(f16(x)^T f16(stored * alpha)) / (carried * alpha);
    dX = f16(stored * alpha) f16(W)^T / (carried * alpha); carried *= alpha.
    """
    inputs = [x]
    for w in ws:
        inputs.append(_f16(inputs[-1]) @ _f16(w))
    dy = (2.0 * (inputs[-1] - target) / target.size).astype(np.float32)
    carried, grads, scales = 1.0, [None] * len(ws), [None] * len(ws)
    for i in reversed(range(len(ws))):
        stored = _f16(dy * np.float32(carried))
        w16 = _f16(ws[i])
        alpha = _reference_scale(stored, w16, ws[i].shape[1], carried)
        e = _f16(stored * np.float32(alpha))
        total = np.float32(carried * alpha)
        grads[i] = _f16(_f16(inputs[i]).T @ e) / total
        dy = (e @ w16.T) / total
        carried *= alpha
        scales[i] = carried
    return grads, scales


@pytest.mark.parametrize("eager", [True, False])
def test_chain_matches_the_written_out_reference(eager):
    model = _chain_model()
    opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.0), initial_scale=1.0,
                                        scaling_rule="paper")
    model.compile(optimizer=opt, loss="mse", run_eagerly=eager)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    target = (rng.normal(size=(16, 8)) * 1e-4).astype(np.float32)
    ws = [v.numpy() for v in model.trainable_variables]
    expected_grads, expected_scales = _reference_gradients(x, ws, target)

    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - target))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return grads

    grads = step() if eager else tf.function(step)()
    for got, want in zip(grads, expected_grads):
        np.testing.assert_array_equal(got.numpy(), want)
    scales = [float(opt.layer_scales[v.path.rsplit("/", 1)[0]].numpy())
              for v in model.trainable_variables]
    assert scales == expected_scales
    # The scales accumulate down the network (towards the input), within the caps.
    assert scales[0] >= scales[1] >= scales[2] > 1.0
    assert all(a / b <= 16 for a, b in zip(scales, scales[1:])) and scales[0] <= 1024


def test_branches_take_the_smaller_accumulated_scale_and_shared_layers_restart():
    keras.utils.set_random_seed(3)
    policy = lp.Policy("fp16")
    init = keras.initializers.RandomNormal(stddev=0.05)
    inputs = keras.Input((8,))
    trunk = keras.layers.Dense(8, use_bias=False, dtype=policy, name="trunk")(inputs)
    deep = trunk
    for i in range(3):
        deep = keras.layers.Dense(8, use_bias=False, kernel_initializer=init, dtype=policy,
                                  name=f"deep{i}")(deep)
    shallow = keras.layers.Dense(8, use_bias=False, dtype=policy, name="shallow")(trunk)
    model = keras.Model(inputs, keras.layers.Add()([deep, shallow]))
    opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.0), initial_scale=1.0,
                                        scaling_rule="paper")
    model.compile(optimizer=opt, loss="mse")
    x = np.random.default_rng(4).normal(size=(16, 8)).astype(np.float32)
    model.fit(x, np.full((16, 8), 1e-4, np.float32), epochs=1, batch_size=16, verbose=0)
    s = {name: float(opt.layer_scales[model.get_layer(name).kernel.path.rsplit("/", 1)[0]]
                     .numpy()) for name in ("trunk", "deep0", "deep1", "deep2", "shallow")}
    assert s["deep0"] > s["shallow"]  # the deep path accumulated more
    # trunk feeds both: its error is stored at the smaller of the two accumulated scales.
    assert s["trunk"] / s["shallow"] in (1, 2, 4, 8, 16)
    assert s["trunk"] <= 16 * min(s["deep0"], s["shallow"])


def test_paper_rule_rescues_errors_that_fp16_loses():
    # Small weights shrink the error by about 7x per layer: the first layers' errors fall
    # below FP16's smallest subnormal (6e-8) without scaling; the accumulated scales
    # keep them.
    model = _chain_model(depth=6, stddev=0.05)
    x = np.random.default_rng(5).normal(size=(16, 8)).astype(np.float32)

    def first_layer_gradient():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - 1.0))
        return tape.gradient(loss, model.trainable_variables)[0].numpy()

    with lp.loss_scaling.automatic_loss_scaling_mode(None):
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    unscaled = first_layer_gradient()
    model.compile(optimizer=lp.AdaptiveLossScaleOptimizer(
        keras.optimizers.SGD(0.0), initial_scale=1.0, scaling_rule="paper"), loss="mse")
    paper = first_layer_gradient()
    for layer in model.layers:
        layer.dtype_policy = lp.Policy("fp32")
    exact = first_layer_gradient()
    error = [np.abs(g - exact).max() / np.abs(exact).max() for g in (paper, unscaled)]
    assert error[0] < 0.004 and error[1] > 0.01, error  # measured: 0.0011, 0.021


def test_convolutions_chain_and_recurrent_and_attention_layers_restart():
    keras.utils.set_random_seed(6)
    policy = lp.Policy("fp16")
    init = keras.initializers.RandomNormal(stddev=0.01)
    conv = keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(4, 3, kernel_initializer=init, dtype=policy, name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(8, kernel_initializer=init, dtype=policy, name="hidden"),
        keras.layers.Dense(2, kernel_initializer=init, dtype=policy, name="out"),
    ])
    opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.0), initial_scale=1.0,
                                        scaling_rule="paper")
    conv.compile(optimizer=opt, loss="mse")
    rng = np.random.default_rng(7)
    conv.fit(rng.normal(size=(4, 6, 6, 2)).astype(np.float32),
             np.full((4, 2), 1e-4, np.float32), verbose=0)
    s = [float(opt.layer_scales[conv.get_layer(n).kernel.path.rsplit("/", 1)[0]].numpy())
         for n in ("conv", "hidden", "out")]
    assert s[0] >= s[1] >= s[2] and s[0] > s[2], s  # the chain runs through Flatten

    inputs = keras.Input((5, 4))
    h = keras.layers.LSTM(4, dtype=policy, name="lstm", return_sequences=True)(inputs)
    h = keras.layers.MultiHeadAttention(1, 4, dtype=policy, name="mha")(h, h)
    outputs = keras.layers.Dense(2, dtype=policy, name="head")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.01), scaling_rule="paper")
    model.compile(optimizer=opt, loss="mse")
    before = [v.numpy().copy() for v in model.trainable_variables]
    history = model.fit(rng.normal(size=(4, 5, 4)).astype(np.float32),
                        np.ones((4, 2), np.float32), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for old, new in zip(before, model.trainable_variables):
        assert np.all(np.isfinite(new.numpy())) and not np.array_equal(old, new.numpy())
