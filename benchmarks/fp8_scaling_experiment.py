"""FP8 with and without per-tensor scaling on real data (issue 17, target 2).

A Dense / EinsumDense MLP (784 -> Dense 256 without bias -> LayerNormalization
-> ReLU -> EinsumDense 128, ReLU -> Dense 10) trains on the bundled MNIST
sample (4,000 / 1,000 images) with Adam, 3 seeds per arm, the same
iterations and hyper-parameters.  The layer normalisation (FP32, epsilon
1e-12) after the first GEMM makes the FP32 network invariant to the scale of
its inputs, so any difference between the input scales below is the number
format's doing.  Arms:

  fp32            no emulation (the control)
  fp8             lp.Policy("fp8"): E4M3 / E5M2, unscaled (compile adds loss scaling)
  fp8_delayed     lp.Policy("fp8_delayed"): Transformer Engine's default recipe
  fp8_current     lp.Policy("fp8_current"): per-tensor current scaling
  keras_float8    a float32 model after Keras' own `model.quantize("float8")`
                  (delayed scaling of Dense and EinsumDense, Keras 3)

Each arm runs on pixels in [0, 1] and on pixels multiplied by each of
`--factors`: 2^12 = 4096 (far beyond E4M3's largest value 448: the unscaled
fp8 preset saturates its first layer's activations) and 2^-12 (every pixel
below E4M3's smallest subnormal 2^-9: unscaled, the inputs round to zero).

Run:  python benchmarks/fp8_scaling_experiment.py [--seeds 3] [--epochs 2]
      [--out benchmarks/results/avx2_zen3/fp8_scaling.md]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tf_lowprec as lp  # noqa: E402
import results_io  # noqa: E402  (benchmarks/results_io.py, beside this script)

ARMS = ("fp32", "fp8", "fp8_delayed", "fp8_current", "keras_float8")


def _model(policy, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(256, use_bias=False, dtype=policy),
        keras.layers.LayerNormalization(epsilon=1e-12),
        keras.layers.ReLU(),
        keras.layers.EinsumDense("ab,bc->ac", output_shape=128, bias_axes="c",
                                 activation="relu", dtype=policy),
        keras.layers.Dense(10, dtype=policy),
    ])


def run(arm, seed, data, epochs, batch_size, learning_rate):
    (x_train, y_train), (x_test, y_test) = data
    policy = None if arm in ("fp32", "keras_float8") else lp.Policy(arm)
    model = _model(policy, seed)
    if arm == "keras_float8":
        model.quantize("float8")
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0,
                        shuffle=True)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0, batch_size=500)
    return {"test_accuracy": float(accuracy), "test_loss": float(loss),
            "train_loss": float(history.history["loss"][-1]), "seconds": seconds}


def _seed_noise(results, settings):
    """The seed-to-seed standard deviation of the test accuracy, pooled over every arm and
    input scale that trained (mean above 50 %): one arm's three seeds can agree by chance."""
    variances = [results[f"x{f:g} {arm}"]["accuracy_std"] ** 2
                 for f in settings["factors"] for arm in ARMS
                 if results[f"x{f:g} {arm}"]["accuracy_mean"] > 0.5]
    return float(np.sqrt(np.mean(variances)))


def _within_noise(a, b, seeds, noise):
    """(difference of the means in percentage points, whether it is within two standard
    errors of a difference of two means of `seeds` runs with standard deviation `noise`)."""
    difference = a["accuracy_mean"] - b["accuracy_mean"]
    return 100 * difference, abs(difference) <= 2 * noise * np.sqrt(2 / seeds)


def render(results, settings):
    """The Markdown report of `results` (test accuracy by input scale and arm)."""
    factors = settings["factors"]
    lines = [f"# FP8 per-tensor scaling on MNIST (bundled 4,000 / 1,000), "
             f"{results_io.cpu_model()}", "",
             "Dense 256 (no bias) -> LayerNorm (FP32, eps 1e-12) -> ReLU -> EinsumDense 128, "
             f"ReLU -> Dense 10; Adam {settings['learning_rate']}, "
             f"batch {settings['batch_size']}, {settings['epochs']} epochs, {settings['seeds']} seeds (0..."
             f"{settings['seeds'] - 1}); test accuracy mean ± sample std over seeds.", "",
             "| inputs | " + " | ".join(ARMS) + " |", "|---|" + "---|" * len(ARMS)]
    for factor in factors:
        cells = []
        for arm in ARMS:
            entry = results[f"x{factor:g} {arm}"]
            cells.append(f"{entry['accuracy_mean']:.4f} ± {entry['accuracy_std']:.4f}")
        lines.append(f"| pixels × {factor:g} | " + " | ".join(cells) + " |")
    lines += ["", "Training seconds per run (mean over seeds; the machine was shared):", "",
              "| inputs | " + " | ".join(ARMS) + " |", "|---|" + "---|" * len(ARMS)]
    for factor in factors:
        cells = [f"{np.mean([r['seconds'] for r in results[f'x{factor:g} {arm}']['runs']]):.1f}"
                 for arm in ARMS]
        lines.append(f"| pixels × {factor:g} | " + " | ".join(cells) + " |")
    noise = _seed_noise(results, settings)
    threshold = 200 * noise * np.sqrt(2 / settings["seeds"])
    lines += ["", "Difference to FP32 in percentage points, and `fp8_delayed` against Keras' "
              f"float8: ✓ within noise, |difference| ≤ {threshold:.2f} pp (two standard errors "
              f"of a difference of two {settings['seeds']}-seed means, with the seed-to-seed "
              f"standard deviation {100 * noise:.2f} pp pooled over every arm that trained), "
              "✗ outside:", "",
              "| inputs | " + " | ".join(f"{arm} − fp32" for arm in ARMS[1:]) +
              " | fp8_delayed − keras_float8 |", "|---|" + "---|" * len(ARMS)]
    for factor in factors:
        base = results[f"x{factor:g} fp32"]
        cells = []
        for arm in ARMS[1:]:
            difference, ok = _within_noise(results[f"x{factor:g} {arm}"], base,
                                           settings["seeds"], noise)
            cells.append(f"{difference:+.1f} {'✓' if ok else '✗'}")
        difference, ok = _within_noise(results[f"x{factor:g} fp8_delayed"],
                                       results[f"x{factor:g} keras_float8"], settings["seeds"],
                                       noise)
        cells.append(f"{difference:+.1f} {'✓' if ok else '✗'}")
        lines.append(f"| pixels × {factor:g} | " + " | ".join(cells) + " |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--factors", default="4096,0.000244140625",
                        help="comma-separated input multipliers besides 1")
    parser.add_argument("--out")
    parser.add_argument("--render", metavar="JSON",
                        help="print the report of an earlier run's JSON instead of running")
    args = parser.parse_args()
    if args.render:
        import json  # noqa: PLC0415

        import shlex  # noqa: PLC0415

        with open(args.render) as f:
            saved = json.load(f)
        results, meta = saved["results"], saved["meta"]
        if "settings" not in results:  # a run of the script before it recorded them
            words = shlex.split(meta["command"])
            ran = parser.parse_args(words[words.index(next(w for w in words if w.endswith(
                ".py"))) + 1:])
            results["settings"] = {
                "learning_rate": ran.learning_rate, "batch_size": ran.batch_size,
                "epochs": ran.epochs, "seeds": ran.seeds,
                "factors": [1.0] + [float(f) for f in ran.factors.split(",")]}
        lines = render(results, results["settings"]) + [
            "", f"Command: `{meta['command']}`; load average {meta['load_average']:.2f}; "
            f"{meta['date']}."]
        print("\n".join(lines))
        if args.out:
            stem = os.path.splitext(os.path.basename(args.out))[0]
            results_io.write(os.path.dirname(args.out), stem, meta, results, lines)
        return
    (x_train, y_train), (x_test, y_test) = lp.datasets.load_mnist_5k()
    x_train, x_test = x_train.reshape(-1, 784), x_test.reshape(-1, 784)
    factors = [1.0] + [float(f) for f in args.factors.split(",")]
    results = {}
    for factor in factors:
        data = ((x_train * factor, y_train), (x_test * factor, y_test))
        for arm in ARMS:
            runs = [run(arm, seed, data, args.epochs, args.batch_size, args.learning_rate)
                    for seed in range(args.seeds)]
            accuracy = np.array([r["test_accuracy"] for r in runs])
            results[f"x{factor:g} {arm}"] = {
                "factor": factor, "arm": arm, "runs": runs,
                "accuracy_mean": float(accuracy.mean()),
                "accuracy_std": float(accuracy.std(ddof=1)) if len(runs) > 1 else 0.0}
            print(f"x{factor:g} {arm}: {accuracy.mean():.4f} +- "
                  f"{results[f'x{factor:g} {arm}']['accuracy_std']:.4f} {accuracy}", flush=True)
    settings = {"learning_rate": args.learning_rate, "batch_size": args.batch_size,
                "epochs": args.epochs, "seeds": args.seeds, "factors": factors}
    results["settings"] = settings
    lines = render(results, settings)
    meta = results_io.metadata()
    lines += ["", f"Command: `{meta['command']}`; load average {meta['load_average']:.2f}; "
              f"{meta['date']}."]
    print("\n".join(lines))
    if args.out:
        stem = os.path.splitext(os.path.basename(args.out))[0]
        results_io.write(os.path.dirname(args.out), stem, meta, results, lines)


if __name__ == "__main__":
    main()
