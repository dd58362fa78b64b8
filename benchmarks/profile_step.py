"""Where one training step's time goes, op by op (TensorFlow's profiler).

Builds `bench_policies.py`'s model under FP32 and under a policy, runs a few
warm-up steps (`train_on_batch`, the traced step `fit` runs), then traces
`--steps` steps with `tf.profiler.experimental` and sums the wall time of every
TensorFlow op by op type over the host threads (ops on the two intra-op
threads can overlap, so the sum may exceed the step's wall time).  Prints a
Markdown table: op type, ms per step, share of the summed op time, and the
same for the FP32 step.

    python benchmarks/profile_step.py --model MLP --mode dfp16 --steps 10
"""

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import op_def_registry  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_policies  # noqa: E402  (beside this script)


def op_times(logdir):
    """{op type: summed duration in ms} of the TF ops in the trace under logdir."""
    paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    if len(paths) != 1:
        raise RuntimeError(f"expected one trace under {logdir}, found {paths}")
    space = xplane_pb2.XSpace()
    with open(paths[0], "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                # Op events are "node_name:OpType"; the executor's own events
                # (Process, Run, ...) name no registered op.
                op_type = name.rsplit(":", 1)[-1]
                if ":" not in name or op_def_registry.get(op_type) is None:
                    continue
                totals[op_type] += event.duration_ps / 1e9
    return totals


def profile(model_name, mode, steps, warmup):
    make = bench_policies.MODES[mode]
    model, shape, batch = bench_policies._build(bench_policies.MODELS[model_name],
                                                make() if make else None)
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(batch, *shape).astype("float32"))
    y = tf.constant(rng.randint(0, 10, batch))
    for _ in range(warmup):
        model.train_on_batch(x, y)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        wall = (time.perf_counter() - start) / steps
        tf.profiler.experimental.stop()
        totals = op_times(logdir)
    return {k: v / steps for k, v in totals.items()}, wall * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="MLP", choices=sorted(bench_policies.MODELS))
    parser.add_argument("--mode", default="dfp16", choices=sorted(bench_policies.MODES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    ops, wall = profile(args.model, args.mode, args.steps, args.warmup)
    base, base_wall = profile(args.model, "fp32", args.steps, args.warmup)
    total, base_total = sum(ops.values()), sum(base.values())
    print(f"{args.model}: {args.mode} {wall:.1f} ms/step wall (profiled), summed op time "
          f"{total:.1f} ms; fp32 {base_wall:.1f} ms/step, op time {base_total:.1f} ms; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"\n| op type | {args.mode} ms/step | % of op time | fp32 ms/step | % of op time |")
    print("|---|---|---|---|---|")
    for name in sorted(set(ops) | set(base), key=lambda n: -max(ops.get(n, 0), base.get(n, 0))):
        a, b = ops.get(name), base.get(name)
        if max(a or 0, b or 0) < 0.01:
            continue
        cell = (lambda v, t: f"{v:.2f} | {100 * v / t:.1f}" if v else "— | —")
        print(f"| {name} | {cell(a, total)} | {cell(b, base_total)} |")


if __name__ == "__main__":
    main()
