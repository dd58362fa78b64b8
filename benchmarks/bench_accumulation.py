"""Low-precision accumulation (`lp.matmul`) relative to FP32 GEMMs and training steps.

1. GEMM: `lp.matmul` with FP16 sums in chunks of 64 (and variants) against
   `tf.linalg.matmul` in FP32 on the same float32 operands, at 1024^3 (the
   stochastic variant, which runs the exact scalar path, at 256^3 against
   FP32 at 256^3).
2. Training step: the MLP of bench_policies.py under the "fp8_wang" preset
   (E5M2 operands, FP16 chunk-64 accumulation) against FP32, and "fp8"
   (E5M2/E4M3 operands, FP32 accumulation) for comparison.

Modes are interleaved and repeated; the first round is discarded; medians
are reported (the machine may be shared: its load average is recorded).

    python benchmarks/bench_accumulation.py --out benchmarks/results/avx2_zen3/accumulation.md

Targets (issue 18): chunked FP16 GEMM at 1024^3 <= 4x tf.linalg.matmul FP32; an
MLP training step under fp8_wang <= 5x FP32.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_lowprec as lp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_policies  # noqa: E402  (the MLP)
import results_io  # noqa: E402

GEMM_TARGET = 4.0
STEP_TARGET = 5.0


def _time(fn, repeats):
    fn()  # warm up (and trace)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_gemm(size, modes, repeats, isa):
    rng = np.random.default_rng(0)
    a = tf.constant(lp.round_to_format(rng.standard_normal((size, size)).astype(np.float32),
                                       lp.E5M2))
    b = tf.constant(lp.round_to_format(rng.standard_normal((size, size)).astype(np.float32),
                                       lp.E5M2))
    calls = {"fp32 tf.linalg.matmul": lambda: tf.linalg.matmul(a, b).numpy()}
    for label, accumulator in modes.items():
        calls[label] = (lambda acc: lambda: lp.matmul(a, b, accumulator=acc, seed=(1, 2),
                                                      implementation="op", isa=isa).numpy())(
            accumulator)
    times = {label: [] for label in calls}
    cpu = {label: [] for label in calls}
    for label, call in calls.items():
        call()
    for _ in range(repeats):
        for label, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            times[label].append(time.perf_counter() - start)
            cpu[label].append(time.process_time() - start_cpu)
    # CPU time of the process (all threads): less sensitive than wall time to other jobs on a
    # shared machine.
    return ({label: statistics.median(t) for label, t in times.items()},
            {label: statistics.median(t) for label, t in cpu.items()})


def bench_mlp(steps, repeats):
    policies = {"fp32": None, "fp8": lambda: lp.Policy("fp8"),
                "fp8_wang": lambda: lp.Policy("fp8_wang")}
    models = {name: bench_policies._build(bench_policies.mlp, make() if make else None)
              for name, make in policies.items()}
    _, shape, batch = models["fp32"]
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(batch, *shape).astype("float32"))
    y = tf.constant(rng.randint(0, 10, batch))
    times = {name: [] for name in models}
    cpu = {name: [] for name in models}
    for repeat in range(repeats + 1):
        for name, (model, _, _) in models.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                model.train_on_batch(x, y)
            if repeat:
                times[name].append((time.perf_counter() - start) / steps)
                cpu[name].append((time.process_time() - start_cpu) / steps)
    return ({name: statistics.median(t) for name, t in times.items()},
            {name: statistics.median(t) for name, t in cpu.items()})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--small-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--isa", default="auto")
    parser.add_argument("--out")
    args = parser.parse_args()

    big = bench_gemm(args.size, {
        "fp16 chunk 64": lp.Accumulator(lp.FP16, chunk_size=64),
        "fp16 (no chunks)": lp.Accumulator(lp.FP16),
        "bf16 chunk 64": lp.Accumulator(lp.BF16, chunk_size=64),
    }, args.repeats, args.isa)
    small = bench_gemm(args.small_size, {
        "fp16 chunk 64 stochastic": lp.Accumulator(lp.FP16, chunk_size=64,
                                                   rounding="stochastic"),
    }, max(3, args.repeats // 2), args.isa)
    mlp = bench_mlp(args.steps, args.repeats)

    tier = lp.kernel_tiers()["accumulation_gemm"]["auto"] if args.isa == "auto" else args.isa
    lines = [f"# Low-precision accumulation (`lp.matmul`), {results_io.cpu_model()}, "
             f"tier {tier}", "",
             f"GEMM, median of {args.repeats} (interleaved), operands rounded to E5M2; wall "
             "time and CPU time of the process (all threads):", "",
             "| size | mode | ms | ratio to FP32 matmul | CPU ms | CPU ratio |",
             "|---|---|---|---|---|---|"]
    results = {"gemm": {}, "mlp": {}}
    for size, (table, cpu) in ((args.size, big), (args.small_size, small)):
        base, cpu_base = table["fp32 tf.linalg.matmul"], cpu["fp32 tf.linalg.matmul"]
        for label, seconds in table.items():
            ratio, cpu_ratio = seconds / base, cpu[label] / cpu_base
            results["gemm"][f"{size} {label}"] = {"seconds": seconds, "ratio": ratio,
                                                  "cpu_seconds": cpu[label],
                                                  "cpu_ratio": cpu_ratio}
            lines.append(f"| {size}^3 | {label} | {seconds * 1e3:.1f} | {ratio:.2f}x | "
                         f"{cpu[label] * 1e3:.1f} | {cpu_ratio:.2f}x |")
    lines += ["", f"Target: fp16 chunk 64 at {args.size}^3 <= {GEMM_TARGET}x.", "",
              f"MLP training step (bench_policies.py), median of {args.repeats} rounds of "
              f"{args.steps} steps:", "",
              "| policy | ms/step | ratio to FP32 | CPU ms/step | CPU ratio |",
              "|---|---|---|---|---|"]
    mlp, mlp_cpu = mlp
    for name, seconds in mlp.items():
        ratio, cpu_ratio = seconds / mlp["fp32"], mlp_cpu[name] / mlp_cpu["fp32"]
        results["mlp"][name] = {"seconds": seconds, "ratio": ratio,
                                "cpu_seconds": mlp_cpu[name], "cpu_ratio": cpu_ratio}
        lines.append(f"| {name} | {seconds * 1e3:.1f} | {ratio:.2f}x | "
                     f"{mlp_cpu[name] * 1e3:.1f} | {cpu_ratio:.2f}x |")
    lines += ["", f"Target: fp8_wang <= {STEP_TARGET}x."]
    meta = results_io.metadata(isa=args.isa, tier=tier)
    lines += ["", f"Command: `{meta['command']}`; load average {meta['load_average']:.2f}; "
              f"{meta['date']}."]
    print("\n".join(lines))
    if args.out:
        stem = os.path.splitext(os.path.basename(args.out))[0]
        results_io.write(os.path.dirname(args.out), stem, meta, results, lines)


if __name__ == "__main__":
    main()
