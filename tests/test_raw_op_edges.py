"""Raw ops fed adversarial shapes and attributes fail with InvalidArgument, never abort.

The cases run in a subprocess: a process abort (a TensorFlow CHECK on an
overflowing shape, say) then fails the case it happened in, and the cases
after it run in a fresh subprocess, instead of the abort killing the test
session.  Every case runs eagerly and inside a tf.function (where the shape
function runs first); inputs are made eagerly and passed in, since
`tf.zeros` of huge static shapes is itself truncated inside a graph.
"""

import os
import subprocess
import sys

import pytest

_HUGE = 2**40

# name -> (op call on `ops` with inputs `x`, input shapes, expect InvalidArgument)
CASES = {
    # batch * m * n >= 2^63 with k = 0: the operands are empty, the product is not countable.
    "bf16_matmul_huge_empty": (
        "ops.lowprec_bf16_matmul(x[0], x[1])", [(1, _HUGE, 0), (1, 0, _HUGE)], True),
    "bf16_matmul_huge_batch": (
        "ops.lowprec_bf16_matmul(x[0], x[1])", [(1, _HUGE, 0), (_HUGE, 0, 2**30)], True),
    "accumulation_matmul_huge_empty": (
        "ops.lowprec_accumulation_matmul(x[0], x[1], SEED, exponent_bits=5, mantissa_bits=10, "
        "exponent_bias=15)", [(1, _HUGE, 0), (1, 0, _HUGE)], True),
    "accumulation_matmul_huge_batch": (
        "ops.lowprec_accumulation_matmul(x[0], x[1], SEED, exponent_bits=5, mantissa_bits=10, "
        "exponent_bias=15)", [(1, _HUGE, 0), (_HUGE, 0, 2**30)], True),
    "accumulation_matmul_negative_chunk_size": (
        "ops.lowprec_accumulation_matmul(x[0], x[1], SEED, exponent_bits=5, mantissa_bits=10, "
        "exponent_bias=15, chunk_size=-1)", [(1, 2, 4), (1, 4, 3)], True),
    "dfp_matmul_huge_empty": (
        "ops.lowprec_dfp_matmul(x[0], tf.zeros([1, 1, 0], tf.int32), x[1], "
        "tf.zeros([1, 0, 1], tf.int32))", [(1, _HUGE, 0), (1, 0, _HUGE)], True),
    "dfp_matmul_fused_huge_empty": (
        "ops.lowprec_dfp_matmul_fused(x[0], x[1])", [(1, _HUGE, 0), (1, 0, _HUGE)], True),
    # block_size near INT64_MAX: one block along k, so empty exponents are refused
    # (ceil(k / block_size) once overflowed to 0 blocks and computed as if E = 0).
    "dfp_matmul_block_size_near_int64_max": (
        "ops.lowprec_dfp_matmul(x[0], tf.zeros([1, 2, 0], tf.int32), x[1], "
        "tf.zeros([1, 0, 3], tf.int32), block_size=2**63 - 2)", [(1, 2, 4), (1, 4, 3)], True),
    # An exponent of INT32_MIN is not a DFP exponent (and -E must not overflow).
    "dfp_matmul_exponent_int32_min": (
        "ops.lowprec_dfp_matmul(x[0], tf.fill([1, 1, 1], tf.int32.min), x[1], "
        "tf.zeros([1, 1, 1], tf.int32))", [(1, 2, 4), (1, 4, 3)], True),
    # An empty tensor whose dimensions multiply past int64: nothing to round,
    # and no overflow in the kernel's [outer, length, inner] view.
    "quantize_dfp_empty_huge_dims": (
        "ops.lowprec_quantize_dfp(x[0], SEED, block_size=3, axis=1)",
        [(_HUGE, 0, _HUGE)], False),
    "quantize_dfp_empty_huge_dims_axis0": (
        "ops.lowprec_quantize_dfp(x[0], SEED, block_size=5, axis=0)",
        [(0, _HUGE, _HUGE)], False),
    "round_to_float_empty_huge_dims": (
        "ops.lowprec_round_to_float_format(x[0], SEED, exponent_bits=8, mantissa_bits=7, "
        "exponent_bias=127)", [(_HUGE, 0, _HUGE)], False),
    # block_size near INT32_MAX: one block, no overflow in ceil(length / block).
    "quantize_dfp_block_size_max": (
        "ops.lowprec_quantize_dfp(x[0], SEED, block_size=2**31 - 1)", [(5,)], False),
    "quantize_dfp_negative_block_size": (
        "ops.lowprec_quantize_dfp(x[0], SEED, block_size=-4)", [(5,)], True),
}

_RUNNER = r"""
import sys
import numpy as np
import tensorflow as tf
from tf_lowprec._op_library import load
ops = load()
SEED = tf.zeros([2], tf.int64)
cases = eval(sys.argv[1])
for name, (call, shapes, expect_error) in cases:
    print("CASE-START", name, flush=True)
    x = [tf.zeros(tf.constant(s, tf.int64)) if 0 in s else tf.ones(s) for s in shapes]
    fn = eval("lambda *x: " + call)
    outcome = "ok"
    for mode in ("eager", "function"):
        try:
            (fn if mode == "eager" else tf.function(fn))(*x)
            if expect_error:
                outcome = f"FAIL {mode}: no error"
        except (tf.errors.InvalidArgumentError, ValueError) as e:
            if not expect_error:
                outcome = f"FAIL {mode}: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
    print("CASE-END", name, outcome, flush=True)
"""


@pytest.fixture(scope="module")
def outcomes():
    """name -> "ok", "FAIL ..." or the tail of the output of a process that died in it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TF_CPP_MIN_LOG_LEVEL="2")
    pending = sorted(CASES)
    results = {}
    while pending:
        proc = subprocess.run(
            [sys.executable, "-c", _RUNNER, repr([(n, CASES[n]) for n in pending])],
            capture_output=True, text=True, env=env, timeout=600)
        started = None
        for line in proc.stdout.splitlines():
            if line.startswith("CASE-START "):
                started = line.split()[1]
            elif line.startswith("CASE-END "):
                _, name, outcome = line.split(" ", 2)
                results[name] = outcome
                started = None
        if started is not None:  # the process died inside this case
            results[started] = (f"process died (exit code {proc.returncode}):\n"
                                f"{(proc.stdout + proc.stderr)[-2000:]}")
        elif proc.returncode != 0 and not results:
            raise AssertionError(f"runner failed before any case:\n{proc.stderr[-3000:]}")
        pending = [n for n in pending if n not in results]
    return results


@pytest.mark.parametrize("case", sorted(CASES))
def test_raw_op_edge_case_is_refused_or_runs(outcomes, case):
    assert outcomes[case] == "ok", f"{case}: {outcomes[case]}"
