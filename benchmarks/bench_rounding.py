"""Throughput of the rounding ops against TensorFlow's own memory-bound ops.

One run measures, for each tensor size, every case below on the same float32
tensor (standard normal values), eagerly, as the median of `--repeats` timed
calls after `--warmup` untimed ones.  The cases take turns call by call, so
that a burst of load from other jobs on the machine hits all of them alike
and the ratios stay comparable (`--order interleaved`, the default); with
`--order blocked` each case runs its calls back to back, so its input and
its recycled output buffer stay in cache from one call to the next, which
favours the memory-bound reference `x * 1.0` at sizes that fit in the L3
cache (16 MB here) and shows the kernels' compute cost there:

  x * 1.0            TensorFlow's element-wise multiply: reads and writes the
                     tensor once, the reference every ratio is taken against
  copy (DeepCopy)    tf.raw_ops.DeepCopy, a real copy into a new buffer (the
                     bandwidth bound as TensorFlow reaches it)
  copy (np.copyto)   NumPy's single-threaded memcpy into a preallocated array
                     (a second bandwidth bound, without TensorFlow's allocator)
  tf.cast bf16       tf.cast to bfloat16 and back, TensorFlow's own rounding
  op ...             lp.round_to_format / lp.quantize_dfp (C++ kernels)
  raw op ...         the same kernel called without the Python wrapper
  tf path ...        implementation="tf": the pure-TensorFlow fallback
                     (slow: measured up to --tf-path-max-mb only)

Throughput counts the bytes read plus the bytes written (2 x tensor size).
The ratio of a case is time(x * 1.0) / time(case), so 1.0 means "as fast as
TensorFlow's own memory-bound element-wise op" and higher is faster.

    python benchmarks/bench_rounding.py
    python benchmarks/bench_rounding.py --sizes-mb 16,64 --repeats 5 \\
        --out benchmarks/results/rounding.md
    python benchmarks/bench_rounding.py --isa portable --out /tmp/portable.md

`--isa` picks the kernel tier of the op cases (default "auto", the fastest
this CPU runs); the results record the tier that ran (`lp.kernel_tiers()`).

Results go to the Markdown file given by --out and to a JSON file next to
it (same name, .json), with the command line, CPU model, thread count and
date.  See benchmarks/README.md for how to read them.
"""

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import tf_lowprec as lp  # noqa: E402
from tf_lowprec import _op_library  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results_io  # noqa: E402  (benchmarks/results_io.py, beside this script)

REFERENCE = "x * 1.0"
SEED = (20261123, 7)


def _parse_sizes(text):
    try:
        sizes = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes-mb must be comma-separated numbers, got {text!r}")
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"--sizes-mb must be positive, got {text!r}")
    return sizes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=_parse_sizes, default=_parse_sizes("1,4,16,64,256"),
                        help="tensor sizes in MB (2^20 bytes), comma-separated")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per case")
    parser.add_argument("--tf-path-max-mb", type=float, default=16,
                        help="largest size at which the (slow) pure-TF path is measured")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra-op threads (0: TensorFlow's default, all cores)")
    parser.add_argument("--order", choices=("interleaved", "blocked"), default="interleaved",
                        help="cases take turns call by call, or run their calls back to back")
    parser.add_argument("--isa", choices=_op_library.ISAS, default="auto",
                        help="kernel tier of the lp.* and raw op cases")
    parser.add_argument("--out", default="benchmarks/results/rounding.md",
                        help="Markdown output; the JSON goes next to it")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def cases(x, ops, seed, tf_path, isa="auto"):
    """(name, zero-argument callable) pairs, all on tensor x."""
    src = x.numpy()
    dst = np.empty_like(src)

    def copyto():
        np.copyto(dst, src)

    result = [
        (REFERENCE, lambda: x * 1.0),
        ("copy (tf.raw_ops.DeepCopy)", lambda: tf.raw_ops.DeepCopy(x=x)),
        ("copy (np.copyto, 1 thread)", copyto),
        ("tf.cast to bfloat16 and back", lambda: tf.cast(tf.cast(x, tf.bfloat16), tf.float32)),
    ]
    for fmt in (lp.BF16, lp.E4M3):
        for rounding in ("nearest_even", "stochastic"):
            result.append((
                f"op {fmt.name} {rounding}",
                lambda fmt=fmt, rounding=rounding: lp.round_to_format(x, fmt, rounding, seed=seed,
                                                                      isa=isa),
            ))
    for rounding in ("nearest_even", "stochastic"):
        result.append((
            f"op dfp16 per-tensor {rounding}",
            lambda rounding=rounding: lp.quantize_dfp(x, lp.DFP16, rounding, seed=seed, isa=isa),
        ))
    # The kernel without the Python wrapper's per-call overhead (argument
    # checks, seed tensor, name scope): what a tf.function graph pays.
    result.append((
        "raw op bf16 nearest_even",
        lambda: ops.lowprec_round_to_float_format(
            x, seed, exponent_bits=8, mantissa_bits=7, exponent_bias=127, isa=isa),
    ))
    if tf_path:
        for rounding in ("nearest_even", "stochastic"):
            result.append((
                f"tf path bf16 {rounding}",
                lambda rounding=rounding: lp.round_to_format(
                    x, lp.BF16, rounding, seed=seed, implementation="tf"),
            ))
    return result


def _timed_call(fn):
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    del result  # free the output before the next call, like x * 1.0's
    return seconds


def time_cases(named_fns, repeats, warmup, order="interleaved"):
    """Median seconds per call of each (name, fn, repeats, warmup).

    order "interleaved": the cases take turns call by call; "blocked": each
    case's warm-up and timed calls run back to back.
    """
    if not named_fns:
        return {}
    times = {name: [] for name, _, _, _ in named_fns}
    if order == "blocked":
        for name, fn, case_repeats, case_warmup in named_fns:
            for _ in range(case_warmup):
                fn()
            times[name] = [_timed_call(fn) for _ in range(case_repeats)]
        return {name: statistics.median(t) for name, t in times.items()}
    for _, fn, _, case_warmup in named_fns:
        for _ in range(case_warmup):
            fn()
    for round_index in range(repeats):
        for name, fn, case_repeats, _ in named_fns:
            if round_index < case_repeats:
                times[name].append(_timed_call(fn))
    return {name: statistics.median(t) for name, t in times.items()}



def run(args):
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    ops = _op_library.load()
    seed = tf.constant(SEED, tf.int64)
    rng = np.random.default_rng(0)
    rows = []
    for size_mb in args.sizes_mb:
        n = int(size_mb * 2**20) // 4
        x = tf.constant(rng.standard_normal(n, dtype=np.float32))
        tf_path = size_mb <= args.tf_path_max_mb
        fast, slow = [], []
        for name, fn in cases(x, ops, seed, tf_path, args.isa):
            if name.startswith("tf path"):  # after the others: it sweeps the caches
                slow.append((name, fn, min(args.repeats, 3), min(args.warmup, 1)))
            else:
                fast.append((name, fn, args.repeats, args.warmup))
        measured = time_cases(fast, args.repeats, args.warmup, args.order)
        measured.update(time_cases(slow, args.repeats, args.warmup, args.order))
        for name, seconds in measured.items():
            print(f"{size_mb:>7g} MB  {name:<34s} {seconds * 1e3:10.3f} ms", flush=True)
        for name, seconds in measured.items():
            rows.append({
                "size_mb": size_mb,
                "elements": n,
                "case": name,
                "median_ms": seconds * 1e3,
                "gb_per_s": 2 * 4 * n / seconds / 1e9,
                "ratio_to_x_times_1": measured[REFERENCE] / seconds,
            })
        del x
    return rows


def _load_average():
    """1/5/15-minute load averages: other jobs on the machine skew the ratios."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def metadata(args, argv, load_before, load_after):
    return {
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1]] + argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": results_io.cpu_model(),
        "cpu_count": os.cpu_count(),
        "intra_op_threads": args.threads or "default (all cores)",
        "tensorflow": tf.__version__,
        "tf_lowprec": getattr(lp, "__version__", "unknown"),
        "rounding_tier": _tier(args.isa),
        "repeats": args.repeats,
        "order": args.order,
        "warmup": args.warmup,
        "statistic": "median",
        "bytes_counted": "read + written = 2 x tensor size",
        "load_average_before": load_before,
        "load_average_after": load_after,
    }


def _tier(isa):
    """The rounding ops' kernel tier that `isa` runs here, e.g. "avx2 (auto)"."""
    tiers = lp.kernel_tiers()["rounding"]
    if isa == "auto":
        return f"{tiers['auto']} (auto; available: {', '.join(tiers['available'])})"
    return isa


def markdown(meta, rows):
    sizes = sorted({r["size_mb"] for r in rows})
    names = list(dict.fromkeys(r["case"] for r in rows))
    table = {(r["case"], r["size_mb"]): r for r in rows}
    lines = ["# Rounding kernel throughput", ""]
    lines += [f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}"
              for key, value in meta.items()]

    def grid(title, field, fmt):
        out = ["", f"## {title}", "", "| case | " + " | ".join(f"{s:g} MB" for s in sizes) + " |",
               "|---|" + "---:|" * len(sizes)]
        for name in names:
            cells = [fmt(table[(name, s)][field]) if (name, s) in table else "–" for s in sizes]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        return out

    lines += grid(f"Ratio to `{REFERENCE}` (higher is faster)", "ratio_to_x_times_1",
                  lambda v: f"{v:.2f}")
    lines += grid("Throughput, GB/s (bytes read + written)", "gb_per_s", lambda v: f"{v:.1f}")
    lines += grid("Median time per call, ms", "median_ms", lambda v: f"{v:.3f}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv if argv is None else argv
    args = parse_args(argv[1:])
    load_before = _load_average()
    rows = run(args)
    meta = metadata(args, argv, load_before, _load_average())
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(markdown(meta, rows))
    json_path = os.path.splitext(args.out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump({"metadata": meta, "results": rows}, f, indent=1)
    print(f"wrote {args.out} and {json_path}")


if __name__ == "__main__":
    main()
