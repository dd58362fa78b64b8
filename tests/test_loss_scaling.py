"""AdaptiveLossScaleOptimizer: the scale rule, skipping, state."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.keras import emulation
from tf_lowprec.keras import policy as policy_lib
from tf_lowprec.training import loss_scaling


def _erfinv(p):
    # Independent of TF: bisection on math.erf.
    lo, hi = 0.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid) < p else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("sigma", [1e-9, 3e-8, 1e-7, 1e-6, 1e-3])
def test_underflow_scale_is_zhaos_formula(sigma):
    u_min = 2.0**-24
    expected = u_min / (sigma * math.sqrt(2) * _erfinv(1e-3))
    assert float(loss_scaling.underflow_scale(sigma, u_min)) == pytest.approx(expected, rel=1e-6)  # TF erfinv: ~1e-8


def test_underflow_scale_meets_the_target_rate():
    # P(|alpha x| < u_min) = T_uf for x ~ N(0, sigma^2) (checked by sampling).
    sigma, u_min, rate = 1e-7, 2.0**-24, 1e-3
    alpha = float(loss_scaling.underflow_scale(sigma, u_min, rate))
    x = np.random.default_rng(0).normal(0.0, sigma, size=2_000_000)
    measured = np.mean(np.abs(alpha * x) < u_min)
    assert measured == pytest.approx(rate, rel=0.1)


@pytest.mark.parametrize(
    "sigma, max_abs, expected",
    [
        (1e-7, 1e-6, 256.0),        # floor_pow2(475.6): underflow-driven
        (1.0, 4.0, 1.0),            # no underflow risk: never below 1 for that reason
        (1e-7, 1000.0, 64.0),       # overflow bound 65504/1000 = 65.5 -> 64
        (10.0, 1e5, 0.5),           # overflow forces a scale below 1
        (0.0, 0.0, 1.0),            # all-zero errors: identity
    ],
)
def test_layer_scale_bounds_and_power_of_two(sigma, max_abs, expected):
    assert float(loss_scaling.layer_scale(sigma, max_abs, lp.FP16)) == expected


def test_layer_scale_clips_and_respects_upper_bound():
    assert float(loss_scaling.layer_scale(1e-12, 1e-11, lp.FP16, max_scale=2.0**10)) == 2.0**10
    assert float(loss_scaling.layer_scale(1e-12, 1e-11, lp.FP16, upper_bound=8.0)) == 8.0
    assert float(loss_scaling.layer_scale(10.0, 1e9, lp.FP16, min_scale=2.0**-3)) == 2.0**-3
    assert float(loss_scaling.layer_scale(1e-9, 1e-9, lp.DFP16)) == 1.0


def test_layer_scale_uses_the_format_range():
    # E5M2: u_min = 2^-16, so the same statistics call for a larger scale than FP16.
    fp16 = float(loss_scaling.layer_scale(1e-6, 1e-5, lp.FP16))
    e5m2 = float(loss_scaling.layer_scale(1e-6, 1e-5, lp.E5M2))
    assert e5m2 == 2.0**8 * fp16 or e5m2 > fp16


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    return model


def test_nonfinite_gradients_skip_the_step_and_halve_the_global_scale():
    model = _model()
    opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=1024.0)
    opt.build(model.trainable_variables)
    before = [v.numpy().copy() for v in model.trainable_variables]
    grads = [tf.ones_like(v) for v in model.trainable_variables]
    grads[1] = tf.fill(grads[1].shape, np.nan)
    opt.apply(grads, model.trainable_variables)
    for b, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())
    assert float(opt.dynamic_scale) == 512.0
    grads[1] = tf.fill(grads[1].shape, np.inf)
    opt.apply(grads, model.trainable_variables)
    assert float(opt.dynamic_scale) == 256.0
    # A finite step applies the unscaled gradient.
    opt.apply([tf.ones_like(v) * 256.0 for v in model.trainable_variables],
              model.trainable_variables)
    np.testing.assert_allclose(model.trainable_variables[0].numpy(), before[0] - 0.1)


def test_layer_scale_variables_are_created_and_checkpointed(tmp_path):
    lp.Policy("bf16")  # installs the Keras hooks: loading must still compile the model
    model = _model()
    opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.Adam(1e-3), initial_scale=64.0)
    model.compile(optimizer=opt, loss="mse")
    x, y = np.ones((8, 4), np.float32), np.zeros((8, 1), np.float32)
    model.fit(x, y, epochs=1, verbose=0)
    assert sorted(opt.layer_scales) == sorted(layer.path for layer in model.layers)
    opt.layer_scales[model.layers[0].path].assign(32.0)
    opt.dynamic_scale.assign(16.0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    lopt = loaded.optimizer
    assert isinstance(lopt, lp.AdaptiveLossScaleOptimizer)
    assert float(lopt.dynamic_scale) == 16.0
    # Paths differ between the two models (the loaded one has no model prefix);
    # each optimizer keys its scales by its own model's layer paths.
    assert float(lopt.layer_scales[loaded.layers[0].path]) == 32.0
    assert lopt.get_config() == opt.get_config()
    # tf.train.Checkpoint round trip too.
    ckpt = tf.train.Checkpoint(optimizer=opt)
    saved = ckpt.save(str(tmp_path / "ckpt"))
    opt.dynamic_scale.assign(1.0)
    opt.layer_scales[model.layers[0].path].assign(1.0)
    ckpt.restore(saved)
    assert float(opt.dynamic_scale) == 16.0
    assert float(opt.layer_scales[model.layers[0].path]) == 32.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"underflow_rate": 0.0}, "underflow_rate"),
        ({"min_scale": 0.0}, "min_scale"),
        ({"min_scale": 4.0, "max_scale": 2.0}, "min_scale"),
        ({"adaptive": "yes"}, "adaptive"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(), **kwargs)


def test_layer_scale_is_applied_to_errors_and_undone_on_gradients():
    """dW = X^T Q(alpha dY) / alpha, dX likewise, with alpha from dY's statistics."""
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(16, 8)).astype(np.float32))
    u = tf.constant(rng.normal(size=(16, 4)).astype(np.float32))
    layer = keras.layers.Dense(4, use_bias=False, dtype=lp.Policy("fp16"))
    # The layer scales its errors because the model is compiled with the optimizer.
    model = keras.Sequential([keras.Input((8,)), layer])
    opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=2.0**15)
    model.compile(opt, "mse")
    opt.build(model.trainable_variables)
    tiny = 1e-7  # errors ~1e-7: a quarter of them underflow FP16 unscaled
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(model(x) * u) * tiny
        scaled = opt.scale_loss(loss)
    dx, dw = tape.gradient(scaled, [x, layer.kernel])
    wq = lp.round_to_format(layer.kernel, lp.FP16)
    opt.apply([dw], [layer.kernel])  # records the layer's scale
    # The reference, written out: the true error is tiny * u, its RMS picks alpha.
    sigma = float(np.sqrt(np.mean(np.square(tiny * u.numpy()))))
    absolute = float(loss_scaling.layer_scale(sigma, float(np.max(np.abs(tiny * u.numpy()))),
                                              lp.FP16))
    assert absolute >= 16.0  # the rule scaled this layer's error up
    assert float(opt.layer_scales[layer.path]) == absolute
    dy = tf.constant(tiny * u.numpy() * 2.0**15)  # what arrives: global scale 2^15
    alpha = absolute / 2.0**15
    q = lp.round_to_format(dy * alpha, lp.FP16)
    xq = lp.round_to_format(x, lp.FP16)
    dw_ref = lp.round_to_format(tf.matmul(xq, q, transpose_a=True), lp.FP16) / alpha
    dx_ref = tf.matmul(q, wq, transpose_b=True) / alpha
    np.testing.assert_array_equal(dw.numpy(), dw_ref.numpy())
    np.testing.assert_array_equal(dx.numpy(), dx_ref.numpy())
    # Without loss scaling the same errors lose values to FP16 underflow.
    plain = lp.round_to_format(tf.constant(tiny * u.numpy()), lp.FP16).numpy()
    assert np.count_nonzero(plain == 0) > 5
    assert np.count_nonzero(q.numpy() == 0) == 0


def test_without_an_adaptive_optimizer_gradients_are_unchanged():
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(4, 3)).astype(np.float32))
    layer = keras.layers.Dense(2, dtype=lp.Policy("fp16"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x)) * 1e-6
    grads = tape.gradient(loss, layer.trainable_variables)
    # Reference: plain rounded errors, no scaling.
    dy = lp.round_to_format(tf.fill([4, 2], 1e-6), lp.FP16)
    xq = lp.round_to_format(x, lp.FP16)
    np.testing.assert_array_equal(
        grads[0].numpy(), lp.round_to_format(tf.matmul(xq, dy, transpose_a=True), lp.FP16).numpy()
    )


# Presets whose errors have at most FP16's range (FP16, E5M2, HFP8's 1-5-2).
_NEEDS_LOSS_SCALING = {"fp32": False, "bf16": False, "bf16_native": False, "dfp16": False,
                       "fp16": True, "fp8": True, "hfp8": True}


def test_compile_adds_loss_scaling_where_the_policy_needs_it():
    # As Keras does for "mixed_float16": fp16 / fp8 / hfp8 errors have at most
    # FP16's range, so compile wraps the optimizer; bf16 and dfp16 do not need it.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in policy_lib.PRESETS:
            model = keras.Sequential([keras.Input((3,)),
                                      keras.layers.Dense(2, dtype=lp.Policy(name))])
            model.compile(optimizer="adam", loss="mse")
            needs = loss_scaling.needs_loss_scaling(lp.Policy(name))
            assert needs == _NEEDS_LOSS_SCALING.get(name, needs), name
            if needs:
                assert type(model.optimizer) is lp.AdaptiveLossScaleOptimizer, name
                assert isinstance(model.optimizer.inner_optimizer, keras.optimizers.Adam)
            else:
                assert type(model.optimizer) is keras.optimizers.Adam, name
    # An optimizer that already scales, or a fixed loss_scale_factor, is kept.
    for optimizer in (keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()),
                      keras.optimizers.SGD(loss_scale_factor=8.0)):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype=lp.Policy("fp8"))])
        model.compile(optimizer=optimizer, loss="mse")
        assert model.optimizer is optimizer


def test_automatic_loss_scaling_modes():
    def compiled_with(mode):
        model = keras.Sequential([keras.Input((3,)),
                                  keras.layers.Dense(2, dtype=lp.Policy("fp16"))])
        with loss_scaling.automatic_loss_scaling_mode(mode):
            model.compile(optimizer={"class_name": "SGD", "config": {"learning_rate": 0.5}},
                          loss="mse")
        return model.optimizer

    assert type(compiled_with("dynamic")) is keras.optimizers.LossScaleOptimizer
    assert type(compiled_with(None)) is keras.optimizers.SGD
    assert lp.automatic_loss_scaling() == "adaptive"  # restored after the block
    with pytest.raises(ValueError, match="'adaptive', 'dynamic' or None"):
        lp.set_automatic_loss_scaling("global")


def test_adaptive_optimizer_accepts_what_keras_optimizers_get_accepts():
    for identifier in ("adam", {"class_name": "SGD", "config": {"learning_rate": 0.25}},
                       keras.optimizers.RMSprop()):
        optimizer = lp.AdaptiveLossScaleOptimizer(identifier)
        assert optimizer.inner_optimizer is not None
    assert isinstance(lp.AdaptiveLossScaleOptimizer("adam").inner_optimizer,
                      keras.optimizers.Adam)
    assert float(lp.AdaptiveLossScaleOptimizer(
        {"class_name": "SGD", "config": {"learning_rate": 0.25}}).inner_optimizer.learning_rate
    ) == 0.25
    with pytest.raises(ValueError):
        lp.AdaptiveLossScaleOptimizer("no_such_optimizer")


def test_the_one_line_example_trains_under_every_preset():
    # README: set the global policy, build stock layers, compile with "adam".
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    previous = keras.config.dtype_policy()
    try:
        for name in policy_lib.PRESETS:
            keras.config.set_dtype_policy(lp.Policy(name))
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                              metrics=["accuracy"])
                history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
            assert np.isfinite(history.history["loss"][0]), name
            if loss_scaling.needs_loss_scaling(lp.Policy(name)):
                # It trained with loss scaling: the scaled step ran and kept its scale.
                assert isinstance(model.optimizer, lp.AdaptiveLossScaleOptimizer)
                assert float(model.optimizer.dynamic_scale) == 2.0**15
                assert int(model.optimizer.iterations) == 1
                assert model.optimizer.layer_scales
    finally:
        keras.config.set_dtype_policy(previous)


def _count_scaled_gemms(monkeypatch):
    calls = []
    scale_errors = emulation.ErrorScaling.scale_errors

    def counting(self, y):
        calls.append(self.context.layer.name)
        return scale_errors(self, y)

    monkeypatch.setattr(emulation.ErrorScaling, "scale_errors", counting)
    return calls


@pytest.mark.parametrize("optimizer", ["sgd", "global", "adaptive=False"])
def test_layer_scaling_is_only_built_for_models_compiled_with_it(monkeypatch, optimizer):
    calls = _count_scaled_gemms(monkeypatch)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, dtype=lp.Policy("fp16")),
                              keras.layers.Dense(1, dtype=lp.Policy("fp16"))])
    opt = {"sgd": lambda: keras.optimizers.SGD(0.1),
           "global": lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)),
           "adaptive=False": lambda: lp.AdaptiveLossScaleOptimizer(
               keras.optimizers.SGD(0.1), adaptive=False)}[optimizer]()
    with loss_scaling.automatic_loss_scaling_mode(None):  # "sgd" stays plain SGD
        model.compile(opt, "mse")
    model.fit(np.ones((8, 4), np.float32), np.zeros((8, 1), np.float32), verbose=0)
    assert calls == []
    model.compile(lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.1)), "mse")
    model.fit(np.ones((8, 4), np.float32), np.zeros((8, 1), np.float32), verbose=0)
    assert calls  # the same model, compiled with layer-wise scaling


_KINDS = ("simple_rnn", "gru", "lstm", "bidirectional")


def _every_recurrent_kind(policy, last):
    """Embedding, then SimpleRNN, GRU, LSTM and Bidirectional(LSTM) stacked under
    `policy`, in the order that puts `last` at the end: the others return
    sequences, `last` only its final state."""
    make = {
        "simple_rnn": lambda seq: keras.layers.SimpleRNN(6, return_sequences=seq,
                                                         name="simple_rnn"),
        "gru": lambda seq: keras.layers.GRU(6, return_sequences=seq, name="gru"),
        "lstm": lambda seq: keras.layers.LSTM(6, return_sequences=seq, name="lstm"),
        "bidirectional": lambda seq: keras.layers.Bidirectional(
            keras.layers.LSTM(6, return_sequences=seq), name="bidirectional"),
    }
    start = (_KINDS.index(last) + 1) % len(_KINDS)
    order = _KINDS[start:] + _KINDS[:start]
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(lp.Policy(policy))
    try:
        return keras.Sequential(
            [keras.Input((5,), dtype="int32"), keras.layers.Embedding(20, 4)]
            + [make[kind](kind != last) for kind in order] + [keras.layers.Dense(20)])
    finally:
        keras.config.set_dtype_policy("float32")


def _tiny_loss(y, p):
    # A tiny loss: errors of ~1e-9 need scales above 1 in FP16 / E5M2.
    return 1e-6 * keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
        y, p, from_logits=True))


@pytest.mark.parametrize("loop, policy, last", [
    ("fit", "fp16", "simple_rnn"), ("fit", "fp8", "gru"), ("fit", "hfp8", "lstm"),
    ("custom", "fp16", "bidirectional"), ("custom", "fp8", "simple_rnn"),
    ("custom", "hfp8", "gru"),
])
def test_every_recurrent_kind_trains_with_layer_wise_scaling(loop, policy, last):
    """SimpleRNN, GRU, LSTM and Bidirectional, each with and without
    return_sequences across the cases, under fp16, fp8 and hfp8, in `fit` and in
    a custom loop (GradientTape, `scale_loss`, `apply`).  The error scales of a
    recurrent layer's GEMMs are computed per timestep, inside the tf.while_loop
    of its backward pass, and leave it as values (issue #15:
    InaccessibleTensorError); every recurrent layer trains and gets a scale."""
    model = _every_recurrent_kind(policy, last)
    opt = lp.AdaptiveLossScaleOptimizer(keras.optimizers.Adam(1e-3))
    model.compile(opt, _tiny_loss)  # the emulation finds the optimizer as model.optimizer
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 20, (16, 5)), rng.integers(0, 20, (16,))
    before = {name: [w.copy() for w in model.get_layer(name).get_weights()] for name in _KINDS}
    if loop == "fit":
        losses = model.fit(x, y, epochs=1, batch_size=8, verbose=0).history["loss"]
    else:
        @tf.function
        def train_step(xb, yb):
            with tf.GradientTape() as tape:
                loss = _tiny_loss(yb, model(xb, training=True))
                scaled = opt.scale_loss(loss)
            opt.apply(tape.gradient(scaled, model.trainable_variables),
                      model.trainable_variables)
            return loss

        losses = [float(train_step(x[i:i + 8], y[i:i + 8])) for i in (0, 8)]
    assert np.all(np.isfinite(losses))
    # Under hfp8 the E5M2 weight gradients of a recurrent kernel fed near-zero
    # states can underflow in these first steps: there some weight must change.
    changed = any if policy == "hfp8" else all
    for name in _KINDS:
        after = model.get_layer(name).get_weights()
        assert changed(not np.array_equal(a, b) for a, b in zip(before[name], after)), name
        scales = [float(v) for path, v in opt.layer_scales.items() if name in path.split("/")]
        assert scales and max(scales) > 1.0, (name, dict(opt.layer_scales))
