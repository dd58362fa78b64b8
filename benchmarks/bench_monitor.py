"""Overhead of lp.callbacks.PrecisionMonitor on a training step.

A small CNN trains on the bundled MNIST sample under lp.Policy("bf16") and
lp.Policy("fp16") + AdaptiveLossScaleOptimizer; the mean step time with the
monitor (sampling every N steps; the sampled steps' cost amortised in) is
compared with the same model without it, measured in the same run,
alternating the configurations to spread machine noise.

Run:  python benchmarks/bench_monitor.py [--intervals 100 10 1] [--epochs 2] [--repeats 3]
Writes benchmarks/results/monitor.{md,json}.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tf_lowprec as lp  # noqa: E402
import results_io  # noqa: E402  (benchmarks/results_io.py, beside this script)
from tf_lowprec.cli import datasets  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class StepTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def _model(policy, scaled):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu", dtype=policy),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu", dtype=policy),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", dtype=policy),
        keras.layers.Dense(10, dtype=policy),
    ])
    optimizer = keras.optimizers.Adam(1e-3)
    if scaled:
        optimizer = lp.AdaptiveLossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _step_time(policy_name, scaled, interval, x, y, epochs):
    """Mean step time over the run after warm-up: sampled steps amortised in."""
    model = _model(lp.Policy(policy_name), scaled)
    timer = StepTimes()
    callbacks = [timer]
    if interval is not None:
        callbacks.insert(0, lp.callbacks.PrecisionMonitor(every_n_steps=interval))
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, callbacks=callbacks)
    return float(np.mean(timer.times[5:]))


def run(args):
    (x, y), _ = datasets.load_mnist_5k()
    x = x[..., None]
    rows = []
    for policy_name, scaled in (("bf16", False), ("fp16", True)):
        configs = [None] + list(args.intervals)
        samples = {c: [] for c in configs}
        for _ in range(args.repeats):
            for c in configs:
                samples[c].append(_step_time(policy_name, scaled, c, x, y, args.epochs))
        base = float(np.median(samples[None]))
        for c in args.intervals:
            t = float(np.median(samples[c]))
            rows.append({"policy": policy_name + ("+als" if scaled else ""), "interval": c,
                         "step_ms": 1e3 * t, "baseline_step_ms": 1e3 * base,
                         "overhead": t / base - 1.0})
            print(f"{rows[-1]['policy']:<10} every {c:>4} steps: {1e3 * t:6.2f} ms vs "
                  f"{1e3 * base:6.2f} ms -> overhead {100 * rows[-1]['overhead']:+.1f}%",
                  flush=True)
    return rows


def write(results, args):
    meta = results_io.metadata()
    lines = ["# PrecisionMonitor overhead", "",
             f"Command: `{meta['command']}` ({meta['date']}, load average "
             f"{meta['load_average']:.1f}). Mean training-step time (sampled steps "
             "included, so their cost is amortised over the interval; median over the "
             "repeats) of a small CNN on the bundled MNIST sample with the monitor, against "
             "the same model without it in the same run.", "",
             "| policy | sampling interval | step (ms) | without monitor (ms) | overhead |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['policy']} | every {r['interval']} steps | {r['step_ms']:.2f} | "
                     f"{r['baseline_step_ms']:.2f} | {100 * r['overhead']:+.1f}% |")
    results_io.write(args.out_dir, "monitor", meta, results, lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, nargs="+", default=[100, 10, 1])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    write(run(args), args)


if __name__ == "__main__":
    main()
