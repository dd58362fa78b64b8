"""The direct DFP16 depthwise kernels against the grouped-GEMM path and FP32.

One depthwise 3x3 convolution (SAME, stride 1, multiplier 1) of x [batch, H,
W, C], forward and backward (d(x) and d(filters) of sum(y * dy)), in a
`tf.function`, three ways:

* direct: `lp.dfp_conv2d(x, w, groups=C)`, which runs the direct INT16
  depthwise ops (LowprecDfpDepthwiseConv2d, its filter gradient) in each
  tier (`--isa`);
* im2col: the grouped INT16 GEMM path it replaced (`conv2d_as_gemm` on
  `dfp_matmul`: patches extracted, one batched GEMM over the channels, d(x)
  summed back by col2im in FP32);
* fp32: `tf.nn.depthwise_conv2d` and its TensorFlow gradients.

The variants are interleaved (one call of each per round); reported per call:
the median process CPU time (user + system, all threads) and the fastest
wall time.  On a shared machine the CPU time is the steadier figure.

    python benchmarks/bench_dfp_depthwise.py --rounds 15
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_lowprec as lp  # noqa: E402
from tf_lowprec.gemm import common as gemm_common  # noqa: E402


def _cpu_seconds():
    return time.process_time()  # all threads of the process, nanosecond clock


def step_functions(x, w, dy, isas):
    channels = x.shape[-1]

    def grads(conv):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                loss = tf.reduce_sum(conv(x, w) * dy)
            return tape.gradient(loss, [x, w])
        return step

    out = {}
    for isa in isas:
        out[f"direct ({isa})"] = grads(
            lambda a, b, isa=isa: lp.dfp_conv2d(a, b, 1, "SAME", groups=channels, isa=isa))
    out["im2col grouped GEMM"] = grads(lambda a, b: gemm_common.conv2d_as_gemm(
        lambda p, q: lp.dfp_matmul(p, q), a, b, (1, 1), "SAME", (1, 1), groups=channels))
    out["fp32 tf.nn.depthwise_conv2d"] = grads(lambda a, b: tf.nn.depthwise_conv2d(
        a, tf.reshape(b, [3, 3, channels, 1]), [1, 1, 1, 1], "SAME"))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--isa", nargs="+", default=["auto"])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, args.channels)
    x = tf.constant(rng.standard_normal(shape).astype(np.float32))
    w = tf.constant((rng.standard_normal((3, 3, 1, args.channels)) * 0.3).astype(np.float32))
    dy = tf.constant((rng.standard_normal(shape) * 1e-3).astype(np.float32))
    steps = step_functions(x, w, dy, args.isa)
    cpu = {name: [] for name in steps}
    wall = {name: [] for name in steps}
    for step in steps.values():  # trace and warm up
        step()
        step()
    for _ in range(args.rounds):
        for name, step in steps.items():
            c0, t0 = _cpu_seconds(), time.perf_counter()
            [v.numpy() for v in step()]
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(_cpu_seconds() - c0)
    print(f"depthwise 3x3 SAME, x {list(shape)}, multiplier 1, forward + d(x) + d(filters); "
          f"{args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f}")
    base = np.median(cpu["im2col grouped GEMM"])
    fp32 = np.median(cpu["fp32 tf.nn.depthwise_conv2d"])
    print("| variant | CPU ms / step (median) | wall ms (fastest) | CPU vs im2col | CPU vs FP32 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in steps:
        c = np.median(cpu[name])
        print(f"| {name} | {1e3 * c:.2f} | {1e3 * min(wall[name]):.2f} | {c / base:.2f}x | "
              f"{c / fp32:.2f}x |")


if __name__ == "__main__":
    main()
