"""PrecisionMonitor and PolicySchedule."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.training.callbacks import PolicySchedule, PrecisionMonitor

SPEC = lp.PrecisionSpec(activations="e4m3", weights="e4m3", errors="e5m2",
                        weight_gradients="e5m2")


def _hand_built_model():
    # Activations (E4M3: subnormals below 2^-6, max 448): one underflows
    # (1e-4 < 2^-10), one overflows (1000), one is subnormal (2^-8), one normal.
    x = np.array([[1e-4, 1000.0, 2.0**-8, 1.0]], np.float32)
    layer = keras.layers.Dense(4, use_bias=False, dtype=lp.Policy("custom", spec=SPEC),
                               name="hand")
    model = keras.Sequential([keras.Input((4,)), layer])
    layer.kernel.assign(np.diag([1.0, 2.0**-12, 500.0, 2.0]).astype(np.float32))
    # Errors (E5M2: subnormals below 2^-14, smallest 2^-16, max 57344):
    # dY = target weights of the loss sum(y * u).
    u = np.array([[1e-9, 1e5, 2.0**-15, 1.0]], np.float32)
    with lp.loss_scaling.automatic_loss_scaling_mode(None):  # the errors exactly as built
        model.compile(optimizer=keras.optimizers.SGD(0.0),
                      loss=lambda y_true, y_pred: tf.reduce_sum(y_pred * u))
    return model, x


def test_monitor_values_are_exact_on_a_hand_built_layer(tmp_path):
    model, x = _hand_built_model()
    monitor = PrecisionMonitor(every_n_steps=1, log_dir=str(tmp_path))
    history = model.fit(x, np.zeros((1, 4), np.float32), epochs=1, verbose=0,
                        callbacks=[monitor])
    h = {k: v[-1] for k, v in history.history.items()}
    key = "precision/" + model.layers[0].path + "/{}/{}"
    # Activations: 1 of 4 underflows, 1 overflows, 1 subnormal.
    assert h[key.format("activations", "underflow")] == 0.25
    assert h[key.format("activations", "overflow")] == 0.25
    assert h[key.format("activations", "subnormal")] == 0.25
    # Weights: the non-zero diagonal 1, 2^-12 (underflow: below 2^-10), 500
    # (overflow), 2: one of four each.
    assert h[key.format("weights", "underflow")] == 0.25
    assert h[key.format("weights", "overflow")] == 0.25
    assert h[key.format("weights", "subnormal")] == 0.0
    # Errors dY = u: 1e-9 underflows, 1e5 overflows, 2^-15 is subnormal.
    assert h[key.format("errors", "underflow")] == 0.25
    assert h[key.format("errors", "overflow")] == 0.25
    assert h[key.format("errors", "subnormal")] == 0.25
    # Weight gradients dW = x^T dY', with dY' = E5M2(dY) = [0, inf, 2^-15, 1]:
    # compare with precision_stats of the reference gradient.
    dy = lp.round_to_format(tf.constant([[1e-9, 1e5, 2.0**-15, 1.0]]), lp.E5M2)
    xq = lp.round_to_format(tf.constant(x), lp.E4M3)
    expected = lp.precision_stats(tf.matmul(xq, dy, transpose_a=True), lp.E5M2)
    for stat in ("underflow", "overflow", "subnormal"):
        assert h[key.format("weight_gradients", stat)] == pytest.approx(float(expected[stat]))
    # TensorBoard scalars were written.
    events = glob.glob(str(tmp_path / "precision" / "events.out.tfevents.*"))
    assert events
    tags = set()
    for record in tf.compat.v1.train.summary_iterator(events[0]):
        for value in record.summary.value:
            tags.add(value.tag)
    assert key.format("activations", "underflow") in tags


def test_monitor_samples_every_n_steps_and_reports_loss_scales():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, dtype=lp.Policy("fp16"))])
    model.compile(optimizer=lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.01)),
                  loss="mse")
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    monitor = PrecisionMonitor(every_n_steps=3)
    sampled = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            sampled.append(any(k.startswith("precision/") for k in logs))

    history = model.fit(x, x[:, :2], batch_size=4, epochs=1, verbose=0, callbacks=[monitor, Spy()])
    assert sampled == [step % 3 == 0 for step in range(10)]
    assert history.history["loss_scale"][-1] == 2.0**15
    assert f"loss_scale/{model.layers[0].path}" in history.history
    # FP16 has no weight-gradient role in "fp8" but does in "fp16": keys follow the spec.
    assert any(k.endswith("weight_gradients/underflow") for k in history.history)


def test_monitor_works_with_csv_logger_and_removes_its_hook(tmp_path):
    model, x = _hand_built_model()
    csv = tmp_path / "log.csv"
    model.fit(x, np.zeros((1, 4)), epochs=2, verbose=0,
              callbacks=[PrecisionMonitor(every_n_steps=1), keras.callbacks.CSVLogger(str(csv))])
    header = csv.read_text().splitlines()[0]
    assert "activations/underflow" in header
    from tf_lowprec.keras import emulation

    assert all(not isinstance(getattr(h, "__self__", None), PrecisionMonitor)
               for h in emulation._role_hooks)


def test_policy_schedule_switches_at_epoch_boundaries():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    y = rng.normal(size=(32, 2)).astype(np.float32)

    def run(callbacks, policy):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, dtype=policy)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
        first = [w.numpy() for w in model.weights]
        for cb in callbacks:
            cb.set_model(model)
        return model, first

    # Schedule fp32 for epoch 0, e4m3 ("fp8") from epoch 1: epoch 0 equals plain
    # fp32 training, and the layer ends with the fp8 policy.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, dtype=lp.Policy("fp32"))])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    schedule = PolicySchedule({0: "fp32", 1: "fp8"})
    weights_after = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights_after.append([w.numpy().copy() for w in self.model.weights])

    model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False,
              callbacks=[schedule, Record()])
    assert model.layers[0].dtype_policy.name == "fp8"
    _, fp32_first = run([], lp.Policy("fp32"))
    for a, b in zip(weights_after[0], fp32_first):
        np.testing.assert_array_equal(a, b)
    # Epoch 1 ran emulated: its step equals an fp8 step from the epoch-0 weights.
    keras.utils.set_random_seed(0)
    ref = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, dtype=lp.Policy("fp8"))])
    ref.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    ref.build((None, 6))
    for w, v in zip(ref.weights, weights_after[0]):
        w.assign(v)
    ref.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(weights_after[1], ref.weights):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PrecisionMonitor(every_n_steps=0), "every_n_steps"),
        (lambda: PrecisionMonitor(roles=("bogus",)), "roles"),
        (lambda: PolicySchedule(3), "schedule must be"),
        (lambda: PolicySchedule({-1: "bf16"}), "epochs"),
        (lambda: PolicySchedule({0: "nonsense"}), "cannot use"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_monitor_watches_recurrent_layers(kind):
    """Statistics of errors computed inside a recurrent loop's gradient reach the monitor."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5, 3)),
                              getattr(keras.layers, kind)(4, dtype=lp.Policy("bf16")),
                              keras.layers.Dense(2, dtype=lp.Policy("bf16"))])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    monitor = PrecisionMonitor(every_n_steps=1)
    x = np.random.default_rng(0).normal(size=(8, 5, 3)).astype(np.float32)
    history = model.fit(x, np.zeros((8, 2), np.float32), epochs=1, verbose=0,
                        callbacks=[monitor])
    assert np.all(np.isfinite(history.history["loss"]))
    cell = [key for key in monitor.latest if f"/{kind.lower()}_cell/errors/underflow" in key]
    assert cell, sorted(monitor.latest)
    for key in cell:
        assert 0.0 <= monitor.latest[key] <= 1.0


def _covered_layers_model():
    """SimpleRNN, Bidirectional(GRU), MultiHeadAttention and ConvLSTM2D under bf16, side by side."""
    keras.backend.clear_session()  # the layer names below, whatever ran before
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(lp.Policy("bf16"))
    try:
        sequence, video = keras.Input((2, 4)), keras.Input((2, 3, 3, 2))
        branches = [keras.layers.SimpleRNN(2)(sequence),
                    keras.layers.Bidirectional(keras.layers.GRU(2))(sequence),
                    keras.layers.Flatten()(keras.layers.MultiHeadAttention(2, 2)(sequence,
                                                                                  sequence)),
                    keras.layers.Flatten()(keras.layers.ConvLSTM2D(2, 2)(video))]
        outputs = keras.layers.Dense(1)(keras.layers.Concatenate()(branches))
        model = keras.Model([sequence, video], outputs, name="net")
    finally:
        keras.config.set_dtype_policy("float32")
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(4, 2, 4)).astype(np.float32),
         rng.normal(size=(4, 2, 3, 3, 2)).astype(np.float32)]
    return model, x


# Layers whose GEMM errors must be reported (parts of the log keys).
_WATCHED = ("/simple_rnn_cell/errors/", "/forward_gru/gru_cell/errors/",
            "/backward_gru/gru_cell/errors/", "/conv_lstm_cell/errors/",
            "/multi_head_attention/query/errors/", "/multi_head_attention/errors/")


def _check_statistics(values):
    for part in _WATCHED:
        assert any(part in key for key in values), (part, sorted(values))
    statistics = [v for k, v in values.items() if k.startswith("precision/")]
    assert statistics and all(0.0 <= v <= 1.0 for v in statistics)


def test_monitor_covers_rnns_bidirectional_convlstm_and_attention_in_fit():
    """Default roles; the gradient statistics of every covered layer reach the logs."""
    model, x = _covered_layers_model()
    model.compile(keras.optimizers.SGD(0.01), "mse")
    monitor = PrecisionMonitor(every_n_steps=1)
    history = model.fit(x, np.zeros((4, 1), np.float32), verbose=0, callbacks=[monitor])
    assert np.isfinite(history.history["loss"][0])
    _check_statistics(monitor.latest)
    assert history.history["unemulated_gemms"] == [0.0]



def test_monitor_in_a_custom_training_loop():
    """`watch` + `read`: a step traced inside the block records statistics at each call."""
    keras.backend.clear_session()  # the layer names below, whatever ran before
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(lp.Policy("fp8"))
    try:
        model = keras.Sequential([keras.Input((2, 4)),
                                  keras.layers.Bidirectional(keras.layers.GRU(2)),
                                  keras.layers.Dense(1)], name="net")
    finally:
        keras.config.set_dtype_policy("float32")
    optimizer = keras.optimizers.SGD(0.01)
    monitor = PrecisionMonitor()
    x = np.random.default_rng(0).normal(size=(4, 2, 4)).astype(np.float32)
    with monitor.watch(model):
        @tf.function
        def train_step(inputs, scale):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(model(inputs * scale, training=True) ** 2)
            grads = tape.gradient(loss, model.trainable_weights)
            optimizer.apply(grads, model.trainable_weights)
            return loss

        train_step(x, tf.constant(1.0))
        values = monitor.read()
        train_step(x, tf.constant(1e-4))  # below E4M3's range; the same graph records again
        tiny = monitor.read()
    assert train_step.experimental_get_tracing_count() == 1
    for direction in ("forward_gru", "backward_gru"):
        for role in ("activations", "weights", "errors"):
            key = f"precision/net/bidirectional/{direction}/gru_cell/{role}/underflow"
            assert 0.0 <= values[key] <= 1.0 and 0.0 <= tiny[key] <= 1.0
    # The Dense layer's input (the GRUs' outputs, ~1e-4) now underflows in E4M3.
    key = "precision/net/dense/activations/underflow"
    assert values[key] < tiny[key], (values[key], tiny[key])
    assert monitor._remove_hook is None  # the hook left with the block
