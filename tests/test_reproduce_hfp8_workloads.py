"""The HFP8 claim's MobileNetV2-style and Transformer workloads (benchmarks/reproduce).

Training them takes minutes (the suite's own run); these tests pin what the
comparison rests on without training: the architectures, the layers the
first/last exemption picks, the causal mask, the data, and the arms.
"""

import pathlib
import sys

import keras
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.reproduce import claims, domains, report, training  # noqa: E402
from tf_lowprec.keras import emulation  # noqa: E402


def test_mobilenet_has_inverted_residual_blocks_and_exempts_stem_and_classifier():
    domain = domains.DOMAINS["mobilenet"](quick=True)
    model = domain.build("float32")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("DepthwiseConv2D") == len(domain.blocks)
    assert kinds.count("Add") == 2  # the blocks whose input and output shapes match
    assert all(layer.max_value == 6.0 for layer in model.layers
               if isinstance(layer, keras.layers.ReLU))
    first, last = emulation.first_and_last_layers(model)
    assert first is model.layers[1] and isinstance(first, keras.layers.Conv2D)
    assert last is model.layers[-1] and isinstance(last, keras.layers.Dense)
    assert model.output_shape == (None, 10)


def test_transformer_is_causal_and_exempts_first_attention_and_output_dense():
    domain = domains.DOMAINS["transformer"](quick=True)
    keras.utils.set_random_seed(0)
    model = domain.build("float32")
    x = np.random.default_rng(0).integers(0, 90, (2, domain.length)).astype(np.int32)
    changed = x.copy()
    changed[:, 40:] = (changed[:, 40:] + 7) % 90
    a, b = model.predict(x, verbose=0), model.predict(changed, verbose=0)
    # A position sees only itself and earlier characters.
    np.testing.assert_allclose(a[:, :40], b[:, :40], rtol=1e-5, atol=1e-5)
    assert np.abs(a[:, 40:] - b[:, 40:]).max() > 1e-3
    first, last = emulation.first_and_last_layers(model)
    attention = [layer for layer in model.layers
                 if isinstance(layer, keras.layers.MultiHeadAttention)]
    assert len(attention) == domain.depth and first is attention[0]
    assert last is model.layers[-1] and last.units == model.output_shape[-1]


def test_workload_data_splits():
    mobilenet = domains.DOMAINS["mobilenet"](quick=True)
    mobilenet.load()
    assert set(np.unique(mobilenet.test[1])) == set(range(10))
    lm = domains.DOMAINS["transformer"](quick=True)
    lm.load()
    (x, y), (vx, vy) = lm.train, lm.test
    assert x.shape == y.shape == (lm.windows, lm.length)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets: the next character
    assert vx.shape == (lm.val_windows, lm.length)


def test_hfp8_arms_differ_only_in_the_forward_format():
    hfp8 = claims.CONFIGS["hfp8"].dtype_policy().spec.get_config()
    fp8 = claims.FP8_152_FORWARD.get_config()
    differing = {k for k in hfp8 if hfp8[k] != fp8[k]}
    assert differing == {"activations", "weights"}
    for name in ("fp8_delayed, ends fp16", "fp8_wang, ends fp16", "mxfp8, ends fp16"):
        spec = claims.CONFIGS[name].dtype_policy().spec
        assert spec.first_last.get_config() == hfp8["first_last"]
    # The recipes beside HFP8 run only on the two workloads, and enter no verdict.
    assert training.needed_configs(["hfp8"], "mobilenet") == [
        "fp32", "fp8 1-5-2 forward", "hfp8", "fp8_delayed, ends fp16", "fp8_wang, ends fp16",
        "mxfp8, ends fp16"]
    assert training.needed_configs(["hfp8"], "mnist") == ["fp32", "fp8 1-5-2 forward", "hfp8"]
    assert training.needed_configs(["hfp8"], "charlm") == []


@pytest.mark.parametrize("wang, how", [([2.90, 2.91, 2.92], "beats"),
                                       ([3.20, 3.21, 3.22], None)])
def test_context_arms_are_listed_where_they_tie_or_beat_hfp8(wang, how):
    meta = {"transformer": {"higher_is_better": False}}
    results = {"transformer": {name: {"metrics": m} for name, m in {
        "fp32": [3.000, 3.005, 3.010], "fp8 1-5-2 forward": [3.30, 3.32, 3.31],
        "hfp8": [3.002, 3.007, 3.012], "fp8_wang, ends fp16": wang}.items()}}
    rows = report.verdicts(results, meta)["hfp8"]["transformer"]
    assert set(rows) == {"fp8 1-5-2 forward", "hfp8"}
    assert rows["fp8 1-5-2 forward"]["verdict"] == "holds"  # 0.3 bpc worse, 8.6 pp
    assert rows["hfp8"]["verdict"] == "holds"
    found = {(other, kind) for _, method, other, kind, *_ in
             report.ties_and_beats(results, meta)["hfp8"]}
    assert ("fp32", "ties") in found
    assert ("fp8_wang, ends fp16", how) in found if how else all(
        other != "fp8_wang, ends fp16" for other, _ in found)
