"""Writes the operands of every INT16 GEMM of one dfp16 training step to files.

Runs `bench_policies.py`'s model under `lp.Policy("dfp16")` eagerly for a few
steps (the same data as the benchmark) and records what each fused INT16 GEMM
(`dfp.gemm_fused`) receives in the last step; `dfp_gemm_operand_timing.cc`
times them one by one without TensorFlow.  One file per GEMM, `g<i>.bin`:
int64 [m, n, k, transpose_a, transpose_b, exponent_a, exponent_b, chunk_size],
then a and b as float32 in their stored layout.  (Eager execution also runs
the input gradient of the first layer, which the traced step prunes.)

    python benchmarks/dump_step_gemms.py --model MLP --out /tmp/mlp_gemms
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_lowprec as lp  # noqa: E402
from tf_lowprec.gemm import dfp as dfp_gemm  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_policies  # noqa: E402  (beside this script)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="MLP", choices=sorted(bench_policies.MODELS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", required=True, help="folder for g<i>.bin")
    args = parser.parse_args()
    calls = []
    fused = dfp_gemm.gemm_fused

    def recording(x, y, fmt, *, transpose_a=False, transpose_b=False, chunk_size=64, isa="auto"):
        calls.append((np.array(x), np.array(y), transpose_a, transpose_b, chunk_size))
        return fused(x, y, fmt, transpose_a=transpose_a, transpose_b=transpose_b,
                     chunk_size=chunk_size, isa=isa)

    dfp_gemm.gemm_fused = recording
    model, shape, batch = bench_policies._build(bench_policies.MODELS[args.model],
                                                lp.Policy("dfp16"))
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(batch, *shape).astype("float32"))
    y = tf.constant(rng.randint(0, 10, batch))
    for _ in range(args.steps):
        calls.clear()
        model.train_on_batch(x, y)
    os.makedirs(args.out, exist_ok=True)
    for i, (a, b, ta, tb, chunk) in enumerate(calls):
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"GEMM {i}: only 2-D operands are written, got {a.shape} {b.shape}")
        ea, eb = (int(np.asarray(lp.quantize_dfp(v, lp.DFP16, return_exponents=True)[1])
                      .reshape(-1)[0]) for v in (a, b))
        m, k = a.shape[::-1] if ta else a.shape
        n = b.shape[0] if tb else b.shape[1]
        header = np.array([m, n, k, ta, tb, ea, eb, chunk], np.int64)
        with open(os.path.join(args.out, f"g{i}.bin"), "wb") as f:
            f.write(header.tobytes() + a.astype(np.float32).tobytes()
                    + b.astype(np.float32).tobytes())
        print(f"g{i}: {m} x {k} x {n}, transpose_a={ta}, transpose_b={tb}, E = {ea}, {eb}")


if __name__ == "__main__":
    main()
