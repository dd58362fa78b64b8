"""Throughput of bf16_matmul against TF's FP32 and BF16 MatMul.

One run measures, for each shape, interleaved (so that the load of a shared
machine hits all alike), the median time of:
  fp32         tf.linalg.matmul on float32 inputs (oneDNN)
  tf_bf16      tf.linalg.matmul on bfloat16 inputs (cast beforehand, not
               timed; BF16 output, oneDNN's summation order)
  bf16_matmul  lp.bf16_matmul on float32 inputs: rounding of both operands,
               packing, the GEMM of the kernel tier chosen by --isa (default
               "auto": VDPBF16PS with AVX512_BF16, else the AVX2 FMA kernel),
               FP32 output
GOP/s counts 2*m*n*k operations per second of wall time, and per second of
this process's CPU time (all threads; steadier when other processes load the
machine).  GEMMs under 0.1 GOP run CHAIN times in a row inside one
tf.function (each input depending on the previous output), so that the
per-call cost of tf.function and .numpy() does not swamp them.  Results go
to benchmarks/results/bf16_gemm.{json,md}.

    python benchmarks/bench_bf16_gemm.py            # all shapes (~1 min)
    python benchmarks/bench_bf16_gemm.py --quick    # 512^3 and 2048^3 only
    python benchmarks/bench_bf16_gemm.py --rounds 3 --out benchmarks/results/avx2_zen3
The CPU model and the kernel tier that ran are recorded with the results.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results_io  # noqa: E402

import tf_lowprec as lp  # noqa: E402

SQUARE = [256, 512, 1024, 2048]
# (m, k, n, transpose_a, transpose_b) of the GEMMs of small models: an MLP on
# MNIST (batch 128), a CNN's 3x3 convolutions as im2col GEMMs (batch 32), an
# LSTM step (batch 32, input and state 128, four gates); forward, and the two
# backward GEMMs of the larger layers (d input = dy W^T, d W = x^T dy).
LAYERS = {
    "mlp dense 784->256": (128, 784, 256, False, False),
    "  backward d input": (128, 256, 784, False, True),
    "  backward d weights": (784, 128, 256, True, False),
    "mlp dense 256->10": (128, 256, 10, False, False),
    "conv 3x3x32->64 (32x32)": (32768, 288, 64, False, False),
    "  backward d patches": (32768, 64, 288, False, True),
    "  backward d filters": (288, 32768, 64, True, False),
    "conv 3x3x64->128 (16x16)": (8192, 576, 128, False, False),
    "lstm step (128+128)->4x128": (32, 256, 512, False, False),
}


CHAIN = 10
SMALL_OPS = 1e8


def _chained(matmul, times):
    """matmul applied `times` times in a row, each a depending on the last output."""

    def run(x, y):
        out = matmul(x, y)
        for _ in range(times - 1):
            out = matmul(x + 0.0 * out[0, 0], y)
        return out

    return run


def _timer(fn, args):
    fn(*args)  # trace and warm up
    fn(*args)

    def once():
        t, c = time.perf_counter(), time.process_time()
        fn(*args).numpy()
        return time.perf_counter() - t, time.process_time() - c

    return once



def measure(m, k, n, ta, tb, reps, isa):
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32))
    b = tf.constant((rng.standard_normal((n, k) if tb else (k, n)) * 0.05).astype(np.float32))
    a16, b16 = tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16)
    chain = CHAIN if 2.0 * m * n * k < SMALL_OPS else 1
    matmul = tf.function(_chained(
        lambda x, y: tf.linalg.matmul(x, y, transpose_a=ta, transpose_b=tb), chain))
    ours = tf.function(_chained(
        lambda x, y: lp.bf16_matmul(x, y, transpose_a=ta, transpose_b=tb, isa=isa), chain))
    timers = {
        "fp32": _timer(matmul, (a, b)),
        "tf_bf16": _timer(matmul, (a16, b16)),
        "bf16_matmul": _timer(ours, (a, b)),
    }
    times = {name: [] for name in timers}
    for _ in range(reps):
        for name, once in timers.items():
            times[name].append(once())
    ops = 2.0 * m * n * k * chain
    result = {name: ops / statistics.median(w for w, _ in t) / 1e9 for name, t in times.items()}
    result["chain"] = chain
    for name, t in times.items():
        result[name + "_per_cpu_s"] = ops / max(statistics.median(c for _, c in t), 1e-9) / 1e9
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512^3 and 2048^3 only")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the whole measurement; figures are medians over rounds")
    parser.add_argument("--isa", default="auto", choices=("auto", "portable", "avx2", "avx512"),
                        help="kernel tier of bf16_matmul (default: the fastest this CPU runs)")
    args = parser.parse_args()
    shapes = {f"{s}^3": (s, s, s, False, False) for s in ([512, 2048] if args.quick else SQUARE)}
    if not args.quick:
        shapes.update(LAYERS)
    rounds = {label: [] for label in shapes}
    for round_index in range(args.rounds):
        for label, (m, k, n, ta, tb) in shapes.items():
            ops = 2.0 * m * n * k
            reps = int(min(40, max(5, 4e10 / ops)))
            r = measure(m, k, n, ta, tb, reps, args.isa)
            op = ("a^T" if ta else "a") + " @ " + ("b^T" if tb else "b")
            r.update(shape=label, m=m, k=k, n=n, op=op, reps=reps)
            r["vs_fp32"] = r["bf16_matmul"] / r["fp32"]
            r["vs_tf_bf16"] = r["bf16_matmul"] / r["tf_bf16"]
            r["vs_fp32_per_cpu_s"] = r["bf16_matmul_per_cpu_s"] / r["fp32_per_cpu_s"]
            rounds[label].append(r)
            print(f"{label:>28} {op:>9}  fp32 {r['fp32']:6.1f}  tf_bf16 {r['tf_bf16']:6.1f}  "
                  f"bf16_matmul {r['bf16_matmul']:6.1f} GOP/s   vs fp32 {r['vs_fp32']:.2f}  "
                  f"(per CPU-s {r['vs_fp32_per_cpu_s']:.2f})  [round {round_index + 1}]",
                  flush=True)
    # Per shape, the median over rounds of every figure (each round's figure
    # itself a median of interleaved repeats); the rounds' ratios are kept.
    rows = []
    for label, results in rounds.items():
        row = dict(results[0])
        for key, value in results[0].items():
            if isinstance(value, float):
                row[key] = statistics.median(r[key] for r in results)
        row["rounds"] = len(results)
        row["vs_fp32_rounds"] = [r["vs_fp32"] for r in results]
        rows.append(row)
    tiers = lp.kernel_tiers()["bf16_gemm"]
    tier = tiers["auto"] if args.isa == "auto" else args.isa
    meta = results_io.metadata(tensorflow=tf.__version__, kernel_tier=tier,
                               load_average_at_end=os.getloadavg()[0])
    lines = [
        "# bf16_matmul throughput (GOP/s, median of interleaved runs)",
        "",
        f"Command: `{meta['command']}` ({meta['date']}; TensorFlow {tf.__version__}, "
        f"{os.cpu_count()} CPUs; load average at the end {meta['load_average_at_end']:.1f}, "
        "shared machine).",
        "",
        f"CPU: {meta['cpu']}; bf16_matmul kernel tier: `{tier}` (available: "
        f"{', '.join(tiers['available'])}).",
        "",
        "bf16_matmul includes rounding both float32 operands to BF16 and packing them; "
        "tf_bf16 is `tf.linalg.matmul` on bfloat16 tensors cast beforehand (its output is "
        "BF16 and its summation order oneDNN's).  GOP = 2 m n k / 1e9.  The last column is "
        "the bf16_matmul / fp32 ratio of GOP per CPU-second of the process.  GEMMs under "
        f"0.1 GOP run {CHAIN} times in a row in one tf.function (column 'chain').  "
        f"{args.rounds} round(s) of the whole measurement: every figure is the median over "
        "rounds; the last column lists each round's vs fp32.",
        "",
        "| shape | m | k | n | op | chain | fp32 | tf_bf16 | bf16_matmul | vs fp32 | vs tf_bf16 "
        "| vs fp32 per CPU-s | vs fp32 per round |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['m']} | {r['k']} | {r['n']} | {r['op']} | {r['chain']} | "
            f"{r['fp32']:.1f} | "
            f"{r['tf_bf16']:.1f} | {r['bf16_matmul']:.1f} | {r['vs_fp32']:.2f} | "
            f"{r['vs_tf_bf16']:.2f} | {r['vs_fp32_per_cpu_s']:.2f} | "
            f"{', '.join(f'{v:.2f}' for v in r['vs_fp32_rounds'])} |")
    results_io.write(args.out, "bf16_gemm_quick" if args.quick else "bf16_gemm", meta, rows,
                     lines)


if __name__ == "__main__":
    main()
