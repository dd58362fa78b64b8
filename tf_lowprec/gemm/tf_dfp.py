"""The INT16 DFP GEMM written with stock TensorFlow ops only.

Bit-identical to the LowprecDfpMatmul kernel (and to
`tf_lowprec.gemm.reference`, which states the arithmetic): integer mantissas,
exact chunk sums, FP32 accumulation of the chunk sums in K order, one scaling
per exponent block, NaN rows/columns for non-finite operands.  It is the path
used where the custom op cannot go (SavedModels for TF Serving, XLA, GPUs),
like `tf_rounding` is for the rounding ops.

Integer arithmetic is carried in float64: every product of two INT16
mantissas (< 2^30) and every chunk sum of up to 2^22 of them (< 2^53) is an
exact float64 integer, so the float64 matmul of a chunk is exact whatever its
summation order; converting a chunk sum to float32 rounds to nearest even,
as the kernel's integer-to-float conversion does.  Per-tensor exponents take
any K (chunk sums in one einsum, then a sequential fold); per-block exponents
unroll their blocks in the graph and need K statically.
"""

import tensorflow as tf

NO_SCALE = -1024  # exponent of a block with no finite non-zero value


def _pow2(e):
    """2^e as float64 for int32 e (exact: built from the exponent bits)."""
    e = tf.clip_by_value(tf.cast(e, tf.int64), -1022, 1023)
    return tf.bitcast(tf.bitwise.left_shift(e + 1023, 52), tf.float64)


def _expand(e, axis, length, block):
    """Per-block exponents repeated to one per element along `axis`."""
    return tf.gather(tf.repeat(e, block, axis=axis), tf.range(length), axis=axis)


def _mantissas(values, exponents):
    finite = tf.math.is_finite(values)
    e = tf.where(exponents == NO_SCALE, tf.zeros_like(exponents), exponents)
    scaled = tf.cast(tf.where(finite, values, tf.zeros_like(values)), tf.float64) * _pow2(-e)
    return scaled, tf.logical_not(finite)


def _chunked_sum(ia, ib, chunk_size):
    """FP32 sum, in K order, of the exact integer sums of each K chunk (float64 in)."""
    k = tf.shape(ia)[2]
    chunks = (k + chunk_size - 1) // chunk_size
    pad = chunks * chunk_size - k  # zero mantissas add nothing
    ia = tf.pad(ia, [[0, 0], [0, 0], [0, pad]])
    ib = tf.pad(ib, [[0, 0], [0, pad], [0, 0]])
    shape_a = tf.shape(ia)
    shape_b = tf.shape(ib)
    ia = tf.reshape(ia, tf.stack([shape_a[0], shape_a[1], chunks, chunk_size]))
    ib = tf.reshape(ib, tf.stack([shape_b[0], chunks, chunk_size, shape_b[2]]))
    sums = tf.einsum("bmqc,bqcn->qbmn", ia, ib)  # exact integers
    initial = tf.zeros(tf.stack([shape_a[0], shape_a[1], shape_b[2]]), tf.float32)
    return tf.foldl(lambda acc, s: acc + tf.cast(s, tf.float32), sums, initializer=initial)


def gemm_quantized(a3, ea3, b3, eb3, *, transpose_a, transpose_b, block_size, chunk_size):
    """Pure-TF twin of `lowprec_dfp_matmul` on its rank-3 inputs.

    a3 [Ba, rows, cols] and b3 [Bb, rows, cols] hold DFP values (before the
    transposes); ea3 [Ba or 1, m or 1, blocks] and eb3 [Bb or 1, blocks, n or 1]
    their exponents in logical layout.  Returns (float32 [B, m, n], 0): the
    overflow count is not computed on this path.
    """
    a = tf.linalg.matrix_transpose(a3) if transpose_a else a3
    b = tf.linalg.matrix_transpose(b3) if transpose_b else b3
    k = a.shape[-1]
    batch = tf.maximum(tf.shape(a)[0], tf.shape(b)[0])
    m, n, dynamic_k = tf.shape(a)[1], tf.shape(b)[2], tf.shape(a)[2]
    a = tf.broadcast_to(a, tf.stack([batch, m, dynamic_k]))
    b = tf.broadcast_to(b, tf.stack([batch, dynamic_k, n]))
    ea = tf.broadcast_to(ea3, tf.stack([batch, m, tf.shape(ea3)[2]]))
    eb = tf.broadcast_to(eb3, tf.stack([batch, tf.shape(eb3)[1], n]))
    if not block_size:
        ia, bad_a = _mantissas(a, ea)
        ib, bad_b = _mantissas(b, eb)
        acc = _chunked_sum(ia, ib, chunk_size)
        out = tf.cast((tf.cast(acc, tf.float64) * _pow2(ea)) * _pow2(eb), tf.float32)
    else:
        if k is None:
            raise ValueError(
                "the pure-TF DFP GEMM with per-block exponents needs the reduction "
                "dimension statically"
            )
        ia, bad_a = _mantissas(a, _expand(ea, 2, k, block_size))
        ib, bad_b = _mantissas(b, _expand(eb, 1, k, block_size))
        out = tf.zeros(tf.stack([batch, m, n]), tf.float32)
        for blk in range(-(-k // block_size)):
            k0, k1 = blk * block_size, min(k, (blk + 1) * block_size)
            acc = _chunked_sum(ia[:, :, k0:k1], ib[:, k0:k1, :], chunk_size)
            sa = _pow2(ea[:, :, blk])[:, :, None]
            sb = _pow2(eb[:, blk, :])[:, None, :]
            v = tf.cast((tf.cast(acc, tf.float64) * sa) * sb, tf.float32)
            out = v if blk == 0 else out + v
    bad = tf.logical_or(tf.reduce_any(bad_a, axis=2)[:, :, None],
                        tf.reduce_any(bad_b, axis=1)[:, None, :])
    out = tf.where(bad, tf.constant(float("nan"), tf.float32), out)
    return out, tf.constant(0, tf.int64)
