"""Swamping in FP16 accumulation on a real workload; chunk-based accumulation (Wang et al. 2018).

Two measurements on the reproduction suite's MNIST CNN (the bundled 5,000-image
sample), each with three accumulators for every GEMM (forward, dX and dW):
FP32 sums, FP16 sums rounded after every addition ("no chunks"), and FP16 sums
in chunks of 64 (Wang et al.'s CL = 64).  Operands stay FP32, so only the sums
differ.

1. Gradient error: the weight gradients of one batch (64 images, and the whole
   4,000-image training set as one batch) against FP32 sums, per layer, as
   relative error ||g - g_fp32|| / ||g_fp32|| and the norm ratio
   ||g|| / ||g_fp32|| (swamping drops small addends once a running sum is
   2^11 times larger, so it shrinks long sums).
2. Test accuracy after the suite's training schedule (8 epochs, batch 64),
   over several seeds.
3. Swamping against K (`--k-sweep`): the same CNN on the same real images
   enlarged to 56x56 and 112x112 (nearest-neighbour; the pooling after the
   first convolution grows with the size so the rest of the network is
   unchanged), at its initial weights.  The first convolution's weight
   gradient is a GEMM with K = batch x output pixels: 0.17 M at 28x28 and
   batch 256, 3.1 M at 112x112, the K of a ResNet's first layer on ImageNet
   at batch 256 (112x112 outputs) where Wang et al. see swamping.  Also the
   paper's possible 1-6-9 accumulator (docs/accumulation.md).

Usage: python benchmarks/swamping_experiment.py [--seeds 3]
                                                [--out benchmarks/results/avx2_zen3/swamping]
       python benchmarks/swamping_experiment.py --k-sweep
                                                [--out benchmarks/results/avx2_zen3/swamping_k]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import results_io  # noqa: E402
import tf_lowprec as lp  # noqa: E402
from benchmarks.reproduce import claims, domains, training  # noqa: E402

ARMS = {
    "fp32 sums": None,
    "fp16 sums, no chunks": lp.PrecisionSpec(accumulator=lp.Accumulator(lp.FP16)),
    "fp16 sums, chunks of 64": lp.PrecisionSpec(
        accumulator=lp.Accumulator(lp.FP16, chunk_size=64)),
}


# The K sweep adds the accumulator Wang et al.'s "FP16" may be (6 exponent bits, 9 mantissa bits:
# unverified, docs/accumulation.md).
FP16_1_6_9 = lp.FloatFormat(6, 9)
SWEEP_ARMS = {
    "fp16 sums, no chunks": ARMS["fp16 sums, no chunks"],
    "fp16 sums, chunks of 64": ARMS["fp16 sums, chunks of 64"],
    "1-6-9 sums, no chunks": lp.PrecisionSpec(accumulator=lp.Accumulator(FP16_1_6_9)),
    "1-6-9 sums, chunks of 64": lp.PrecisionSpec(
        accumulator=lp.Accumulator(FP16_1_6_9, chunk_size=64)),
}


class EnlargedMnist(domains.Mnist):
    """The suite's MNIST CNN on its images enlarged `scale` times (nearest neighbour).

    The pooling after the first convolution is `2 * scale`, so from the second
    convolution on the network is the 28x28 one; only the first layer's GEMMs
    grow (its weight gradient's K is batch x (28 scale - 2)^2)."""

    def __init__(self, scale):
        self.scale = scale
        super().__init__()

    def load(self):
        super().load()
        size = 28 * self.scale
        self.train = (tf.image.resize(self.train[0], [size, size], "nearest").numpy(),
                      self.train[1])

    def build(self, policy):
        layers = keras.layers
        size = 28 * self.scale
        pool = 2 * self.scale
        return keras.Sequential([
            keras.Input((size, size, 1)),
            layers.Conv2D(16, 3, activation="relu", dtype=policy),
            layers.MaxPooling2D(pool, padding="same"),
            layers.Conv2D(32, 3, activation="relu", dtype=policy),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(64, activation="relu", dtype=policy),
            layers.Dense(10, dtype=policy),
        ])


def gradients(domain, spec, weights, x, y):
    keras.backend.clear_session()
    policy = "float32" if spec is None else lp.Policy("arm", spec=spec)
    model = domain.build(policy)
    model.set_weights(weights)
    loss_fn = domain.loss()
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    kernels = [w for w in model.trainable_weights if "kernel" in w.path]
    return {w.path.split("/")[-2]: g.numpy() for w, g in zip(kernels, tape.gradient(loss, kernels))}


def gradient_errors(domain, batch, arms=ARMS):
    keras.utils.set_random_seed(0)
    weights = domain.build("float32").get_weights()
    x, y = domain.train[0][:batch], domain.train[1][:batch]
    reference = gradients(domain, None, weights, x, y)
    rows = {}
    for arm, spec in arms.items():
        if spec is None:
            continue
        found = gradients(domain, spec, weights, x, y)
        rows[arm] = {
            layer: {"relative_error": float(np.linalg.norm(found[layer] - g) / np.linalg.norm(g)),
                    "norm_ratio": float(np.linalg.norm(found[layer]) / np.linalg.norm(g))}
            for layer, g in reference.items()}
    return rows


def k_sweep():
    """Rows (scale, batch, K, arm, first-layer relative error and norm ratio)."""
    rows = []
    for scale, batch in ((1, 256), (1, 4000), (2, 256), (4, 256)):
        domain = EnlargedMnist(scale)
        domain.load()
        k = batch * (28 * scale - 2) ** 2
        errors = gradient_errors(domain, batch, SWEEP_ARMS)
        for arm, layers in errors.items():
            first = layers[next(iter(layers))]
            rows.append({"size": 28 * scale, "batch": batch, "k": k, "arm": arm, **first})
            print(rows[-1], flush=True)
    return rows


def k_sweep_lines(rows):
    arms = list(SWEEP_ARMS)
    lines = ["## Swamping against K: the first convolution's weight gradient (`--k-sweep`)", "",
             "Same CNN and real images, enlarged (nearest neighbour); initial weights, one "
             "batch; every GEMM of the model sums with the arm's accumulator. K = batch x "
             "output pixels of the first convolution. Cells: relative error against FP32 "
             "sums (norm ratio).", "",
             "| image | batch | K | " + " | ".join(arms) + " |", "|---|---|---|" + "---|" * len(arms)]
    for key in sorted({(r["size"], r["batch"], r["k"]) for r in rows}, key=lambda t: t[2]):
        cells = {r["arm"]: f"{r['relative_error']:.3f} (x{r['norm_ratio']:.3f})"
                 for r in rows if (r["size"], r["batch"], r["k"]) == key}
        lines.append(f"| {key[0]}x{key[0]} | {key[1]} | {key[2] / 1e6:.2f} M | "
                     + " | ".join(cells[a] for a in arms) + " |")
    return lines + [""]


def write_k_sweep(out):
    command = "python benchmarks/swamping_experiment.py " + " ".join(sys.argv[1:])
    rows = k_sweep()
    lines = ["# Swamping in FP16 accumulation against K, and chunk-based accumulation "
             "(Wang et al. 2018)", "",
             f"`{command}`; {results_io.cpu_model()}, {os.cpu_count()} cores. Workload: the "
             "reproduction suite's MNIST CNN (conv 3x3 16, pool, conv 3x3 32, pool, dense 64, "
             "dense 10) on the bundled sample's training images.", ""] + k_sweep_lines(rows)
    print("\n".join(lines))
    if out:
        results_io.write(os.path.dirname(out), os.path.basename(out), results_io.metadata(),
                         {"k_sweep": rows}, lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=None, help="<dir>/<stem> for .md and .json")
    parser.add_argument("--k-sweep", action="store_true",
                        help="only measure the first layer's gradient error against K")
    args = parser.parse_args()
    if args.k_sweep:
        return write_k_sweep(args.out)
    domain = domains.Mnist(quick=False)
    domain.load()
    command = "python benchmarks/swamping_experiment.py " + " ".join(sys.argv[1:])

    errors = {batch: gradient_errors(domain, batch) for batch in (64, len(domain.train[1]))}
    for batch, rows in errors.items():
        for arm, layers in rows.items():
            print(batch, arm, {k: round(v["relative_error"], 4) for k, v in layers.items()},
                  flush=True)

    accuracy = {}
    for arm, spec in ARMS.items():
        config = claims.Config(arm, spec)
        runs = [training.run_cell(domain, config, seed) for seed in range(args.seeds)]
        accuracy[arm] = {"metrics": [r["metric"] for r in runs],
                         "mean": float(np.mean([r["metric"] for r in runs])),
                         "std": float(np.std([r["metric"] for r in runs])),
                         "seconds": [r["seconds"] for r in runs]}
        print(arm, accuracy[arm], flush=True)

    layers = list(next(iter(errors[64].values())))
    lines = [
        "# Swamping in FP16 accumulation, and chunk-based accumulation (Wang et al. 2018)",
        "",
        f"`{command}`; {results_io.cpu_model()}, {os.cpu_count()} cores (shared machine). "
        f"Workload: {domain.title}; {domain.detail()}. Every GEMM (forward, dX, dW) sums "
        "with the accumulator of the row; operands and everything else FP32.",
        "",
        "## Weight-gradient error against FP32 sums (same weights, one batch)",
        "",
        "| batch | accumulator | " + " | ".join(layers) + " |",
        "|---|---|" + "---|" * len(layers),
    ]
    for batch, rows in errors.items():
        for arm, values in rows.items():
            cells = [f"{values[k]['relative_error']:.2e} (norm x{values[k]['norm_ratio']:.3f})"
                     for k in layers]
            lines.append(f"| {batch} | {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: relative error ||g - g_fp32|| / ||g_fp32|| (norm ratio ||g|| / "
              "||g_fp32||).", "",
              f"## Test accuracy (%), {args.seeds} seeds", "",
              "| accumulator | mean ± std | runs | s/run |", "|---|---|---|---|"]
    for arm, values in accuracy.items():
        lines.append(f"| {arm} | {values['mean']:.2f} ± {values['std']:.2f} | "
                     f"{', '.join(f'{m:.1f}' for m in values['metrics'])} | "
                     f"{np.mean(values['seconds']):.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        results_io.write(os.path.dirname(args.out), os.path.basename(args.out),
                         results_io.metadata(), {"gradient_errors": {str(k): v for k, v in
                                                                     errors.items()},
                                                 "accuracy": accuracy}, lines)


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"{time.perf_counter() - start:.0f} s")
