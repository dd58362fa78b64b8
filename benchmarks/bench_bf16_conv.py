"""The implicit-GEMM BF16 convolution ops against the im2col path and TensorFlow's FP32 ops.

For the two Conv2D layers of `bench_policies.py`'s CNN (batch 64, 28x28x1 ->
32 -> 64 channels, 3x3, VALID), times the three passes of each layer three
ways: the implicit BF16 GEMMs (`LowprecBf16Conv2d`,
`LowprecBf16Conv2dBackpropFilter`, and `LowprecBf16Conv2d` of the dilated
error with the flipped filters for d(x)), the im2col path `bf16_conv2d` took
before them (`bf16_matmul` on the materialized patches; d(x) =
`bf16_matmul(dy, W^T)` then col2im by ExtractImagePatches' gradient), and
TensorFlow's FP32 ops (Conv2D, Conv2DBackpropFilter, Conv2DBackpropInput).
Each runs in a `tf.function`; the variants are interleaved (one call of each
per round) and both the fastest wall time and the process CPU time per call
(user + system, all threads; the median over the rounds) are reported: on a
loaded machine the CPU time is the steadier figure.

    python benchmarks/bench_bf16_conv.py --rounds 15
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_lowprec as lp  # noqa: E402
from tf_lowprec._op_library import load as load_ops  # noqa: E402
from tf_lowprec.gemm import common as gemm_common  # noqa: E402

LAYERS = {"conv1": ((64, 28, 28, 1), (3, 3, 1, 32)), "conv2": ((64, 26, 26, 32), (3, 3, 32, 64))}
VARIANTS = ("implicit", "im2col", "fp32")


def _im2col_passes(x, w, dy):
    """(forward, d(filters), d(x)) of the im2col path, as functions without arguments."""
    kh, kw, cin, cout = w.shape

    def patches(v):
        return gemm_common.image_patches(v, kh, kw, (1, 1), "VALID", (1, 1))

    def forward():
        return gemm_common.conv2d_as_gemm(lp.bf16_matmul, x, w, (1, 1), "VALID", (1, 1))

    def filters():
        columns = tf.reshape(patches(x), [-1, kh * kw * cin])
        return lp.bf16_matmul(columns, tf.reshape(dy, [-1, cout]), transpose_a=True)

    def inputs():
        dcols = lp.bf16_matmul(tf.reshape(dy, [-1, cout]), tf.reshape(w, [-1, cout]),
                               transpose_b=True)
        with tf.GradientTape() as tape:
            tape.watch(x)
            p = patches(x)
        return tape.gradient(p, x, output_gradients=tf.reshape(dcols, tf.shape(p)))

    return forward, filters, inputs


def cases():
    ops = load_ops()
    rng = np.random.default_rng(0)
    out = []
    for name, (xs, ws) in LAYERS.items():
        x = tf.constant(np.maximum(rng.standard_normal(xs), 0).astype(np.float32))  # ReLU-like
        w = tf.constant((rng.standard_normal(ws) * 0.1).astype(np.float32))
        ys = (xs[0], xs[1] - ws[0] + 1, xs[2] - ws[1] + 1, ws[3])
        dy = tf.constant((rng.standard_normal(ys) * 1e-3).astype(np.float32))
        flipped = tf.transpose(tf.reverse(w, [0, 1]), [0, 1, 3, 2])
        pads = [ws[0] - 1, ws[0] - 1, ws[1] - 1, ws[1] - 1]
        strides = [1, 1, 1, 1]
        forward, filters, inputs = _im2col_passes(x, w, dy)
        out += [
            (f"{name} forward", (
                lambda x=x, w=w: ops.lowprec_bf16_conv2d(x, w),
                forward,
                lambda x=x, w=w: tf.nn.conv2d(x, w, 1, "VALID"))),
            (f"{name} d(filters)", (
                lambda x=x, dy=dy, k=ws[:2]: ops.lowprec_bf16_conv2d_backprop_filter(
                    x, dy, filter_size=list(k)),
                filters,
                lambda x=x, dy=dy, ws=ws: tf.compat.v1.nn.conv2d_backprop_filter(
                    x, list(ws), dy, strides, "VALID"))),
            (f"{name} d(x)", (
                lambda dy=dy, f=flipped, p=pads: ops.lowprec_bf16_conv2d(dy, f, pads=p),
                inputs,
                lambda xs=xs, w=w, dy=dy: tf.compat.v1.nn.conv2d_backprop_input(
                    list(xs), w, dy, strides, "VALID"))),
        ]
    return [(name, [tf.function(f) for f in fs]) for name, fs in out]


def timed(f):
    wall, cpu = time.perf_counter(), time.process_time()
    f().numpy()
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    runs = cases()
    for _, fs in runs:  # tracing
        for f in fs:
            f()
    times = {(name, v): [] for name, _ in runs for v in VARIANTS}
    for _ in range(args.rounds):
        for name, fs in runs:
            for v, f in zip(VARIANTS, fs):
                times[(name, v)].append(timed(f))
    print(f"load average {os.getloadavg()[0]:.1f} at the end; {args.rounds} interleaved rounds; "
          f"bf16_gemm tier {lp.kernel_tiers()['bf16_gemm']['auto']}")
    print("| pass | implicit wall ms (min) | im2col wall ms (min) | fp32 wall ms (min) "
          "| implicit CPU ms (median) | im2col CPU ms (median) | fp32 CPU ms (median) "
          "| implicit / fp32 (CPU) | im2col / fp32 (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, _ in runs:
        t = {v: np.array(times[(name, v)]) * 1e3 for v in VARIANTS}
        wall = {v: t[v][:, 0].min() for v in VARIANTS}
        cpu = {v: np.median(t[v][:, 1]) for v in VARIANTS}
        print(f"| {name} | {wall['implicit']:.1f} | {wall['im2col']:.1f} | {wall['fp32']:.1f} "
              f"| {cpu['implicit']:.1f} | {cpu['im2col']:.1f} | {cpu['fp32']:.1f} "
              f"| {cpu['implicit'] / cpu['fp32']:.2f}x | {cpu['im2col'] / cpu['fp32']:.2f}x |")


if __name__ == "__main__":
    main()
