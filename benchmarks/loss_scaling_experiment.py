"""FP16 underflow and loss scaling on real data (issue: loss scaling, must-show 2).

A 4x256 ReLU MLP trains on the bundled MNIST sample (4,000 / 1,000 images)
under `lp.Policy("fp16")` (GEMM operands, errors and weight gradients in IEEE
half).  The cross-entropy is multiplied by a small constant `c` and the SGD
learning rate divided by it: identical training in FP32, but in FP16 the
backward errors fall below half precision's range, as they do for losses
normalised by large element counts.  Configurations, each over 3 seeds with
the same iterations and hyper-parameters:

  fp32            no emulation (the control)
  fp16-none       no loss scaling
  fp16-fixed-2^k  a fixed global scale (Keras' `loss_scale_factor`)
  fp16-dynamic    Keras' global dynamic LossScaleOptimizer
  fp16-adaptive   lp.AdaptiveLossScaleOptimizer (layer-wise scales)

Run:  python benchmarks/loss_scaling_experiment.py [--seeds 3] [--epochs 3]
Writes benchmarks/results/loss_scaling.{md,json}.
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


def _model(policy, seed, depth=4, width=256):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((784,))]
    layers += [keras.layers.Dense(width, activation="relu", dtype=policy) for _ in range(depth)]
    layers.append(keras.layers.Dense(10, dtype=policy))
    return keras.Sequential(layers)


def _configs(c, lr):
    def sgd(**kwargs):
        return keras.optimizers.SGD(lr / c, momentum=0.9, **kwargs)

    configs = [("fp32", "fp32", sgd), ("fp16-none", "fp16", sgd)]
    for k in (4, 8, 16):
        configs.append((f"fp16-fixed-2^{k}", "fp16",
                        lambda k=k: sgd(loss_scale_factor=2.0**k)))
    configs.append(("fp16-dynamic", "fp16", lambda: keras.optimizers.LossScaleOptimizer(sgd())))
    configs.append(("fp16-adaptive", "fp16", lambda: lp.AdaptiveLossScaleOptimizer(sgd())))
    return configs


def run(args):
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist_5k()
    x_train, x_test = x_train.reshape(-1, 784), x_test.reshape(-1, 784)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = []
    for c_exp in args.loss_exponents:
        c = 2.0**-c_exp

        def loss(y, p, c=c):
            return ce(y, p) * c

        for name, policy, make_optimizer in _configs(c, args.lr):
            accuracies, seconds, scales = [], [], []
            for seed in range(args.seeds):
                model = _model(lp.Policy(policy), seed)
                # Each configuration names its own loss scaling ("fp16-none" is one).
                with lp.loss_scaling.automatic_loss_scaling_mode(None):
                    model.compile(optimizer=make_optimizer(), loss=loss, metrics=["accuracy"])
                start = time.perf_counter()
                model.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=0)
                seconds.append(time.perf_counter() - start)
                _, accuracy = model.evaluate(x_test, y_test, verbose=0)
                accuracies.append(100.0 * accuracy)
                layer_scales = getattr(model.optimizer, "layer_scales", None)
                if layer_scales:
                    scales.append([float(v) for v in layer_scales.values()])
            row = {
                "loss_scale_c": f"2^-{c_exp}",
                "config": name,
                "accuracy_mean": float(np.mean(accuracies)),
                "accuracy_std": float(np.std(accuracies)),
                "accuracies": accuracies,
                "seconds_mean": float(np.mean(seconds)),
            }
            if scales:
                row["final_layer_scales_seed0"] = scales[0]
            results.append(row)
            print(f"c=2^-{c_exp:<3} {name:<16} {row['accuracy_mean']:6.2f} ± "
                  f"{row['accuracy_std']:.2f}  {row['seconds_mean']:.1f}s", flush=True)
    return results


def write(results, args):
    meta = results_io.metadata(tf_lowprec=lp.__version__, epochs=args.epochs, seeds=args.seeds,
                         data="bundled MNIST sample: 4,000 train / 1,000 test")
    lines = [
        "# FP16 training with and without loss scaling (MNIST sample)",
        "",
        f"Command: `{meta['command']}` ({meta['date']}). 4x256 ReLU MLP, SGD momentum 0.9, "
        f"batch 128, {args.epochs} epochs, {args.seeds} seeds; test accuracy (%) on the "
        "1,000 held-out images. The loss is multiplied by c and the learning rate divided "
        "by c: the same training in FP32, errors below FP16's range without scaling.",
        "",
        "| c | configuration | accuracy (mean ± std) | per-seed | final layer scales (seed 0) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        per_seed = ", ".join(f"{a:.1f}" for a in r["accuracies"])
        scales = r.get("final_layer_scales_seed0")
        scales = "" if not scales else ", ".join(f"2^{int(np.log2(s))}" for s in scales)
        lines.append(f"| {r['loss_scale_c']} | {r['config']} | {r['accuracy_mean']:.2f} ± "
                     f"{r['accuracy_std']:.2f} | {per_seed} | {scales} |")
    results_io.write(args.out_dir, "loss_scaling", meta, results, lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--loss-exponents", type=int, nargs="+", default=[14, 18],
                        help="c = 2^-e for each e (default: 14 18)")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    write(run(args), args)


if __name__ == "__main__":
    main()
