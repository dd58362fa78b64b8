"""DFP16 transposed convolutions: implicit GEMMs vs the col2im path vs TF's FP32 op.

Times one forward + backward pass (y, d(x), d(filters) in one `tf.function`
with a GradientTape) of `lp.dfp_conv_transpose` on two paths:

* implicit: what runs now (`tf_lowprec.gemm.dfp_conv.conv_transpose`: three
  implicit INT16 GEMMs on the conv2d ops, or the conv3d ops for 3-D ones);
* col2im: the path before it (still the one of the stock-TF twin), the INT16 GEMM `x @ filters^T` (K = C) then col2im in FP32, and the
  backward GEMMs on the error's patches: reached here by making
  `dfp_conv.transpose_applies` answer False while that function is traced;

against `tf.nn.conv_transpose` in FP32 and its TF gradient; and the forward
pass alone on the three.  The functions
are interleaved (one call of each per round); the fastest wall time and the
median process CPU time per call (user + system, all threads) are reported.

    python benchmarks/bench_dfp_conv_transpose.py --rounds 15
"""

import argparse
import json
import os
import time
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_lowprec as lp  # noqa: E402
from tf_lowprec.gemm import dfp_conv  # noqa: E402

# (x shape, filters [*k, O, C], output spatial, stride, padding): a small image
# decoder's upsampling layers (7 -> 14 -> 28, as a DCGAN generator for 28 x 28
# images), a stride-1 one (the adjoint of bench_dfp_conv.py's conv2), a 1-D one and a
# 3-D one (a volume decoder's upsampling layer, batch 8).
CASES = {
    "2-D 7x7x64 -> 14x14x32, k3 s2 SAME": ((64, 7, 7, 64), (3, 3, 32, 64), (14, 14), 2, "SAME"),
    "2-D 14x14x32 -> 28x28x16, k4 s2 SAME": ((64, 14, 14, 32), (4, 4, 16, 32), (28, 28), 2,
                                             "SAME"),
    "2-D 26x26x64 -> 28x28x32, k3 s1 VALID": ((64, 26, 26, 64), (3, 3, 32, 64), (28, 28), 1,
                                              "VALID"),
    "1-D 64x32 -> 128x16, k5 s2 SAME": ((64, 64, 32), (5, 16, 32), (128,), 2, "SAME"),
    "3-D 4x8x8x32 -> 8x16x16x16, k3 s2 SAME": ((8, 4, 8, 8, 32), (3, 3, 3, 16, 32),
                                               (8, 16, 16), 2, "SAME"),
}


def step(op, x, w, shape, stride, padding, dy, backward=True):
    def run():
        if not backward:
            return [op(x, w, shape, stride, padding)]
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = op(x, w, shape, stride, padding)
        return [y] + tape.gradient(y, [x, w], output_gradients=dy)

    return tf.function(run, autograph=False)


def functions():
    rng = np.random.default_rng(0)
    out = []
    for name, (xs, ws, spatial, stride, padding) in CASES.items():
        x = tf.constant(np.maximum(rng.standard_normal(xs), 0).astype(np.float32))
        w = tf.constant((rng.standard_normal(ws) * 0.1).astype(np.float32))
        shape = [xs[0], *spatial, ws[-2]]
        dy = tf.constant((rng.standard_normal(shape) * 1e-3).astype(np.float32))
        for backward in (True, False):
            args = (x, w, shape, stride, padding, dy, backward)
            implicit = step(lp.dfp_conv_transpose, *args)
            col2im = step(lp.dfp_conv_transpose, *args)
            with mock.patch.object(dfp_conv, "transpose_applies", lambda *a: False):
                col2im.get_concrete_function()  # traced on the path before
            implicit.get_concrete_function()
            fp32 = step(tf.nn.conv_transpose, *args)
            label = f"{name}, {'forward + backward' if backward else 'forward'}"
            out.append((label, {"implicit": implicit, "col2im": col2im, "fp32": fp32}))
    return out


def timed(f):
    wall, cpu = time.perf_counter(), time.process_time()
    [v.numpy() for v in f()]
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    tf.get_logger().setLevel("ERROR")  # (the retracing notice: each case is its own function)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    runs = functions()
    lp.dfp_gemm_counters(reset=True)
    for _, fns in runs:
        for f in fns.values():
            f()
    # Per case, each DFP path: 3 GEMMs (forward, d(x), d(filters)) + 1 (forward alone).
    assert lp.dfp_gemm_counters()["calls"] == 4 * len(runs), lp.dfp_gemm_counters()
    times = {(name, side): [] for name, fns in runs for side in fns}
    for _ in range(args.rounds):
        for name, fns in runs:
            for side, f in fns.items():
                times[(name, side)].append(timed(f))
    load_end = os.getloadavg()[0]
    print(f"load average {load_start:.1f} at the start, {load_end:.1f} at the end; "
          f"{args.rounds} interleaved rounds")
    print("| case, passes | implicit CPU ms | col2im CPU ms | fp32 CPU ms "
          "| implicit / col2im | implicit / fp32 | wall ms min (implicit, col2im, fp32) |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for name, _ in runs:
        t = {side: np.array(times[(name, side)]) * 1e3 for side in ("implicit", "col2im", "fp32")}
        cpu = {side: float(np.median(v[:, 1])) for side, v in t.items()}
        wall = {side: float(v[:, 0].min()) for side, v in t.items()}
        rows[name] = {"cpu_ms_median": cpu, "wall_ms_min": wall}
        print(f"| {name} | {cpu['implicit']:.1f} | {cpu['col2im']:.1f} | {cpu['fp32']:.1f} "
              f"| {cpu['implicit'] / cpu['col2im']:.2f}x | {cpu['implicit'] / cpu['fp32']:.2f}x "
              f"| {', '.join(f'{v:.1f}' for v in wall.values())} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": args.rounds, "load_start": load_start, "load_end": load_end,
                       "kernel_tiers": {op: tiers["auto"] for op, tiers in
                                        lp.kernel_tiers().items() if "auto" in tiers},
                       "cases": rows}, f, indent=1)


if __name__ == "__main__":
    main()
