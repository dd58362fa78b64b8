"""Files saved under tf_lowprec policies, loaded in a process without tf_lowprec.

`load_model` there must say that the file needs tf_lowprec (and which
version saved it), not fail with an AttributeError on a string; and
`lp.strip_policies` writes a copy that stock Keras loads, with float32
policies and the same weights.  The loading runs in a subprocess that never
imports tf_lowprec.  Runtime: ~10 s.
"""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from keras.dtype_policies import DTypePolicyMap

import tf_lowprec as lp

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

_STOCK_KERAS = r"""
import json, sys
import keras, numpy as np
original, stripped, weights = sys.argv[1:4]
report = {}
try:
    keras.saving.load_model(original)
    report["original"] = "loaded"
except Exception as error:
    report["original"] = f"{type(error).__name__}: {error}"
model = keras.saving.load_model(stripped)
saved = np.load(weights)
report["weights_equal"] = all(
    np.array_equal(w, saved[f"w{i}"]) for i, w in enumerate(model.get_weights()))
report["policies"] = [getattr(layer.dtype_policy, "default_policy", layer.dtype_policy).name
                      for layer in model.layers]
report["compiled"] = model.compiled
report["tf_lowprec_imported"] = any(m.startswith("tf_lowprec") for m in sys.modules)
print("REPORT", json.dumps(report))
"""


def _run_stock_keras(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)  # nothing that could import tf_lowprec behind our back
    proc = subprocess.run([sys.executable, "-c", _STOCK_KERAS, *args], capture_output=True,
                          text=True, env=env, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[0][len("REPORT "):])


def test_without_tf_lowprec_load_model_names_the_package_and_strip_gives_stock_keras(tmp_path):
    keras.backend.clear_session()
    model = keras.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(4, dtype=lp.Policy("bf16", rounding="stochastic"), name="plain"),
        keras.layers.Dense(2, dtype=DTypePolicyMap(default_policy=lp.Policy("fp16")),
                           name="mapped"),
    ])
    model.compile(lp.AdaptiveLossScaleOptimizer(keras.optimizers.SGD(0.1)), "mse")
    model.fit(np.ones((4, 3), "float32"), np.ones((4, 2), "float32"), verbose=0)
    original = str(tmp_path / "lowprec.keras")
    model.save(original)
    # With tf_lowprec the file loads as saved, optimizer included.
    again = keras.saving.load_model(original)
    assert again.get_layer("plain").dtype_policy == lp.Policy("bf16", rounding="stochastic")
    assert again.get_layer("mapped").dtype_policy.default_policy == lp.Policy("fp16")
    assert isinstance(again.optimizer, lp.AdaptiveLossScaleOptimizer)

    stripped = lp.strip_policies(original, str(tmp_path / "stock.keras"))
    weights = str(tmp_path / "weights.npz")
    np.savez(weights, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    report = _run_stock_keras(original, stripped, weights)

    assert not report["tf_lowprec_imported"]
    message = report["original"]
    assert "AttributeError" not in message
    assert f"saved with tf_lowprec {lp.__version__}" in message
    assert "import tf_lowprec" in message and "tf_lowprec.strip_policies" in message
    assert report["weights_equal"]
    assert report["policies"] == ["float32", "float32"]
    assert report["compiled"] is False  # the loss-scale optimizer is tf_lowprec's


def test_strip_policies_refuses_files_with_other_tf_lowprec_objects(tmp_path):
    # tests/data/layout_v0_model.keras (an old layout) holds a tf_lowprec Quantize layer.
    with pytest.raises(ValueError, match="Quantize"):
        lp.strip_policies(os.path.join(DATA, "layout_v0_model.keras"),
                          str(tmp_path / "copy.keras"))
    with pytest.raises(ValueError, match="new_path must differ"):
        lp.strip_policies(str(tmp_path / "a.keras"), str(tmp_path / "a.keras"))


def test_strip_policies_keeps_a_stock_training_configuration(tmp_path):
    keras.backend.clear_session()
    # bf16 needs no loss scaling, so compile keeps the stock SGD (fp8 would wrap it).
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype=lp.Policy("bf16"))])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    path = str(tmp_path / "m.keras")
    model.save(path)
    copy = lp.strip_policies(path, str(tmp_path / "copy.keras"))
    with zipfile.ZipFile(copy) as f:
        config = json.loads(f.read("config.json"))
    assert config["compile_config"]["optimizer"]["class_name"] == "SGD"
    assert "tf_lowprec" not in json.dumps(config)


def test_strip_policies_of_a_model_gives_a_float32_copy():
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype=lp.Policy("fp8"))])
    stock = lp.strip_policies(model)
    assert stock is not model and stock.layers[0].dtype_policy.name == "float32"
    assert model.layers[0].dtype_policy == lp.Policy("fp8")  # the original is untouched
    for a, b in zip(model.get_weights(), stock.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    # The kernel is drawn unseeded: an absolute tolerance covers outputs near 0, where the
    # summation orders of TensorFlow and NumPy may differ by an ulp of the products.
    np.testing.assert_allclose(stock(x), x @ model.get_weights()[0] + model.get_weights()[1],
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="new_path"):
        lp.strip_policies("model.keras")  # a file needs new_path
