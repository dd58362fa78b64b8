"""dfp_conv3d before / after the implicit GEMMs, against TensorFlow's FP32 conv3d.

For two Conv3D layers (NDHWC, 3x3x3 SAME, stride 1), times a forward pass
and a whole training step (forward, d(x), d(filters) under a GradientTape)
of three versions, each in a `tf.function`:

* `fp32`: `tf.nn.conv3d` and its TF gradients;
* `im2col` (before): the 3-D patch path `dfp_conv3d` ran before the implicit
  GEMMs and still runs for groups > 1 (`tf_lowprec.gemm.conv_nd`: patches
  with TF ops, `lp.dfp_matmul`, col2im in FP32);
* `implicit` (after): `lp.dfp_conv3d` (LowprecDfpConv3d and its
  BackpropFilter op: patches gathered while packing, no col2im).

The versions are interleaved (one call of each per round); the fastest wall
time and the median process CPU time per call (user + system, all threads)
are reported: on a loaded machine the CPU time is the steadier figure.

    python benchmarks/bench_dfp_conv3d.py --rounds 9
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_lowprec as lp  # noqa: E402
from tf_lowprec.gemm import conv_nd  # noqa: E402

# (x [N, D, H, W, C], filters [kd, kh, kw, C, O])
LAYERS = {"conv3d_a": ((8, 16, 16, 16, 8), (3, 3, 3, 8, 16)),
          "conv3d_b": ((8, 8, 8, 8, 16), (3, 3, 3, 16, 32))}
ONES = (1, 1, 1)


def fp32(x, w):
    return tf.nn.conv3d(x, w, (1,) * 5, "SAME")


def im2col(x, w):
    # Stride 1, SAME: every element of x is in a patch, so (as dfp_conv3d's
    # GEMM path does) x and w go to the fused GEMM unquantized.
    return conv_nd.conv_as_gemm(lambda c, k: lp.dfp_matmul(c, k), x, w, ONES, "SAME", ONES)


def implicit(x, w):
    return lp.dfp_conv3d(x, w, ONES, "SAME", ONES)


VERSIONS = {"fp32": fp32, "im2col": im2col, "implicit": implicit}


def step_of(conv, dy):
    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(conv(x, w) * dy)
        return tape.gradient(loss, [x, w])

    return step


def cases():
    rng = np.random.default_rng(0)
    out = []
    for name, (xs, ws) in LAYERS.items():
        x = tf.constant(np.maximum(rng.standard_normal(xs), 0).astype(np.float32))  # ReLU-like
        w = tf.constant((rng.standard_normal(ws) * 0.1).astype(np.float32))
        dy = tf.constant((rng.standard_normal(xs[:-1] + ws[-1:]) * 1e-3).astype(np.float32))
        for kind in ("forward", "step"):
            fns = {}
            for version, conv in VERSIONS.items():
                body = conv if kind == "forward" else step_of(conv, dy)
                fns[version] = (tf.function(body), x, w)
            out.append((f"{name} {kind}", fns))
    return out


def timed(fn, x, w):
    wall, cpu = time.perf_counter(), time.process_time()
    tf.nest.map_structure(lambda t: t.numpy(), fn(x, w))
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", help="also write the figures (ms per call) to this file")
    args = parser.parse_args()
    runs = cases()
    for _, fns in runs:  # tracing
        for fn, x, w in fns.values():
            timed(fn, x, w)
    times = {(name, v): [] for name, _ in runs for v in VERSIONS}
    for _ in range(args.rounds):
        for name, fns in runs:
            for version, (fn, x, w) in fns.items():
                times[(name, version)].append(timed(fn, x, w))
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} at the end; {args.rounds} interleaved rounds")
    print("| case | fp32 wall ms (min) | im2col | implicit | fp32 CPU ms (median) | im2col "
          "| implicit | im2col / fp32 CPU | implicit / fp32 CPU | im2col / implicit CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    figures = {}
    for name, _ in runs:
        t = {v: np.array(times[(name, v)]) * 1e3 for v in VERSIONS}
        wall = {v: float(t[v][:, 0].min()) for v in VERSIONS}
        cpu = {v: float(np.median(t[v][:, 1])) for v in VERSIONS}
        figures[name] = {"wall_ms_min": wall, "cpu_ms_median": cpu}
        print(f"| {name} | {wall['fp32']:.1f} | {wall['im2col']:.1f} | {wall['implicit']:.1f} "
              f"| {cpu['fp32']:.1f} | {cpu['im2col']:.1f} | {cpu['implicit']:.1f} "
              f"| {cpu['im2col'] / cpu['fp32']:.2f}x | {cpu['implicit'] / cpu['fp32']:.2f}x "
              f"| {cpu['im2col'] / cpu['implicit']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"layers": {k: {"x": v[0], "filters": v[1]} for k, v in LAYERS.items()},
                       "rounds": args.rounds, "load_average_at_end": load,
                       "figures": figures}, f, indent=1)


if __name__ == "__main__":
    main()
