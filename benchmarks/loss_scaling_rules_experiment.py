"""Zhao et al.'s loss scaling rule against the local rule, Keras' global scaling and fixed scales.

A deep ReLU MLP (10 hidden layers of 64) trains with Adam on the bundled MNIST
sample (4,000 / 1,000 images).  Its kernels are initialised small
(VarianceScaling(scale=0.3), fan-in normal), so the backward error shrinks
by about 2.7x per layer: the layers' error magnitudes differ by several
orders of magnitude (the "error RMS per layer" row of the results, measured
in FP32 at initialisation), with no artificial loss multiplier.  Adam
normalises each weight's step, so the small first-layer gradients matter as
much as the large last-layer ones, and an error that underflows is a lost
update.  Configurations, each over the same seeds, iterations and
hyper-parameters, under the policy given by --policy (fp16: IEEE half GEMM
operands, errors and weight gradients; fp8: E4M3 forward, E5M2 errors):

  fp32             no emulation (the control)
  none             no loss scaling
  fixed-2^k        a fixed global scale (Keras' `loss_scale_factor`), a sweep
  dynamic          Keras' global dynamic LossScaleOptimizer (initial 2^15)
  local            lp.AdaptiveLossScaleOptimizer (scaling_rule="local")
  paper            lp.AdaptiveLossScaleOptimizer(scaling_rule="paper",
                   initial_scale=1): Zhao et al.'s chain from a loss scale of 1,
                   as in the authors' code
  paper+dynamic    scaling_rule="paper" on top of the default global scale 2^15

Run:  nice -n 10 python benchmarks/loss_scaling_rules_experiment.py [--policy fp16|fp8]
Writes benchmarks/results/avx2_zen3/loss_scaling_rules_<policy>.{md,json}; with
--gradients, the first step's per-layer gradient error against FP32 at initialisation
(loss_scaling_rules_<policy>_gradients.{md,json}).
"""

import argparse
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_lowprec as lp  # noqa: E402
import results_io  # noqa: E402  (benchmarks/results_io.py, beside this script)
from tf_lowprec.cli import datasets  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _model(policy, seed, depth, width, init_scale):
    keras.utils.set_random_seed(seed)
    init = keras.initializers.VarianceScaling(scale=init_scale, distribution="truncated_normal")
    layers = [keras.Input((784,))]
    layers += [keras.layers.Dense(width, activation="relu", kernel_initializer=init,
                                  dtype=policy) for _ in range(depth)]
    layers.append(keras.layers.Dense(10, kernel_initializer=init, dtype=policy))
    return keras.Sequential(layers)


def _configs(policy, lr, fixed_exponents):
    def adam(**kwargs):
        return keras.optimizers.Adam(lr, **kwargs)

    configs = [("fp32", "fp32", adam), ("none", policy, adam)]
    for k in fixed_exponents:
        configs.append((f"fixed-2^{k}", policy, lambda k=k: adam(loss_scale_factor=2.0**k)))
    configs += [
        ("dynamic", policy, lambda: keras.optimizers.LossScaleOptimizer(adam())),
        ("local", policy, lambda: lp.AdaptiveLossScaleOptimizer(adam())),
        ("paper", policy, lambda: lp.AdaptiveLossScaleOptimizer(
            adam(), initial_scale=1.0, scaling_rule="paper")),
        ("paper+dynamic", policy, lambda: lp.AdaptiveLossScaleOptimizer(
            adam(), scaling_rule="paper")),
    ]
    return configs


def error_rms_per_layer(x, y, args):
    """RMS of each Dense layer's output error (FP32, at initialisation, seed 0), input first."""
    model = _model(lp.Policy("fp32"), 0, args.depth, args.width, args.init_scale)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    outputs, h = [], tf.constant(x[:128])
    with tf.GradientTape() as tape:
        for layer in model.layers:
            z = tf.matmul(h, layer.kernel) + layer.bias
            tape.watch(z)
            outputs.append(z)
            h = layer.activation(z)
        loss = ce(y[:128], h)
    return [float(tf.sqrt(tf.reduce_mean(tf.square(g)))) for g in tape.gradient(loss, outputs)]


def gradient_fidelity(args, data):
    """Per-layer relative error of the first step's weight gradients against FP32, at init.

    The regime the rules are for: at initialisation the layers' errors differ by orders of
    magnitude (later in training they grow into FP16's range).  For each configuration and
    seed, one batch of 128: ||g - g_fp32|| / ||g_fp32|| per Dense kernel, input layer first,
    with the loss scaled and the gradients unscaled as the optimizer does.
    """
    (x_train, y_train), _ = data
    x, y = tf.constant(x_train[:128]), tf.constant(y_train[:128])
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rows = []
    for name, policy, make_optimizer in _configs(args.policy, args.lr, args.fixed_exponents):
        if name == "fp32" or (args.only and name not in args.only):
            continue
        errors = []
        for seed in range(args.seeds):
            grads = {}
            for run_policy in ("fp32", policy):
                model = _model(lp.Policy(run_policy), seed, args.depth, args.width,
                               args.init_scale)
                with lp.loss_scaling.automatic_loss_scaling_mode(None):
                    model.compile(optimizer=make_optimizer(), loss=ce)
                opt = model.optimizer
                opt.build(model.trainable_variables)
                with tf.GradientTape() as tape:
                    loss = opt.scale_loss(ce(y, model(x, training=True)))
                g = tape.gradient(loss, model.trainable_variables)
                scale = float(loss / ce(y, model(x, training=False)))
                kernels = [v for v in g[0::2]]  # Dense kernels (kernel, bias per layer)
                grads[run_policy] = [k.numpy() / scale for k in kernels]
            errors.append([float(np.linalg.norm(a - b) / np.linalg.norm(b))
                           for a, b in zip(grads[policy], grads["fp32"])])
        mean = np.mean(errors, axis=0)
        rows.append({"config": name, "relative_error_per_layer": [float(v) for v in mean]})
        print(f"{name:<14} " + " ".join(f"{v:.1e}" for v in mean), flush=True)
    return rows


def write_fidelity(rows, rms, args):
    meta = results_io.metadata(
        tf_lowprec=lp.__version__, policy=args.policy, seeds=args.seeds, depth=args.depth,
        width=args.width, init_scale=args.init_scale, error_rms_per_layer=rms)
    lines = [
        f"# First-step gradient error per layer, policy {args.policy} (deep MLP at init)",
        "",
        f"Command: `nice -n 10 {meta['command']}` ({meta['date']}); CPU {meta['cpu']}, "
        f"tier avx2_zen3, load average {meta.get('load_average', '')}.",
        "",
        f"The network of loss_scaling_rules_{args.policy}.md at initialisation (seeds 0-"
        f"{args.seeds - 1}, one batch of 128): ||g - g_fp32|| / ||g_fp32|| of each Dense "
        "kernel's gradient, mean over seeds, input layer first. Error RMS per layer (FP32): "
        + ", ".join(f"{v:.1e}" for v in rms) + ".",
        "",
        "| configuration | " + " | ".join(f"L{i}" for i in range(len(rms))) + " |",
        "|---|" + "---|" * len(rms),
    ]
    for r in rows:
        lines.append(f"| {r['config']} | "
                     + " | ".join(f"{v:.1e}" for v in r["relative_error_per_layer"]) + " |")
    results_io.write(args.out_dir, f"loss_scaling_rules_{args.policy}_gradients", meta, rows,
                     lines)


def run(args, data):
    (x_train, y_train), (x_test, y_test) = data
    results = []
    for name, policy, make_optimizer in _configs(args.policy, args.lr, args.fixed_exponents):
        if args.only and name not in args.only:
            continue
        accuracies, seconds, scales = [], [], []
        for seed in range(args.seeds):
            model = _model(lp.Policy(policy), seed, args.depth, args.width, args.init_scale)
            # Each configuration names its own loss scaling ("none" is one).
            with lp.loss_scaling.automatic_loss_scaling_mode(None):
                model.compile(optimizer=make_optimizer(),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                              metrics=["accuracy"])
            start = time.process_time()
            model.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=0)
            seconds.append(time.process_time() - start)
            _, accuracy = model.evaluate(x_test, y_test, verbose=0, batch_size=500)
            accuracies.append(100.0 * accuracy)
            layer_scales = getattr(model.optimizer, "layer_scales", None)
            if layer_scales and seed == 0:  # in the model's layer order, input layer first
                scales = [int(round(math.log2(float(
                    layer_scales[layer.kernel.path.rsplit("/", 1)[0]])))) for layer in model.layers]
        row = {
            "config": name,
            "accuracy_mean": float(np.mean(accuracies)),
            "accuracy_std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0,
            "accuracies": accuracies,
            "cpu_seconds_mean": float(np.mean(seconds)),
        }
        if scales:
            row["final_layer_scale_exponents_seed0"] = scales
        results.append(row)
        print(f"{name:<14} {row['accuracy_mean']:6.2f} ± {row['accuracy_std']:.2f}  "
              f"{row['cpu_seconds_mean']:.0f} s CPU  {scales or ''}", flush=True)
    return results


def smallest_detectable(results, seeds):
    """Two-sided 95 % Welch-style bound for a difference of means: 2.0 * sqrt(2 s^2 / n)."""
    stds = [r["accuracy_std"] for r in results
            if r["config"] != "none" and r["accuracy_mean"] > 10.5]  # not diverged
    pooled = math.sqrt(np.mean(np.square(stds))) if stds else 0.0
    return pooled, 2.0 * pooled * math.sqrt(2.0 / seeds)


def write(results, rms, args):
    pooled, detectable = smallest_detectable(results, args.seeds)
    meta = results_io.metadata(
        tf_lowprec=lp.__version__, policy=args.policy, epochs=args.epochs, seeds=args.seeds,
        depth=args.depth, width=args.width, init_scale=args.init_scale, lr=args.lr,
        data="bundled MNIST sample: 4,000 train / 1,000 test", error_rms_per_layer=rms,
        pooled_std=pooled, smallest_detectable_difference=detectable)
    best_fixed = max((r for r in results if r["config"].startswith("fixed")),
                     key=lambda r: r["accuracy_mean"], default=None)
    lines = [
        f"# Loss scaling rules on a deep MLP, policy {args.policy} (MNIST sample)",
        "",
        f"Command: `nice -n 10 {meta['command']}` ({meta['date']}); CPU {meta['cpu']}, "
        f"tier avx2_zen3, load average at the end {meta.get('load_average', '')}.",
        "",
        f"{args.depth}x{args.width} ReLU MLP + Dense(10), kernels VarianceScaling(scale="
        f"{args.init_scale}), Adam lr {args.lr}, batch 128, {args.epochs} epochs, seeds 0-"
        f"{args.seeds - 1}; test accuracy (%) on the 1,000 held-out images. No loss multiplier.",
        "",
        "Error RMS per layer (FP32, initialisation, seed 0, input layer first): "
        + ", ".join(f"{v:.1e}" for v in rms) + ".",
        "",
        "| configuration | accuracy (mean ± std) | per-seed | CPU s / run | "
        "final layer scales (seed 0, log2, input layer first) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        per_seed = ", ".join(f"{a:.1f}" for a in r["accuracies"])
        scales = r.get("final_layer_scale_exponents_seed0")
        scales = "" if not scales else " ".join(str(s) for s in scales)
        lines.append(f"| {r['config']} | {r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} | "
                     f"{per_seed} | {r['cpu_seconds_mean']:.0f} | {scales} |")
    lines += [
        "",
        f"Pooled per-seed std (all configurations but `none` and diverged ones): "
        f"{pooled:.2f} points; the "
        f"smallest difference of two means this setting detects (2 sigma of the difference, "
        f"{args.seeds} seeds each): {detectable:.2f} points.",
    ]
    if best_fixed is not None:
        lines.append(f"Best fixed scale: {best_fixed['config']} "
                     f"({best_fixed['accuracy_mean']:.2f}).")
    results_io.write(args.out_dir, f"loss_scaling_rules_{args.policy}", meta, results, lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="fp16", choices=["fp16", "fp8"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--init-scale", type=float, default=0.3)
    parser.add_argument("--fixed-exponents", type=int, nargs="+", default=[0, 8, 16])
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    parser.add_argument("--gradients", action="store_true",
                        help="measure first-step gradient errors per layer instead of training")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results", "avx2_zen3"))
    args = parser.parse_args(argv)
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist_5k()
    data = (x_train.reshape(-1, 784), y_train), (x_test.reshape(-1, 784), y_test)
    rms = error_rms_per_layer(data[0][0], data[0][1], args)
    print("error RMS per layer:", ", ".join(f"{v:.1e}" for v in rms), flush=True)
    if args.gradients:
        write_fidelity(gradient_fidelity(args, data), rms, args)
    else:
        write(run(args, data), rms, args)


if __name__ == "__main__":
    main()
