"""tf_lowprec: emulated low-precision training for Keras 3 on TensorFlow.

The package is layered (docs/architecture.md); each layer imports only the
ones below it:

- `numerics`: number formats, rounding (C++ kernels and their stock-TF
  twins), NumPy references, statistics;
- `gemm`: the GEMMs with their own accumulation (INT16 DFP, BF16 VDPBF16PS
  order, low-precision float accumulators: `matmul`) and their stock-TF twins;
- `keras`: dtype policies, the emulated GEMMs, and the adapter, the one
  module that touches Keras internals;
- `training`: adaptive loss scaling, 16-bit weight updates, callbacks, layers;
- `export` (SavedModel without custom ops) and `cli` (the `tf-lowprec` command).

>>> import tensorflow as tf, tf_lowprec as lp
>>> lp.round_to_format(tf.constant([3.14159]), lp.BF16).numpy()
array([3.140625], dtype=float32)
"""

import sys

from tf_lowprec.numerics import formats
from tf_lowprec import _op_library
from tf_lowprec._op_library import OpLibraryError, kernel_tiers
from tf_lowprec.numerics.formats import (
    BF16,
    BF16_INTEL,
    DFP16,
    E4M3,
    E4M3FNUZ,
    E5M2,
    E5M2FNUZ,
    FP16,
    FP32,
    HFP8_BACKWARD,
    HFP8_FORWARD,
    E2M1,
    E2M3,
    E3M2,
    E5M2_SATURATING,
    INT8_MX,
    MXFP4_E2M1,
    MXFP6_E2M3,
    MXFP6_E3M2,
    MXFP8_E4M3,
    MXFP8_E5M2,
    MXINT8,
    NVFP4,
    BlockFormat,
    DfpFormat,
    FloatFormat,
)
from tf_lowprec.training import callbacks
from tf_lowprec.training import layers
from tf_lowprec.training import loss_scaling
from tf_lowprec.export import export_saved_model
from tf_lowprec.gemm.accumulation import Accumulator, matmul
from tf_lowprec.gemm.bf16 import (bf16_conv2d, bf16_conv3d, bf16_conv_transpose,
                                  bf16_matmul)
from tf_lowprec.gemm.dfp import (dfp_conv2d, dfp_conv3d, dfp_conv_transpose,
                                 dfp_gemm_counters, dfp_matmul)
from tf_lowprec.numerics.rounding import (
    quantize,
    quantize_block_scaled,
    quantize_dfp,
    round_gradient,
    round_to_format,
)
from tf_lowprec.keras.policy import Policy, PrecisionSpec, Scaling, strip_policies
from tf_lowprec.keras.coverage import (
    UnemulatedGemmError,
    UnemulatedGemmWarning,
    set_unemulated_gemm_action,
    unemulated_gemm_action,
    unemulated_gemms,
)
from tf_lowprec.training.loss_scaling import (
    AdaptiveLossScaleOptimizer,
    automatic_loss_scaling,
    set_automatic_loss_scaling,
)
from tf_lowprec import datasets
from tf_lowprec.comparison import compare
from tf_lowprec.numerics.stats import precision_stats
from tf_lowprec.training.weight_updates import LowPrecisionWeights
from tf_lowprec.keras import adapter as _adapter
from tf_lowprec.keras import emulation as _emulation  # noqa: F401 (its listeners)

# The one step that patches Keras (idempotent).  On an unsupported Keras the
# numerics still import; constructing a Policy raises the adapter's error.
try:
    _adapter.install()
except _adapter.UnsupportedKerasVersionError:
    pass

# The public submodules of the flat layout keep their import paths
# (`from tf_lowprec.callbacks import PrecisionMonitor`).
for _module in (formats, callbacks, layers, loss_scaling):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
del _module

__version__ = "0.1.0"
SUPPORTED_TENSORFLOW = _op_library.SUPPORTED_TENSORFLOW
SUPPORTED_KERAS = _adapter.SUPPORTED_KERAS_VERSIONS[-1]

__all__ = [
    "Accumulator",
    "AdaptiveLossScaleOptimizer",
    "automatic_loss_scaling",
    "compare",
    "datasets",
    "set_automatic_loss_scaling",
    "LowPrecisionWeights",
    "callbacks",
    "export_saved_model",
    "loss_scaling",
    "BF16",
    "BF16_INTEL",
    "DFP16",
    "E4M3",
    "E4M3FNUZ",
    "E5M2",
    "E5M2FNUZ",
    "FP16",
    "FP32",
    "HFP8_BACKWARD",
    "HFP8_FORWARD",
    "E2M1",
    "E2M3",
    "E3M2",
    "E5M2_SATURATING",
    "INT8_MX",
    "MXFP4_E2M1",
    "MXFP6_E2M3",
    "MXFP6_E3M2",
    "MXFP8_E4M3",
    "MXFP8_E5M2",
    "MXINT8",
    "NVFP4",
    "BlockFormat",
    "DfpFormat",
    "FloatFormat",
    "OpLibraryError",
    "Policy",
    "PrecisionSpec",
    "Scaling",
    "bf16_conv2d",
    "bf16_conv3d",
    "bf16_conv_transpose",
    "bf16_matmul",
    "dfp_conv2d",
    "dfp_conv3d",
    "dfp_conv_transpose",
    "dfp_gemm_counters",
    "dfp_matmul",
    "formats",
    "kernel_tiers",
    "layers",
    "matmul",
    "precision_stats",
    "quantize",
    "quantize_block_scaled",
    "quantize_dfp",
    "round_gradient",
    "round_to_format",
    "strip_policies",
    "set_unemulated_gemm_action",
    "unemulated_gemm_action",
    "unemulated_gemms",
    "UnemulatedGemmError",
    "UnemulatedGemmWarning",
]
