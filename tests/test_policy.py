"""Policy API: presets, specs, errors, saving, per-layer use, XLA, reproducible SR."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.keras import emulation
from policy_reference import assert_bitwise_equal

ONE_PLUS = np.array([[1.0 + 2.0**-9]], "float32")  # rounds to 1.0 in bf16 and coarser


@pytest.fixture(autouse=True)
def _float32_global_policy():
    yield
    keras.config.set_dtype_policy("float32")


def _probe_dense(dtype):
    return keras.layers.Dense(1, use_bias=False, kernel_initializer="ones", dtype=dtype)


def test_presets_follow_the_papers():
    assert lp.Policy("fp32").spec.emulates is False
    bf16 = lp.Policy("bf16").spec
    assert (bf16.activations, bf16.weights, bf16.errors, bf16.weight_gradients) == (
        ("bf16", "nearest_even"),) * 3 + (None,)
    hfp8 = lp.Policy("hfp8").spec
    assert hfp8.activations[0] == "hfp8_forward" and hfp8.errors[0] == "hfp8_backward"
    assert hfp8.first_last == lp.Policy("fp16").spec
    fp8 = lp.Policy("fp8").spec
    assert (fp8.activations[0], fp8.errors[0]) == ("e4m3", "e5m2")
    assert lp.Policy("dfp16").spec.accumulator == "int32"
    native = lp.Policy("bf16_native").spec
    assert native.accumulator == "bf16_dot" and native.get_config() == dict(
        bf16.get_config(), accumulator="bf16_dot")
    policy = lp.Policy("fp8")
    assert isinstance(policy, keras.DTypePolicy)
    assert (policy.compute_dtype, policy.variable_dtype) == ("float32", "float32")


@pytest.mark.parametrize("bad, match", [
    ("bfloat8", "valid presets: fp32, bf16, fp16, hfp8, fp8, bf16_native, dfp16"),
    (None, "preset name"),
])
def test_invalid_policy_names_list_the_presets(bad, match):
    with pytest.raises(ValueError, match=match):
        lp.Policy(bad)


def test_invalid_specs_name_the_problem():
    with pytest.raises(ValueError, match="errors: unknown format 'e6m1'"):
        lp.PrecisionSpec(errors="e6m1")
    with pytest.raises(ValueError, match="activations rounding"):
        lp.PrecisionSpec(activations=("bf16", "up"))
    with pytest.raises(ValueError, match="accumulator must be one of 'fp32', 'int32', 'bf16_dot'"):
        lp.PrecisionSpec(accumulator="fp16")
    with pytest.raises(ValueError, match="needs DfpFormat"):
        lp.PrecisionSpec(activations="bf16", weights="bf16", accumulator="int32")
    with pytest.raises(ValueError, match="accumulator='bf16_dot' needs BF16 activations"):
        lp.PrecisionSpec(activations="bf16", weights="bf16", accumulator="bf16_dot")
    with pytest.raises(ValueError, match="accumulator='bf16_dot' needs BF16 activations"):
        lp.PrecisionSpec(activations="e4m3", weights="bf16", errors="bf16",
                         accumulator="bf16_dot")
    with pytest.raises(ValueError, match="unknown PrecisionSpec keys"):
        lp.PrecisionSpec.from_config({"activation": "bf16"})
    with pytest.raises(ValueError, match="implementation"):
        lp.Policy("bf16", implementation="gpu")


def test_stochastic_rounding_option_and_config_round_trip():
    policy = lp.Policy("fp8", rounding="stochastic")
    assert policy.spec.errors == ("e5m2", "stochastic") and policy.spec.stochastic
    for p in (policy, lp.Policy("bf16"), lp.Policy("lab", spec={"activations": "e5m2"})):
        restored = keras.dtype_policies.deserialize(keras.dtype_policies.serialize(p))
        assert restored == p and restored.spec == p.spec


def test_global_policy_and_layer_exemption():
    keras.config.set_dtype_policy(lp.Policy("bf16"))
    emulated, exempt = _probe_dense(None), _probe_dense("float32")
    assert float(emulated(ONE_PLUS)[0, 0]) == 1.0
    assert float(exempt(ONE_PLUS)[0, 0]) == float(ONE_PLUS[0, 0])


def test_per_layer_policy_inside_a_float32_model():
    inputs = keras.Input((1,))
    outputs = _probe_dense(lp.Policy("fp8"))(_probe_dense(None)(inputs))
    model = keras.Model(inputs, outputs)
    assert float(model.predict(ONE_PLUS, verbose=0)[0, 0]) == 1.0


def test_dtype_policy_map_applies_and_round_trips(tmp_path):
    policy_map = keras.dtype_policies.DTypePolicyMap(default_policy="float32")
    # A regex key: a reloaded Sequential's layers have the path "probe", not
    # "seq/probe" (Keras builds them outside the model's name scope).
    policy_map["(seq/)?probe"] = lp.Policy("bf16")
    model = keras.Sequential([keras.Input((1,)),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="ones",
                                                 name="probe", dtype=policy_map),
                              keras.layers.Dense(1, name="plain", dtype=policy_map)], name="seq")
    model.layers[1].set_weights([np.ones((1, 1), "float32"), np.zeros(1, "float32")])
    assert float(model.predict(ONE_PLUS, verbose=0)[0, 0]) == 1.0  # bf16, then exact FP32
    path = os.path.join(tmp_path, "map.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.layers[0].dtype_policy["seq/probe"] == lp.Policy("bf16")
    assert restored.layers[1].dtype_policy[restored.layers[1].path].name == "float32"
    assert float(restored.predict(ONE_PLUS, verbose=0)[0, 0]) == 1.0


def test_save_load_round_trip_keeps_policies(tmp_path):
    custom = lp.Policy("lab", spec=lp.PrecisionSpec(activations="e5m2", weights="bf16",
                                                   errors=("e5m2", "stochastic")))
    keras.config.set_dtype_policy(lp.Policy("fp8"))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
                              keras.layers.Dense(3, dtype=custom),
                              keras.layers.Dense(2, dtype="float32")])
    keras.config.set_dtype_policy("float32")
    model.compile("adam", "mse")
    x = np.random.RandomState(0).randn(16, 4).astype("float32")
    model.fit(x, np.zeros((16, 2), "float32"), epochs=1, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)  # no custom_objects
    assert [layer.dtype_policy for layer in restored.layers] == [
        lp.Policy("fp8"), custom, keras.DTypePolicy("float32")]
    assert_bitwise_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0), "reload")
    # Weights checkpoints into a freshly built emulated model.
    weights = os.path.join(tmp_path, "m.weights.h5")
    model.save_weights(weights)
    restored.set_weights([np.zeros_like(w) for w in restored.get_weights()])
    restored.load_weights(weights)
    assert_bitwise_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0), "weights")


def test_jit_compile_runs_the_pure_tf_rounding():
    model = keras.Sequential([keras.Input((1,)), _probe_dense(lp.Policy("bf16"))])
    model.compile("sgd", "mse", jit_compile=True)
    assert float(model.predict(ONE_PLUS, verbose=0)[0, 0]) == 1.0

    @tf.function(jit_compile=True)
    def call(x):
        return model(x)

    assert float(call(ONE_PLUS)[0, 0]) == 1.0
    before = model.get_weights()[0].copy()
    model.fit(ONE_PLUS, np.zeros((1, 1), "float32"), verbose=0)
    assert not np.array_equal(before, model.get_weights()[0])  # gradients flow under XLA


def _recorded_specs(model, x):
    seen = []

    def record(context, role, value, round_fn, axis):
        seen.append((context.layer.name, context.spec))
        return round_fn(value)

    remove = emulation.add_role_hook(record)
    try:
        model(x)
    finally:
        remove()
    return dict(seen)


def test_hfp8_keeps_first_and_last_layer_in_fp16():
    keras.config.set_dtype_policy(lp.Policy("hfp8"))
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, name="first"),
                              keras.layers.BatchNormalization(), keras.layers.Flatten(),
                              keras.layers.Dense(4, name="middle"),
                              keras.layers.Dense(3, name="last")])
    specs = _recorded_specs(model, np.ones((1, 6, 6, 1), "float32"))
    assert specs == {"first": lp.Policy("fp16").spec, "middle": lp.Policy("hfp8").spec,
                     "last": lp.Policy("fp16").spec}


def _sr_fit(seed, steps=3):
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    keras.config.set_dtype_policy(lp.Policy("bf16", rounding="stochastic"))
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(1)])
    keras.config.set_dtype_policy("float32")
    model.compile(keras.optimizers.SGD(0.1), "mse")
    rng = np.random.RandomState(0)
    x, y = rng.randn(32, 8).astype("float32"), rng.randn(32, 1).astype("float32")
    model.fit(x, y, batch_size=32 // steps + 1, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


def test_stochastic_rounding_is_reproducible_from_the_keras_seed():
    first, again, other = _sr_fit(1), _sr_fit(1), _sr_fit(2)
    for a, b in zip(first, again):
        assert_bitwise_equal(a, b, "same seed")
    # Seed 2 gives other initial weights; compare the SR noise with equal weights instead.
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_stochastic_seeds_depend_on_step_and_role():
    model = keras.Sequential([keras.Input((64,)),
                              keras.layers.Dense(64, dtype=lp.Policy("bf16", rounding="stochastic"))])
    model.compile(keras.optimizers.SGD(), "mse")
    x = np.random.RandomState(0).randn(4, 64).astype("float32")
    y0 = model(x)
    assert_bitwise_equal(model(x), y0, "same step")  # SR is a function of the seed ...
    model.optimizer.iterations.assign(1)
    assert not np.array_equal(np.asarray(model(x)), np.asarray(y0))  # ... which follows the step
    context_seeds = []

    def record(context, role, value, round_fn, axis):
        if role in ("activations", "weights"):
            context_seeds.append(tuple(context.seed(role).numpy()))
        return round_fn(value)

    remove = emulation.add_role_hook(record)
    try:
        model(x)
    finally:
        remove()
    assert len(set(context_seeds)) == 2
