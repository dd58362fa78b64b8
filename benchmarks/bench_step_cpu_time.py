"""dfp16 / fp32 training-step ratio in process CPU time and in wall time (one run).

`bench_policies.py`'s models and steps (`train_on_batch`), FP32 and one policy
built in the same process, interleaved: 7 rounds of 5 steps after a discarded
round, the fastest round of each.  On a shared machine the process CPU time
moves less with the other jobs than the wall time does.

    python benchmarks/bench_step_cpu_time.py --model MLP --mode dfp16
"""

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_policies  # noqa: E402  (beside this script)


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="MLP", choices=sorted(bench_policies.MODELS))
    parser.add_argument("--mode", default="dfp16", choices=sorted(bench_policies.MODES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    models = {}
    for mode in ("fp32", args.mode):
        make = bench_policies.MODES[mode]
        models[mode] = bench_policies._build(bench_policies.MODELS[args.model],
                                             make() if make else None)
    _, shape, batch = models["fp32"]
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(batch, *shape).astype("float32"))
    y = tf.constant(rng.randint(0, 10, batch))
    wall = {mode: [] for mode in models}
    cpu = {mode: [] for mode in models}
    for repeat in range(args.repeats + 1):
        for mode, (model, _, _) in models.items():
            w0, c0 = time.perf_counter(), _cpu_seconds()
            for _ in range(args.steps):
                model.train_on_batch(x, y)
            if repeat:  # the first round traces the step
                wall[mode].append((time.perf_counter() - w0) / args.steps)
                cpu[mode].append((_cpu_seconds() - c0) / args.steps)
    for mode in models:
        print(f"{mode}: {min(wall[mode]) * 1e3:.1f} ms/step wall, "
              f"{min(cpu[mode]) * 1e3:.1f} ms/step CPU")
    print(f"{args.model} {args.mode}/fp32: CPU time {min(cpu[args.mode]) / min(cpu['fp32']):.2f}, "
          f"wall {min(wall[args.mode]) / min(wall['fp32']):.2f}; "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
