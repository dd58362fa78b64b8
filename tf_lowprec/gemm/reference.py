"""NumPy reference of the DFP16 INT16 GEMM (`tf_lowprec.gemm.dfp`), bit for bit.

It does the same integer arithmetic as the kernels, written plainly: INT16
mantissas, exact int64 chunk sums, FP32 accumulation of the chunk sums in K
order, one scaling per exponent block.  docs/dfp_gemm.md states the rules.

>>> import numpy as np
>>> from tf_lowprec.gemm import reference as reference_gemm
>>> a = np.array([[1.0, 2.0]], np.float32); b = np.array([[3.0], [4.0]], np.float32)
>>> e = np.zeros((1, 1, 1), np.int32)
>>> reference_gemm.dfp_matmul_quantized(a, e, b, e)
array([[11.]], dtype=float32)
"""

import numpy as np

NO_SCALE = -1024  # exponent of a block with no finite non-zero value


def _pow2(e):
    return np.ldexp(1.0, np.asarray(e, np.int64).clip(-1074, 1023))


def mantissas(values, exponents):
    """Integer mantissas I = values * 2^-E (exact), and a non-finite mask.

    `exponents` broadcasts against `values` (one per element).
    """
    values = np.asarray(values, np.float32)
    finite = np.isfinite(values)
    e = np.broadcast_to(np.asarray(exponents, np.int64), values.shape)
    scaled = np.where(finite, values, 0).astype(np.float64) * _pow2(-np.where(e == NO_SCALE, 0, e))
    ints = scaled.astype(np.int64)
    if not np.array_equal(ints, scaled) or np.abs(ints).max(initial=0) > 32767:
        raise ValueError("values are not I * 2^E with an integer |I| <= 32767")
    return ints, ~finite


def _expand_blocks(e, axis, length, block):
    """Per-block exponents repeated to one per element along `axis`."""
    return np.repeat(e, block, axis=axis).take(np.arange(length), axis=axis)


def dfp_matmul_quantized(a, a_exponents, b, b_exponents, *, block_size=None, chunk_size=64,
                         return_overflow_count=False):
    """The GEMM of DFP operands: a [m, k] or [batch, m, k], b [k, n] or [batch, k, n].

    a_exponents: [batch or 1, m or 1, blocks]; b_exponents: [batch or 1,
    blocks, n or 1] (per tensor: [1, 1, 1]).  Transposes are the caller's
    (pass the logical operands).  Returns float32 [.., m, n] and, when asked,
    how many (output, chunk) INT32 chains would have overflowed.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    squeeze = a.ndim == 2 and b.ndim == 2
    a3 = a.reshape((-1,) + a.shape[-2:]) if a.ndim == 3 else a[None]
    b3 = b.reshape((-1,) + b.shape[-2:]) if b.ndim == 3 else b[None]
    batch = max(a3.shape[0], b3.shape[0])
    a3 = np.broadcast_to(a3, (batch,) + a3.shape[1:])
    b3 = np.broadcast_to(b3, (batch,) + b3.shape[1:])
    m, k = a3.shape[1:]
    n = b3.shape[2]
    block = k if block_size is None else block_size
    ea = np.asarray(a_exponents, np.int64)
    eb = np.asarray(b_exponents, np.int64)
    ea_full = _expand_blocks(np.broadcast_to(ea, (batch, m, ea.shape[2])), 2, k, block) if k else ea
    eb_full = _expand_blocks(np.broadcast_to(eb, (batch, eb.shape[1], n)), 1, k, block) if k else eb
    ia, bad_a = mantissas(a3, ea_full) if k else (np.zeros(a3.shape, np.int64), np.zeros(a3.shape, bool))
    ib, bad_b = mantissas(b3, eb_full) if k else (np.zeros(b3.shape, np.int64), np.zeros(b3.shape, bool))
    out = np.zeros((batch, m, n), np.float32)
    overflowed = 0
    blocks = -(-k // block) if k else 0
    for blk in range(blocks):
        k0, k1 = blk * block, min(k, (blk + 1) * block)
        acc = np.zeros((batch, m, n), np.float32)
        for c0 in range(k0, k1, chunk_size):
            c1 = min(k1, c0 + chunk_size)
            s = np.matmul(ia[:, :, c0:c1], ib[:, c0:c1, :])  # exact in int64
            acc = (acc + s.astype(np.float32)).astype(np.float32)
            if return_overflow_count:
                overflowed += _overflowed_chains(ia[:, :, c0:c1], ib[:, c0:c1, :])
        sa = _pow2(np.broadcast_to(ea, (batch, m, ea.shape[2]))[:, :, blk])[:, :, None]
        sb = _pow2(np.broadcast_to(eb, (batch, eb.shape[1], n))[:, blk, :])[:, None, :]
        v = ((acc.astype(np.float64) * sa) * sb).astype(np.float32)
        out = v if blk == 0 else (out + v).astype(np.float32)
    out[np.broadcast_to(bad_a.any(axis=2)[:, :, None], out.shape)] = np.nan
    out[np.broadcast_to(bad_b.any(axis=1)[:, None, :], out.shape)] = np.nan
    if squeeze:
        out = out[0]
    return (out, overflowed) if return_overflow_count else out


def _overflowed_chains(ia, ib):
    """(output, chunk) chains of pair sums whose running sum leaves INT32."""
    k = ia.shape[2]
    if k % 2:
        ia = np.concatenate([ia, np.zeros(ia.shape[:2] + (1,), np.int64)], axis=2)
        ib = np.concatenate([ib, np.zeros((ib.shape[0], 1, ib.shape[2]), np.int64)], axis=1)
    # pair sums t[b, i, j, q] = a[2q] b[2q] + a[2q+1] b[2q+1]
    prod = ia[:, :, None, :] * np.swapaxes(ib, 1, 2)[:, None, :, :]
    pairs = prod[..., 0::2] + prod[..., 1::2]
    running = np.cumsum(pairs, axis=-1)
    outside = (running > 2**31 - 1) | (running < -(2**31))
    return int(outside.any(axis=-1).sum())
