"""The DFP16 filter gradient's two GEMM orientations against each other and TF FP32.

`LowprecDfpConv2dBackpropFilter` with `gemm_a='patches'` (patches(x)^T @ dy) and
`gemm_a='dy'` ((dy^T @ patches(x))^T), and `Conv2DBackpropFilter`, interleaved in
one process for several layer shapes (3x3 VALID filters; x ReLU-like, dy ~ N(0,
1e-3)): per shape, the fastest and median wall time and the median process CPU
time per call (rounds of `--calls` calls each), and which orientation `gemm_a='auto'`
takes (the op's rule, docs/dfp_gemm.md).  Results:
benchmarks/results/dfp16_conv_dfilters_orientation.md.

    python benchmarks/bench_dfp_conv_dfilters_orientation.py --rounds 10
    python benchmarks/bench_dfp_conv_dfilters_orientation.py --isa avx2 --shapes conv1,conv2
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_lowprec._op_library import load as load_ops  # noqa: E402

# name: (x shape, filter shape)
SHAPES = {
    "conv1": ((64, 28, 28, 1), (3, 3, 1, 32)),  # bench_policies.py's CNN
    "conv2": ((64, 26, 26, 32), (3, 3, 32, 64)),
    "c3x16": ((64, 26, 26, 3), (3, 3, 3, 16)),
    "c16x32": ((64, 26, 26, 16), (3, 3, 16, 32)),
    "c64x4": ((32, 14, 14, 64), (3, 3, 64, 4)),
    "c256x8": ((32, 14, 14, 256), (3, 3, 256, 8)),
}


def auto_choice(columns, channels_out):
    """The op's 'auto' rule (dfp_conv_kernels.cc PatchesAsA), for the table."""
    def up(n, w):
        return -(-n // w) * w

    def tile(n):
        return up(n, 48) if n > 256 else min(up(n, 32), up(n, 48), up(n, 64))

    patches, dy = up(columns, 6) * tile(channels_out), up(channels_out, 6) * tile(columns)
    return ("dy" if 2 * dy < patches else "patches"), dy / patches


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10, help="calls per timed round")
    parser.add_argument("--isa", default="auto", choices=["auto", "portable", "avx2", "avx512"])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    ops = load_ops()
    rng = np.random.default_rng(0)
    print(f"isa {args.isa}; {args.rounds} rounds of {args.calls} calls")
    print("| shape (columns x O) | side | wall ms min | wall ms median | CPU ms median |")
    print("|---|---|---|---|---|")
    for name in args.shapes.split(","):
        xs, ws = SHAPES[name]
        x = tf.constant(np.maximum(rng.standard_normal(xs), 0).astype(np.float32))
        ys = (xs[0], xs[1] - ws[0] + 1, xs[2] - ws[1] + 1, ws[3])
        dy = tf.constant((rng.standard_normal(ys) * 1e-3).astype(np.float32))
        sides = {
            gemm_a: tf.function(lambda gemm_a=gemm_a, x=x, dy=dy: ops.lowprec_dfp_conv2d_backprop_filter(
                x, dy, filter_size=list(ws[:2]), gemm_a=gemm_a, isa=args.isa)[0])
            for gemm_a in ("patches", "dy")}
        sides["tf fp32"] = tf.function(lambda x=x, dy=dy: tf.compat.v1.nn.conv2d_backprop_filter(
            x, list(ws), dy, [1, 1, 1, 1], "VALID"))
        for f in sides.values():
            f()
        times = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, f in sides.items():
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.calls):
                    f().numpy()
                times[side].append(((time.perf_counter() - wall) / args.calls,
                                    (time.process_time() - cpu) / args.calls))
        columns = ws[0] * ws[1] * ws[2]
        choice, ratio = auto_choice(columns, ws[3])
        for side in sides:
            t = np.array(times[side]) * 1e3
            label = f"{name} ({columns} x {ws[3]}; auto: {choice}, dy/patches MACs {ratio:.2f})"
            print(f"| {label} | {side} | {t[:, 0].min():.2f} | {np.median(t[:, 0]):.2f} "
                  f"| {np.median(t[:, 1]):.2f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
