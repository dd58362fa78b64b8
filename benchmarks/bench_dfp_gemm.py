"""Throughput of dfp_matmul (INT16 DFP16 GEMM) against TF's FP32 and BF16 MatMul.

One run measures, for each shape, interleaved (so that the load of a shared
machine hits all alike), the median time of:
  fp32      tf.linalg.matmul on float32 inputs (oneDNN)
  bf16      tf.linalg.matmul on bfloat16 inputs (cast beforehand, not timed)
  dfp16     lp.dfp_matmul on float32 inputs: the DFP16 rounding of both
            operands (quantize_dfp's nearest_even, fused into the packing),
            packing to INT16, the INT16 GEMM, FP32 output (all conversions)
  dfp_gemm  the INT16 GEMM alone, on operands already quantized
GOP/s counts 2*m*n*k operations, per second of wall time and per second of
this process's CPU time (all threads; steadier when other processes load the
machine).  Results go to benchmarks/results/dfp_gemm.{json,md}.

    python benchmarks/bench_dfp_gemm.py            # all shapes
    python benchmarks/bench_dfp_gemm.py --quick    # 512 and 2048 only
"""

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import dfp as dfp_gemm

SQUARE = [256, 512, 1024, 2048, 4096]
# GEMM shapes (m, k, n) of a small CNN (batch 128, 32x32x3 input): conv 3x3
# layers as im2col GEMMs (forward), and the dense layers.
CNN = {
    "conv1 32x32x3->32": (128 * 32 * 32, 27, 32),
    "conv2 16x16x32->64": (128 * 16 * 16, 288, 64),
    "conv3 8x8x64->128": (128 * 8 * 8, 576, 128),
    "dense 8192->256": (128, 8192, 256),
    "dense 256->10": (128, 256, 10),
}


def _timer(fn, args):
    fn(*args)  # trace and warm up
    fn(*args)

    def once():
        t, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        out = out[0] if isinstance(out, tuple) else out
        out.numpy()
        return time.perf_counter() - t, time.process_time() - c

    return once


def measure(m, k, n, reps):
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((m, k)).astype(np.float32))
    b = tf.constant((rng.standard_normal((k, n)) * 0.05).astype(np.float32))
    a16, b16 = tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16)
    aq, ea = dfp_gemm.quantize_operand(a, lp.DFP16, -1)
    bq, eb = dfp_gemm.quantize_operand(b, lp.DFP16, -2)
    matmul = tf.function(tf.linalg.matmul)
    dfp = tf.function(lambda x, y: lp.dfp_matmul(x, y))
    gemm_only = tf.function(lambda x, ex, y, ey: dfp_gemm.gemm_quantized(x, ex, y, ey, lp.DFP16))
    timers = {
        "fp32": _timer(matmul, (a, b)),
        "bf16": _timer(matmul, (a16, b16)),
        "dfp16": _timer(dfp, (a, b)),
        "dfp_gemm": _timer(gemm_only, (aq, ea, bq, eb)),
    }
    times = {name: [] for name in timers}
    for _ in range(reps):
        for name, once in timers.items():
            times[name].append(once())
    ops = 2.0 * m * n * k
    result = {name: ops / statistics.median(w for w, _ in t) / 1e9 for name, t in times.items()}
    # Per CPU-second of this process (all threads): less sensitive to other
    # processes on a shared machine than wall time.
    for name, t in times.items():
        result[name + "_per_cpu_s"] = ops / statistics.median(c for _, c in t) / 1e9
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512^3 and 2048^3 only")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    shapes = {f"{s}^3": (s, s, s) for s in ([512, 2048] if args.quick else SQUARE)}
    if not args.quick:
        shapes.update(CNN)
    lp.dfp_gemm_counters(reset=True)
    rows = []
    for label, (m, k, n) in shapes.items():
        ops = 2.0 * m * n * k
        reps = int(min(15, max(3, 4e10 / ops)))
        r = measure(m, k, n, reps)
        r.update(shape=label, m=m, k=k, n=n, reps=reps)
        r["dfp16_vs_fp32"] = r["dfp16"] / r["fp32"]
        r["dfp16_vs_bf16"] = r["dfp16"] / r["bf16"]
        r["dfp16_vs_fp32_per_cpu_s"] = r["dfp16_per_cpu_s"] / r["fp32_per_cpu_s"]
        rows.append(r)
        print(f"{label:>20}  fp32 {r['fp32']:7.1f}  bf16 {r['bf16']:7.1f}  dfp16 {r['dfp16']:7.1f}"
              f"  (gemm only {r['dfp_gemm']:7.1f})  GOP/s   dfp16/fp32 {r['dfp16_vs_fp32']:.2f}"
              f"  per CPU-s: fp32 {r['fp32_per_cpu_s']:.1f} dfp16 {r['dfp16_per_cpu_s']:.1f}"
              f" ({r['dfp16_vs_fp32_per_cpu_s']:.2f})",
              flush=True)
    counters = lp.dfp_gemm_counters()
    info = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "load_average_at_end": os.getloadavg(),
        "counters": counters,
        "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    name = "dfp_gemm_quick" if args.quick else "dfp_gemm"
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(info, f, indent=1)
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write("# dfp_matmul throughput (GOP/s, median of interleaved runs)\n\n")
        f.write(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average at the end "
                f"{info['load_average_at_end'][0]:.1f} (shared machine).  dfp16 includes "
                "the DFP16 rounding of both operands (fused into the packing) and the "
                "packing; dfp_gemm is the INT16 GEMM alone, on operands already quantized.  Overflow counters over the run: "
                f"{counters['overflowed']} of {counters['chains']} INT32 chains.\n\n")
        f.write("Wall-time GOP/s; the last three columns are GOP per CPU-second of the "
                "process (fp32, dfp16, their ratio).\n\n")
        f.write("| shape | m | k | n | fp32 | bf16 | dfp16 | dfp_gemm | dfp16/fp32 | dfp16/bf16 "
                "| fp32/cpu-s | dfp16/cpu-s | ratio/cpu-s |\n")
        f.write("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['shape']} | {r['m']} | {r['k']} | {r['n']} | {r['fp32']:.1f} | "
                    f"{r['bf16']:.1f} | {r['dfp16']:.1f} | {r['dfp_gemm']:.1f} | "
                    f"{r['dfp16_vs_fp32']:.2f} | {r['dfp16_vs_bf16']:.2f} | "
                    f"{r['fp32_per_cpu_s']:.1f} | {r['dfp16_per_cpu_s']:.1f} | "
                    f"{r['dfp16_vs_fp32_per_cpu_s']:.2f} |\n")


if __name__ == "__main__":
    main()
