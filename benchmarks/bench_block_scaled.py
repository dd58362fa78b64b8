"""Throughput of lp.quantize to block-scaled formats (OCP MX, NVFP4) against `x * 1.0`.

One run measures, on one float32 tensor of shape [rows, 4096] (standard
normal values) per size, `x * 1.0` (TensorFlow's memory-bound element-wise
multiply, the reference) and `lp.quantize(x, fmt, rounding, axis=...)` for
each format, axis (-1: blocks along the contiguous last axis; 0: blocks down
the columns) and rounding mode, eagerly, as the median of `--repeats` timed
calls after `--warmup` untimed ones.  The cases take turns call by call
(bench_rounding.py's interleaved order), so that load from other jobs hits
them alike.  The ratio of a case is time(x * 1.0) / time(case): 1.0 is as
fast as `x * 1.0`, higher is faster.  Throughput counts the bytes read plus
written (2 x tensor size; the block scales are not counted).

    python benchmarks/bench_block_scaled.py
    python benchmarks/bench_block_scaled.py --sizes-mb 64 --repeats 9 \\
        --out-dir benchmarks/results/avx2_zen3

Results go to <out-dir>/block_scaled.md and .json (benchmarks/results_io.py),
with the command, the CPU model and the kernel tier that ran.
"""

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import tf_lowprec as lp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results_io  # noqa: E402  (beside this script)
from bench_rounding import time_cases  # noqa: E402

REFERENCE = "x * 1.0"
SEED = (20261207, 17)
COLUMNS = 4096
FORMATS = (lp.MXFP8_E4M3, lp.MXFP4_E2M1, lp.NVFP4)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", default="64",
                        help="tensor sizes in MB (2^20 bytes), comma-separated")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--isa", default="auto", choices=["auto", "portable", "avx2", "avx512"])
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads (0: TensorFlow's default, all cores)")
    parser.add_argument("--out-dir", default=None,
                        help="write block_scaled.md/.json here (default: print only)")
    args = parser.parse_args(argv)
    args.sizes_mb = [float(s) for s in args.sizes_mb.split(",") if s.strip()]
    return args


def cases(x, seed, isa):
    result = [(REFERENCE, lambda: x * 1.0)]
    for fmt in FORMATS:
        for axis in (-1, 0):
            for rounding in ("nearest_even", "stochastic"):
                result.append((
                    f"{fmt.name} axis={axis} {rounding}",
                    lambda fmt=fmt, axis=axis, rounding=rounding: lp.quantize(
                        x, fmt, rounding, axis=axis, seed=seed, isa=isa),
                ))
    return result


def run(args):
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    seed = tf.constant(SEED, tf.int64)
    rng = np.random.default_rng(0)
    rows = []
    for size_mb in args.sizes_mb:
        n = int(size_mb * 2**20) // 4
        x = tf.constant(rng.standard_normal((n // COLUMNS, COLUMNS), dtype=np.float32))
        named = [(name, fn, args.repeats, args.warmup) for name, fn in cases(x, seed, args.isa)]
        measured = time_cases(named, args.repeats, args.warmup)
        for name, seconds in measured.items():
            ratio = measured[REFERENCE] / seconds
            print(f"{size_mb:>6g} MB  {name:<40s} {seconds * 1e3:9.2f} ms  ratio {ratio:5.2f}",
                  flush=True)
            rows.append({"size_mb": size_mb, "shape": list(x.shape), "case": name,
                         "median_ms": seconds * 1e3,
                         "gb_per_s": 2 * 4 * x.shape.num_elements() / seconds / 1e9,
                         "ratio_to_x_times_1": ratio})
        del x
    return rows


def markdown(meta, rows):
    sizes = sorted({r["size_mb"] for r in rows})
    names = list(dict.fromkeys(r["case"] for r in rows))
    table = {(r["case"], r["size_mb"]): r for r in rows}
    lines = ["# Block-scaled quantization throughput (lp.quantize)", ""]
    lines += [f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}"
              for key, value in meta.items()]
    lines += ["", "Ratio = time(`x * 1.0`) / time(case), medians of the interleaved repeats; "
              "higher is faster (issue 17's target for MX formats: >= 0.5 at 64 MB).", "",
              "| case | " + " | ".join(f"ratio {s:g} MB | GB/s | ms" for s in sizes) + " |",
              "|---|" + "---:|---:|---:|" * len(sizes)]
    for name in names:
        cells = []
        for s in sizes:
            r = table[(name, s)]
            cells += [f"{r['ratio_to_x_times_1']:.2f}", f"{r['gb_per_s']:.1f}",
                      f"{r['median_ms']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = run(args)
    meta = results_io.metadata(repeats=args.repeats, warmup=args.warmup, isa=args.isa,
                               intra_op_threads=args.threads or "default (all cores)",
                               statistic="median", order="interleaved",
                               load_average_before=load_before,
                               note="machine shared with other jobs: timings are noisy")
    if args.out_dir:
        results_io.write(args.out_dir, "block_scaled", meta, rows, markdown(meta, rows))
        print(f"wrote {args.out_dir}/block_scaled.md and .json")


if __name__ == "__main__":
    main()
