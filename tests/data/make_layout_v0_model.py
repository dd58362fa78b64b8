"""Writes layout_v0_model.keras and its predictions (run once, before the package was split).

The model was saved by tf_lowprec with the flat module layout (one folder of
23 modules, commit 87fe502); tests/test_saved_layout.py checks that later
layouts still load it and predict the same numbers.

    PYTHONPATH=$PWD python tests/data/make_layout_v0_model.py
"""

import os

import keras
import numpy as np
from keras.dtype_policies import DTypePolicyMap

import tf_lowprec as lp

HERE = os.path.dirname(os.path.abspath(__file__))


def build():
    keras.utils.set_random_seed(0)
    custom = lp.PrecisionSpec(
        activations=(lp.FloatFormat(4, 3, name="e4m3_custom", exponent_bias=9), "nearest_even"),
        weights="e4m3",
        errors=("e5m2", "stochastic"),
        weight_gradients=lp.DfpFormat(16, block_size=8),
    )
    policy_map = DTypePolicyMap(default_policy=lp.Policy("bf16"))
    policy_map["head"] = lp.Policy("fp8_like", spec=custom)
    inputs = keras.Input((6,))
    x = lp.layers.Quantize("e5m2", backward_format="bf16", name="quantize")(inputs)
    x = keras.layers.Dense(8, activation="relu", name="hidden", dtype=lp.Policy("fp16"))(x)
    x = keras.layers.Dense(8, activation="relu", name="body",
                           dtype=lp.Policy("hfp8", storage="bf16"))(x)
    x = keras.layers.Dense(8, name="dfp", dtype=lp.Policy("dfp16"))(x)
    outputs = keras.layers.Dense(3, name="head", dtype=policy_map)(x)
    model = keras.Model(inputs, outputs)
    return model


def main():
    model = build()
    x = np.linspace(-2.0, 2.0, 4 * 6, dtype="float32").reshape(4, 6)
    model.save(os.path.join(HERE, "layout_v0_model.keras"))
    np.savez(os.path.join(HERE, "layout_v0_model_io.npz"), x=x,
             y=model.predict(x, verbose=0))


if __name__ == "__main__":
    main()
