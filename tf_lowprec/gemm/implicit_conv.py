"""Geometry of NHWC conv2d / NDHWC conv3d as implicit GEMMs, shared by the INT16 and BF16 GEMMs.

`tf_lowprec.gemm.dfp_conv` and `tf_lowprec.gemm.bf16_conv` run a convolution
as three GEMMs whose packing gathers the patches (C++:
custom_ops/kernels/conv_gather.h): y = patches(x) @ filters, d(filters) =
patches(x)^T @ dy, and d(x) = patches(dilate(dy, strides)) @ flip(filters)^T
with the pads `input_gradient_pads` gives.  This module holds what those
ops need to know of the geometry (the same as tf.nn.conv2d's / conv3d's; the
BF16 GEMM's Python path runs conv2d only, its ops take conv3d too).

>>> import numpy as np
>>> x = np.zeros((1, 5, 5, 1), np.float32); w = np.zeros((3, 3, 1, 1), np.float32)
>>> geometry(x, w, (2, 2), "SAME", (1, 1))
([1, 1, 1, 1], (3, 3))
>>> input_gradient_pads(5, 3, 2, 1, 1, 3)
(1, 1)
"""


def _padding(size, k, s, d, padding):
    """(before, after, output size) of one spatial axis, as tf.nn.conv2d pads."""
    span = (k - 1) * d + 1
    if padding == "VALID":
        return 0, 0, max((size - span) // s + 1, 0)
    out = -(-size // s)
    total = max((out - 1) * s + span - size, 0)
    return total // 2, total - total // 2, out


def geometry(x, filters, strides, padding, dilations):
    """The pads and output sizes of a conv2d / conv3d, or None.

    For a conv2d, [top, bottom, left, right] and (OH, OW); for a conv3d,
    (before, after) of depth, height and width in turn and (OD, OH, OW).
    None where the implicit path cannot take the call: an unknown spatial
    or filter size, or an empty output.
    """
    rank = x.shape.rank - 2 if hasattr(x.shape, "rank") else len(x.shape) - 2
    sizes, ksize = list(x.shape[1:-1]), list(filters.shape[:rank])
    if None in sizes or None in ksize:
        return None
    pads, out = [], []
    for size, k, s, d in zip(sizes, ksize, strides, dilations):
        before, after, count = _padding(size, k, s, d, padding)
        pads += [before, after]
        out.append(count)
    if 0 in out:
        return None
    return pads, tuple(out)


def input_gradient_pads(size, k, s, d, before, out):
    """Pads of the dilated error so that its stride-1 convolution has `size` outputs.

    One spatial axis of input size `size`, kernel k, stride s, dilation d,
    forward padding `before` and `out` outputs: the error, dilated to
    (out - 1) * s + 1, is padded by the returned (before, after), and the
    flipped kernel's first tap then lands on input row 0.
    """
    span = (k - 1) * d + 1
    extent = (out - 1) * s + 1
    first = span - 1 - before  # the flipped kernel's first tap on input row 0
    return first, size - 1 + span - extent - first
