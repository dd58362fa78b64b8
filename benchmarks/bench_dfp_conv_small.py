"""One few-channel convolution forward, LowprecDfpConv2d or tf.nn.conv2d, alone.

The first layer of `bench_policies.py`'s CNN (batch 64, 28x28x1 -> 32, 3x3,
VALID) by default, or an RGB-like layer with `--channels 3` (32x32x3 -> 32):
the shapes of the few-channel gather paths (docs/dfp_gemm.md, issue 16).
Prints the fastest and the median wall time and the median process CPU time
per call.  `--threads 1` runs the op on one intra-op thread, so the CPU time
is the op's work and not the pool's spinning; run old and new libraries
alternately (PYTHONPATH) on a shared machine.

    python benchmarks/bench_dfp_conv_small.py --threads 1 --calls 300
    python benchmarks/bench_dfp_conv_small.py --channels 3 --fp32
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_lowprec._op_library import load as load_ops  # noqa: E402

SHAPES = {1: ((64, 28, 28, 1), (3, 3, 1, 32)), 3: ((64, 32, 32, 3), (3, 3, 3, 32))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, choices=sorted(SHAPES), default=1)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: TF's)")
    parser.add_argument("--isa", default="auto", help="kernel tier: auto, portable, avx2, avx512")
    parser.add_argument("--fp32", action="store_true", help="time tf.nn.conv2d instead")
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    ops = load_ops()
    xs, ws = SHAPES[args.channels]
    rng = np.random.default_rng(0)
    x = tf.constant(np.maximum(rng.standard_normal(xs), 0).astype(np.float32))  # ReLU-like
    w = tf.constant((rng.standard_normal(ws) * 0.1).astype(np.float32))
    if args.fp32:
        f = tf.function(lambda: tf.nn.conv2d(x, w, 1, "VALID"))
    else:
        f = tf.function(lambda: ops.lowprec_dfp_conv2d(x, w, isa=args.isa)[0])
    f()  # tracing
    walls, cpus = [], []
    for _ in range(args.calls):
        wall, cpu = time.perf_counter(), time.process_time()
        f().numpy()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    print(f"{'fp32' if args.fp32 else 'dfp16 ' + args.isa} C={args.channels}: wall min "
          f"{min(walls) * 1e3:.3f} ms, median {np.median(walls) * 1e3:.3f} ms; CPU median "
          f"{np.median(cpus) * 1e3:.3f} ms; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
