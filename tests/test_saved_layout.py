"""A model saved by an earlier tf_lowprec still loads and predicts the same numbers.

tests/data/layout_v0_model.keras was written by tests/data/make_layout_v0_model.py
with the flat module layout (before the package was split into subpackages):
lp.Policy presets and custom specs (a non-preset FloatFormat, a block DfpFormat),
a DTypePolicyMap, and lp.layers.Quantize.  Its config names the old modules
("tf_lowprec.policy", "tf_lowprec.layers").
"""

import os

import keras
import numpy as np
from keras.dtype_policies import DTypePolicyMap

import tf_lowprec as lp

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def test_layout_v0_model_loads_and_predicts_the_same():
    model = keras.saving.load_model(os.path.join(DATA, "layout_v0_model.keras"))
    saved = np.load(os.path.join(DATA, "layout_v0_model_io.npz"))
    np.testing.assert_array_equal(model.predict(saved["x"], verbose=0), saved["y"])
    policies = {layer.name: layer.dtype_policy for layer in model.layers}
    assert policies["hidden"] == lp.Policy("fp16")
    assert policies["body"] == lp.Policy("hfp8", storage="bf16")
    assert policies["dfp"] == lp.Policy("dfp16")
    assert isinstance(policies["head"], DTypePolicyMap)
    assert policies["head"].default_policy == lp.Policy("bf16")
    head = policies["head"]["head"]
    assert isinstance(head, lp.Policy) and head.name == "fp8_like"
    activations, rounding = head.spec.role("activations")
    assert activations == lp.FloatFormat(4, 3, name="e4m3_custom", exponent_bias=9)
    assert rounding == "nearest_even"
    assert head.spec.errors == ("e5m2", "stochastic")
    assert head.spec.role("weight_gradients")[0] == lp.DfpFormat(16, block_size=8)
    quantize = model.get_layer("quantize")
    assert isinstance(quantize, lp.layers.Quantize)
    assert quantize.format == lp.E5M2 and quantize.backward_format == lp.BF16


def test_layout_v0_model_trains_after_loading():
    model = keras.saving.load_model(os.path.join(DATA, "layout_v0_model.keras"))
    saved = np.load(os.path.join(DATA, "layout_v0_model_io.npz"))
    model.compile(lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.01)), "mse")
    history = model.fit(saved["x"], np.zeros((4, 3), "float32"), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
