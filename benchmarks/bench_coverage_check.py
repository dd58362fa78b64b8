"""Cost of finding raw TensorFlow GEMMs (tf_lowprec.keras.coverage) when steps are traced.

The check runs around every layer call (the adapter's "layer_call" event):
while a step is traced it reads the graph's op list before and after each
layer call and each emulated GEMM; in eager calls it only tests
`tf.executing_eagerly()`; traced steps, once built, carry none of it.
Measured in one run, alternating the configurations:

- trace: `make_train_function(force=True)` + the first `train_on_batch`
  (tracing and the first execution) of a deep MLP under lp.Policy("bf16"),
  with the check ("warn") and without it ("ignore");
- eager: one eager call of a Dense layer under lp.Policy("bf16"), with the
  listener registered and with no listener, and the listener alone (timeit).

Run:  python benchmarks/bench_coverage_check.py [--depth 60] [--repeats 5]
Writes benchmarks/results/avx2_zen3/coverage_check.{md,json} (--out to change).
"""

import argparse
import os
import statistics
import time
import timeit

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import results_io  # noqa: E402  (benchmarks/results_io.py, beside this script)
import tf_lowprec as lp  # noqa: E402
from tf_lowprec.keras import adapter, coverage  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _mlp(depth):
    keras.utils.set_random_seed(0)
    policy = lp.Policy("bf16")
    layers = [keras.Input((32,))] + [keras.layers.Dense(32, activation="relu", dtype=policy)
                                     for _ in range(depth)] + [keras.layers.Dense(1)]
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


def trace_seconds(model, x, y, action):
    lp.set_unemulated_gemm_action(action)
    try:
        model.make_train_function(force=True)
        start = time.perf_counter()
        model.train_on_batch(x, y)
        return time.perf_counter() - start
    finally:
        lp.set_unemulated_gemm_action("warn")


def eager_call_seconds(layer, x, listener, calls=200):
    adapter.set_listener("layer_call", listener)
    try:
        layer(x)
        start = time.perf_counter()
        for _ in range(calls):
            layer(x)
        return (time.perf_counter() - start) / calls
    finally:
        adapter.set_listener("layer_call", coverage.check_layer_call)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "avx2_zen3"))
    args = parser.parse_args()

    model = _mlp(args.depth)
    x = np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32)
    y = np.zeros((16, 1), np.float32)
    dense = keras.layers.Dense(32, dtype=lp.Policy("bf16"))
    times = {"trace_warn": [], "trace_ignore": [], "eager_listener": [], "eager_none": []}
    for _ in range(args.repeats):
        times["trace_warn"].append(trace_seconds(model, x, y, "warn"))
        times["trace_ignore"].append(trace_seconds(model, x, y, "ignore"))
        times["eager_listener"].append(eager_call_seconds(dense, x, coverage.check_layer_call))
        times["eager_none"].append(eager_call_seconds(dense, x, None))
    listener = timeit.repeat(lambda: coverage.check_layer_call(dense), number=20000,
                             repeat=args.repeats)
    times["listener_eager"] = [t / 20000 for t in listener]
    medians = {k: statistics.median(v) for k, v in times.items()}
    results = {"times_s": times, "medians_s": medians,
               "trace_ratio": medians["trace_warn"] / medians["trace_ignore"],
               "eager_ratio": medians["eager_listener"] / medians["eager_none"]}
    meta = results_io.metadata(depth=args.depth, repeats=args.repeats)
    lines = [
        "# Cost of the raw-GEMM check (tf_lowprec.keras.coverage)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; CPU: {meta['cpu']}; load average at start: "
        f"{meta['load_average']:.2f} (2 cores shared with other jobs: timings are noisy).",
        "",
        f"Medians of {args.repeats} alternating runs.",
        "",
        "| measurement | with the check | without | ratio |",
        "|---|---|---|---|",
        f"| trace + first step, MLP of {args.depth} bf16 Dense layers | "
        f"{medians['trace_warn']:.2f} s | {medians['trace_ignore']:.2f} s | "
        f"{results['trace_ratio']:.3f} |",
        f"| one eager call of a bf16 Dense layer | {medians['eager_listener'] * 1e6:.0f} us | "
        f"{medians['eager_none'] * 1e6:.0f} us | {results['eager_ratio']:.3f} |",
        "",
        f"The listener itself, in an eager call (`coverage.check_layer_call`, timeit): "
        f"{medians['listener_eager'] * 1e6:.2f} us per layer call.",
    ]
    results_io.write(args.out, "coverage_check", meta, results, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
