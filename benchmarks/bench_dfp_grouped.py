"""Grouped DFP16 convolutions: one implicit INT16 conv a group against the grouped-GEMM path.

One grouped 3x3 convolution (SAME, stride 1) of x [batch, H, W, C] with C
output channels, forward and backward (d(x) and d(filters) of sum(y * dy)),
in a `tf.function`, for each `--groups`, two ways:

* implicit: `tf_lowprec.gemm.dfp_conv.grouped_convolution` (x, the filters
  and the error quantized once as whole tensors, then the implicit
  LowprecDfpConv2d ops on each group's channel slices, outputs concatenated);
* im2col: the batched grouped INT16 GEMM (`lp.dfp_conv2d` with
  `dfp_conv.grouped_applies` forced False: patches extracted, one batched
  GEMM over the groups, d(x) summed back by col2im in FP32).

The variants are interleaved (one call of each per round); reported per call:
the median process CPU time (user + system, all threads) and the fastest
wall time.  `MAX_IMPLICIT_GROUPS` in dfp_conv.py is set from these figures.

    python benchmarks/bench_dfp_grouped.py --groups 2 4 8 16 32 --rounds 11
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_lowprec as lp  # noqa: E402
from tf_lowprec.gemm import dfp_conv  # noqa: E402


def step_function(conv, x, w, dy):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(conv(x, w) * dy)
        return tape.gradient(loss, [x, w])
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--groups", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, args.channels)
    x = tf.constant(rng.standard_normal(shape).astype(np.float32))
    dy = tf.constant((rng.standard_normal(shape) * 1e-3).astype(np.float32))
    steps = {}
    for groups in args.groups:
        w = tf.constant((rng.standard_normal((3, 3, args.channels // groups, args.channels))
                         * 0.3).astype(np.float32))
        steps[(groups, "implicit")] = step_function(
            lambda a, b, g=groups: dfp_conv.grouped_convolution(a, b, g, (1, 1), "SAME",
                                                                (1, 1)), x, w, dy)
        steps[(groups, "im2col")] = step_function(
            lambda a, b, g=groups: lp.dfp_conv2d(a, b, 1, "SAME", groups=g), x, w, dy)
    original = dfp_conv.grouped_applies
    cpu = {key: [] for key in steps}
    wall = {key: [] for key in steps}
    for rnd in range(args.rounds + 2):  # two warm-up rounds (the first traces)
        for key, step in steps.items():
            dfp_conv.grouped_applies = (original if key[1] == "implicit"
                                        else (lambda *a: False))
            c0, t0 = time.process_time(), time.perf_counter()
            [v.numpy() for v in step()]
            if rnd >= 2:
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
    dfp_conv.grouped_applies = original
    print(f"grouped 3x3 SAME, x {list(shape)}, {args.channels} outputs, forward + d(x) + "
          f"d(filters); {args.rounds} interleaved rounds; load average "
          f"{os.getloadavg()[0]:.2f}")
    print("| groups | path | CPU ms / step (median) | wall ms (fastest) | CPU vs im2col |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for groups in args.groups:
        base = np.median(cpu[(groups, "im2col")])
        for path in ("implicit", "im2col"):
            c = np.median(cpu[(groups, path)])
            print(f"| {groups} | {path} | {1e3 * c:.2f} | {1e3 * min(wall[(groups, path)]):.2f}"
                  f" | {c / base:.2f}x |")


if __name__ == "__main__":
    main()
