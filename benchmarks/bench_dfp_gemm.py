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
machine).  With --register-peak the run also compiles and runs
benchmarks/avx2_register_peak.cc (vpmaddwd + vpaddd and FP32 FMA on ymm
registers only, 12 accumulators) and reports dfp16 as a fraction of that
peak on all cores.  Results go to <out>/dfp_gemm.{json,md} with the
command, the CPU model and the kernel tier.

    python benchmarks/bench_dfp_gemm.py            # all shapes
    python benchmarks/bench_dfp_gemm.py --quick    # 512 and 2048 only
    python benchmarks/bench_dfp_gemm.py --register-peak --out benchmarks/results/avx2_zen3
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import dfp as dfp_gemm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results_io  # noqa: E402  (benchmarks/results_io.py, beside this script)

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


def measure(m, k, n, reps, isa):
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((m, k)).astype(np.float32))
    b = tf.constant((rng.standard_normal((k, n)) * 0.05).astype(np.float32))
    a16, b16 = tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16)
    aq, ea = dfp_gemm.quantize_operand(a, lp.DFP16, -1)
    bq, eb = dfp_gemm.quantize_operand(b, lp.DFP16, -2)
    matmul = tf.function(tf.linalg.matmul)
    dfp = tf.function(lambda x, y: lp.dfp_matmul(x, y, isa=isa))
    gemm_only = tf.function(
        lambda x, ex, y, ey: dfp_gemm.gemm_quantized(x, ex, y, ey, lp.DFP16, isa=isa))
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



def register_peak():
    """Compiles and runs benchmarks/avx2_register_peak.cc on 1 and all CPUs;
    {threads: {int16_wall, int16_cpu, fp32_wall, fp32_cpu}} in GOP/s."""
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "avx2_register_peak.cc")
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "avx2_register_peak")
        subprocess.run([os.environ.get("CXX", "g++"), "-O3", "-mavx2", "-mfma", "-pthread",
                        source, "-o", binary], check=True)
        text = subprocess.run([binary, "1", str(os.cpu_count())], check=True,
                              capture_output=True, text=True).stdout
    peak = {}
    for line in text.splitlines():
        numbers = re.findall(r"[0-9.]+", line)
        if len(numbers) == 5 and line.strip()[0].isdigit():
            threads, *rates = numbers
            peak[int(threads)] = dict(zip(("int16_wall", "int16_cpu", "fp32_wall", "fp32_cpu"),
                                          map(float, rates)))
    return peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512^3 and 2048^3 only")
    parser.add_argument("--isa", default="auto", help="kernel tier of dfp16 and dfp_gemm")
    parser.add_argument("--register-peak", action="store_true",
                        help="also measure the vpmaddwd / FMA register peak (x86-64, g++)")
    parser.add_argument("--reps", type=int, default=0,
                        help="repeats per shape (default: 3 to 15, by size)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    tier = lp.kernel_tiers()["dfp_gemm"]["auto"] if args.isa == "auto" else args.isa
    shapes = {f"{s}^3": (s, s, s) for s in ([512, 2048] if args.quick else SQUARE)}
    if not args.quick:
        shapes.update(CNN)
    peak = register_peak() if args.register_peak else None
    all_cores = os.cpu_count()
    if peak:
        print("register peak (GOP/s; per wall s / per CPU s): " + ", ".join(
            f"{n} threads: int16 {p['int16_wall']:.1f} / {p['int16_cpu']:.1f}, "
            f"fp32 {p['fp32_wall']:.1f} / {p['fp32_cpu']:.1f}" for n, p in peak.items()),
            flush=True)
    lp.dfp_gemm_counters(reset=True)
    rows = []
    for label, (m, k, n) in shapes.items():
        ops = 2.0 * m * n * k
        reps = args.reps or int(min(15, max(3, 4e10 / ops)))
        r = measure(m, k, n, reps, args.isa)
        r.update(shape=label, m=m, k=k, n=n, reps=reps)
        r["dfp16_vs_fp32"] = r["dfp16"] / r["fp32"]
        r["dfp16_vs_bf16"] = r["dfp16"] / r["bf16"]
        r["dfp16_vs_fp32_per_cpu_s"] = r["dfp16_per_cpu_s"] / r["fp32_per_cpu_s"]
        if peak:
            # Against the peak of all cores: wall time against wall time, and
            # per CPU-second against the sum of the per-core CPU-time peaks.
            r["dfp16_of_int16_peak"] = r["dfp16"] / peak[all_cores]["int16_wall"]
            r["dfp16_per_cpu_s_of_int16_peak"] = r["dfp16_per_cpu_s"] / peak[1]["int16_cpu"]
        rows.append(r)
        print(f"{label:>20}  fp32 {r['fp32']:7.1f}  bf16 {r['bf16']:7.1f}  dfp16 {r['dfp16']:7.1f}"
              f"  (gemm only {r['dfp_gemm']:7.1f})  GOP/s   dfp16/fp32 {r['dfp16_vs_fp32']:.2f}"
              f"  per CPU-s: fp32 {r['fp32_per_cpu_s']:.1f} dfp16 {r['dfp16_per_cpu_s']:.1f}"
              f" ({r['dfp16_vs_fp32_per_cpu_s']:.2f})"
              + (f"  of int16 peak {r['dfp16_of_int16_peak']:.2f} (per CPU-s "
                 f"{r['dfp16_per_cpu_s_of_int16_peak']:.2f})" if peak else ""),
              flush=True)
    counters = lp.dfp_gemm_counters()
    meta = results_io.metadata(tier=tier, tensorflow=tf.__version__,
                               load_average_at_end=os.getloadavg()[0], counters=counters,
                               register_peak=peak)
    lines = [
        "# dfp_matmul throughput (GOP/s, median of interleaved runs)",
        "",
        f"`{meta['command']}`, {meta['date']}; {meta['cpu']}, {all_cores} CPUs; dfp_gemm tier "
        f"`{tier}`; TensorFlow {tf.__version__}; load average at the end "
        f"{meta['load_average_at_end']:.1f} (a shared machine when above 0).",
        "",
        "dfp16 includes the DFP16 rounding of both operands (fused into the packing) and "
        "the packing; dfp_gemm is the INT16 GEMM alone, on operands already quantized.  "
        f"Overflow counters over the run: {counters['overflowed']} of {counters['chains']} "
        f"INT32 chains ({counters['recomputed_tiles']} micro-tile chunks recomputed).",
        "",
    ]
    if peak:
        lines += [
            "Register-only peak (benchmarks/avx2_register_peak.cc, 12 accumulators, best of "
            "5), GOP/s per second of wall time / per second of the threads' CPU time:",
            "",
            "| threads | vpmaddwd+vpaddd | FP32 FMA |",
            "|---|---|---|",
        ]
        lines += [f"| {n} | {p['int16_wall']:.1f} / {p['int16_cpu']:.1f} | "
                  f"{p['fp32_wall']:.1f} / {p['fp32_cpu']:.1f} |" for n, p in peak.items()]
        lines += ["", f"\"of peak\": dfp16 wall GOP/s over the {all_cores}-thread wall peak, and "
                  "dfp16 GOP per CPU-second over the 1-thread CPU-time peak (per core).", ""]
    lines += [
        "Wall-time GOP/s; the cpu-s columns are GOP per CPU-second of the process "
        "(fp32, dfp16, their ratio).",
        "",
        "| shape | m | k | n | fp32 | bf16 | dfp16 | dfp_gemm | dfp16/fp32 | dfp16/bf16 "
        "| fp32/cpu-s | dfp16/cpu-s | ratio/cpu-s |" + (" of peak | of peak/cpu-s |" if peak else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if peak else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['m']} | {r['k']} | {r['n']} | {r['fp32']:.1f} | "
            f"{r['bf16']:.1f} | {r['dfp16']:.1f} | {r['dfp_gemm']:.1f} | "
            f"{r['dfp16_vs_fp32']:.2f} | {r['dfp16_vs_bf16']:.2f} | "
            f"{r['fp32_per_cpu_s']:.1f} | {r['dfp16_per_cpu_s']:.1f} | "
            f"{r['dfp16_vs_fp32_per_cpu_s']:.2f} |"
            + (f" {r['dfp16_of_int16_peak']:.2f} | {r['dfp16_per_cpu_s_of_int16_peak']:.2f} |"
               if peak else ""))
    results_io.write(args.out, "dfp_gemm_quick" if args.quick else "dfp_gemm", meta, rows, lines)


if __name__ == "__main__":
    main()
