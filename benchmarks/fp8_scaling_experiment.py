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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--factors", default="4096,0.000244140625",
                        help="comma-separated input multipliers besides 1")
    parser.add_argument("--out")
    args = parser.parse_args()
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
    lines = [f"# FP8 per-tensor scaling on MNIST (bundled 4,000 / 1,000), "
             f"{results_io.cpu_model()}", "",
             "Dense 256 (no bias) -> LayerNorm (FP32, eps 1e-12) -> ReLU -> EinsumDense 128, "
             f"ReLU -> Dense 10; Adam {args.learning_rate}, "
             f"batch {args.batch_size}, {args.epochs} epochs, {args.seeds} seeds (0..."
             f"{args.seeds - 1}); test accuracy mean ± sample std over seeds.", "",
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
    meta = results_io.metadata()
    lines += ["", f"Command: `{meta['command']}`; load average {meta['load_average']:.2f}; "
              f"{meta['date']}."]
    print("\n".join(lines))
    if args.out:
        stem = os.path.splitext(os.path.basename(args.out))[0]
        results_io.write(os.path.dirname(args.out), stem, meta, results, lines)


if __name__ == "__main__":
    main()
