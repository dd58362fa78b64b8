"""Pure-BF16 weights: nearest vs stochastic rounding vs Kahan (Zamirai et al. 2020).

A 2x256 ReLU MLP trains on the bundled MNIST sample with plain SGD at a small
learning rate.  Configurations, each over 3 seeds with the same iterations and
hyper-parameters:

  fp32                 FP32 everything (the control)
  bf16-fp32-master     lp.Policy("bf16") GEMMs, FP32 master weights
  bf16-weights-nearest lp.Policy("bf16") + weights stored in BF16, update
                       rounded to nearest (small updates cancel)
  bf16-weights-sr      ... update stochastically rounded
  bf16-weights-kahan   ... Kahan-compensated update

Run:  python benchmarks/bf16_weights_experiment.py [--seeds 3] [--epochs 3] [--lr 0.01]
Writes benchmarks/results/bf16_weights.{md,json}.
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


def _model(policy, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(256, activation="relu", dtype=policy),
        keras.layers.Dense(256, activation="relu", dtype=policy),
        keras.layers.Dense(10, dtype=policy),
    ])


def _configs(lr):
    def sgd():
        return keras.optimizers.SGD(lr)

    return [
        ("fp32", "fp32", sgd),
        ("bf16-fp32-master", "bf16", sgd),
        ("bf16-weights-nearest", "bf16",
         lambda: lp.LowPrecisionWeights(sgd(), "bf16", "nearest_even")),
        ("bf16-weights-sr", "bf16",
         lambda: lp.LowPrecisionWeights(sgd(), "bf16", "stochastic", seed=1)),
        ("bf16-weights-kahan", "bf16", lambda: lp.LowPrecisionWeights(sgd(), "bf16", "kahan")),
    ]


def run(args):
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist_5k()
    x_train, x_test = x_train.reshape(-1, 784), x_test.reshape(-1, 784)
    results = []
    for name, policy, make_optimizer in _configs(args.lr):
        accuracies, losses, seconds = [], [], []
        for seed in range(args.seeds):
            model = _model(lp.Policy(policy), seed)
            model.compile(optimizer=make_optimizer(),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
            start = time.perf_counter()
            history = model.fit(x_train, y_train, batch_size=32, epochs=args.epochs, verbose=0)
            seconds.append(time.perf_counter() - start)
            _, accuracy = model.evaluate(x_test, y_test, verbose=0)
            accuracies.append(100.0 * accuracy)
            losses.append(history.history["loss"][-1])
        row = {
            "config": name,
            "accuracy_mean": float(np.mean(accuracies)),
            "accuracy_std": float(np.std(accuracies)),
            "accuracies": accuracies,
            "train_loss_mean": float(np.mean(losses)),
            "seconds_mean": float(np.mean(seconds)),
        }
        results.append(row)
        print(f"{name:<22} {row['accuracy_mean']:6.2f} ± {row['accuracy_std']:.2f}  "
              f"loss {row['train_loss_mean']:.4f}  {row['seconds_mean']:.1f}s", flush=True)
    return results


def write(results, args):
    meta = results_io.metadata(epochs=args.epochs, seeds=args.seeds, lr=args.lr)
    lines = [
        "# Pure-BF16 weights: update rounding (MNIST sample)",
        "",
        f"Command: `{meta['command']}` ({meta['date']}). 2x256 ReLU MLP, SGD lr {args.lr}, batch 32, "
        f"{args.epochs} epochs, {args.seeds} seeds; test accuracy (%) on 1,000 held-out "
        "images and the last epoch's training loss.",
        "",
        "| configuration | accuracy (mean ± std) | per-seed | train loss |",
        "|---|---|---|---|",
    ]
    for r in results:
        per_seed = ", ".join(f"{a:.1f}" for a in r["accuracies"])
        lines.append(f"| {r['config']} | {r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} | "
                     f"{per_seed} | {r['train_loss_mean']:.4f} |")
    results_io.write(args.out_dir, "bf16_weights", meta, results, lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    write(run(args), args)


if __name__ == "__main__":
    main()
