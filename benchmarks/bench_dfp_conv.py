"""The implicit-GEMM DFP16 convolution ops against TensorFlow's FP32 convolutions.

For the two Conv2D layers of `bench_policies.py`'s CNN (batch 64, 28x28x1 ->
32 -> 64 channels, 3x3, VALID), times the three passes of each layer:
forward (`LowprecDfpConv2d` vs `tf.nn.conv2d`), d(filters)
(`LowprecDfpConv2dBackpropFilter` vs Conv2DBackpropFilter) and d(x)
(`LowprecDfpConv2d` of the dilated error with the flipped filters vs
Conv2DBackpropInput).  Each op runs in a `tf.function`; the ops are
interleaved (one call of each per round) and both the fastest wall time and
the process CPU time per call (user + system, all threads; the median over
the rounds) are reported: on a loaded machine the CPU time is the steadier
figure.

    python benchmarks/bench_dfp_conv.py --rounds 15
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_lowprec._op_library import load as load_ops  # noqa: E402

LAYERS = {"conv1": ((64, 28, 28, 1), (3, 3, 1, 32)), "conv2": ((64, 26, 26, 32), (3, 3, 32, 64))}


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
        out += [
            (f"{name} forward", tf.function(lambda x=x, w=w: ops.lowprec_dfp_conv2d(x, w)[0]),
             tf.function(lambda x=x, w=w: tf.nn.conv2d(x, w, 1, "VALID"))),
            (f"{name} d(filters)",
             tf.function(lambda x=x, dy=dy, k=ws[:2]: ops.lowprec_dfp_conv2d_backprop_filter(
                 x, dy, filter_size=list(k))[0]),
             tf.function(lambda x=x, dy=dy, ws=ws: tf.compat.v1.nn.conv2d_backprop_filter(
                 x, list(ws), dy, strides, "VALID"))),
            (f"{name} d(x)",
             tf.function(lambda dy=dy, f=flipped, p=pads: ops.lowprec_dfp_conv2d(dy, f,
                                                                                  pads=p)[0]),
             tf.function(lambda xs=xs, w=w, dy=dy: tf.compat.v1.nn.conv2d_backprop_input(
                 list(xs), w, dy, strides, "VALID"))),
        ]
    return out


def timed(f):
    wall, cpu = time.perf_counter(), time.process_time()
    f().numpy()
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    runs = cases()
    for _, dfp, fp32 in runs:  # tracing
        dfp()
        fp32()
    times = {(name, side): [] for name, _, _ in runs for side in ("dfp16", "fp32")}
    for _ in range(args.rounds):
        for name, dfp, fp32 in runs:
            times[(name, "dfp16")].append(timed(dfp))
            times[(name, "fp32")].append(timed(fp32))
    print(f"load average {os.getloadavg()[0]:.1f} at the end; {args.rounds} interleaved rounds")
    print("| pass | dfp16 wall ms (min) | fp32 wall ms (min) | ratio | dfp16 CPU ms (median) "
          "| fp32 CPU ms (median) | CPU ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, _, _ in runs:
        d, f = np.array(times[(name, "dfp16")]) * 1e3, np.array(times[(name, "fp32")]) * 1e3
        dw, fw, dc, fc = d[:, 0].min(), f[:, 0].min(), np.median(d[:, 1]), np.median(f[:, 1])
        print(f"| {name} | {dw:.1f} | {fw:.1f} | {dw / fw:.2f}x | {dc:.1f} | {fc:.1f} "
              f"| {dc / fc:.2f}x |")


if __name__ == "__main__":
    main()
