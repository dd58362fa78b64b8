"""Das et al.'s throughput claim, measured: our INT16 GEMM against FP32 matmul.

For square GEMMs of a few sizes, the median time (interleaved repetitions, so
a shared machine's load hits all alike) of

  fp32      tf.linalg.matmul on float32 (oneDNN, AVX-512)
  dfp16     lp.dfp_matmul on float32: DFP16 quantization of both operands,
            packing to INT16, the INT16 x INT16 -> INT32 GEMM, FP32 output
  int16     the INT16 GEMM alone on operands already in DFP form

reported as GOP/s (2mnk operations) and as speed-ups over FP32.
"""

import os
import statistics
import time

import numpy as np
import tensorflow as tf

import tf_lowprec as lp
from tf_lowprec.gemm import dfp as dfp_gemm

SIZES = (256, 512, 1024, 2048)
QUICK_SIZES = (128, 256)


def _timer(fn, args):
    # The functions are traced with autograph=False: autograph re-reads the
    # source of what it converts, which breaks if the file changed on disk
    # during a long run; nothing here needs Python control flow converted.
    def once():
        start = time.perf_counter()
        out = fn(*args)
        out = out[0] if isinstance(out, tuple) else out
        out.numpy()
        return time.perf_counter() - start

    once()  # trace and warm up
    once()
    return once


def measure(size, reps):
    """GOP/s of each kernel for one square size."""
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((size, size)).astype(np.float32))
    b = tf.constant((rng.standard_normal((size, size)) * 0.05).astype(np.float32))
    aq, ea = dfp_gemm.quantize_operand(a, lp.DFP16, -1)
    bq, eb = dfp_gemm.quantize_operand(b, lp.DFP16, -2)
    timers = {
        "fp32": _timer(tf.function(tf.linalg.matmul, autograph=False), (a, b)),
        "dfp16": _timer(tf.function(lambda x, y: lp.dfp_matmul(x, y), autograph=False), (a, b)),
        "int16": _timer(tf.function(
            lambda x, ex, y, ey: dfp_gemm.gemm_quantized(x, ex, y, ey, lp.DFP16),
            autograph=False), (aq, ea, bq, eb)),
    }
    times = {name: [] for name in timers}
    for _ in range(reps):
        for name, once in timers.items():
            times[name].append(once())
    ops = 2.0 * size**3
    gops = {name: ops / statistics.median(t) / 1e9 for name, t in times.items()}
    return {"size": size, "reps": reps, "gops": gops,
            "dfp16_speedup": gops["dfp16"] / gops["fp32"],
            "int16_speedup": gops["int16"] / gops["fp32"]}


def run(quick, log):
    rows = []
    for size in QUICK_SIZES if quick else SIZES:
        reps = 3 if quick else int(min(15, max(5, 2e10 / (2.0 * size**3))))
        row = measure(size, reps)
        rows.append(row)
        g = row["gops"]
        log(f"  gemm {size:>5}^3  fp32 {g['fp32']:7.1f}  dfp16 {g['dfp16']:7.1f}  int16 "
            f"{g['int16']:7.1f} GOP/s   dfp16/fp32 {row['dfp16_speedup']:.2f}  int16/fp32 "
            f"{row['int16_speedup']:.2f}")
    return {"rows": rows, "threads": os.cpu_count(), "load_average": os.getloadavg()[0]}
