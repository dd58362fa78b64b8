"""tf_lowprec: emulated low-precision training for Keras 3 on TensorFlow.

>>> import tensorflow as tf, tf_lowprec as lp
>>> lp.round_to_format(tf.constant([3.14159]), lp.BF16).numpy()
array([3.140625], dtype=float32)
"""

from tf_lowprec import formats
from tf_lowprec._op_library import OpLibraryError, kernel_tiers
from tf_lowprec.formats import (
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
    DfpFormat,
    FloatFormat,
)
from tf_lowprec import callbacks, layers, loss_scaling
from tf_lowprec.export import export_saved_model
from tf_lowprec.bf16_gemm import bf16_conv2d, bf16_matmul
from tf_lowprec.dfp_gemm import dfp_conv2d, dfp_gemm_counters, dfp_matmul
from tf_lowprec.rounding import quantize, quantize_dfp, round_gradient, round_to_format
from tf_lowprec.policy import Policy, PrecisionSpec
from tf_lowprec.loss_scaling import AdaptiveLossScaleOptimizer
from tf_lowprec.stats import precision_stats
from tf_lowprec.weight_updates import LowPrecisionWeights

__version__ = "0.1.0"
SUPPORTED_TENSORFLOW = "2.21"
SUPPORTED_KERAS = "3.15"

__all__ = [
    "AdaptiveLossScaleOptimizer",
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
    "DfpFormat",
    "FloatFormat",
    "OpLibraryError",
    "Policy",
    "PrecisionSpec",
    "bf16_conv2d",
    "bf16_matmul",
    "dfp_conv2d",
    "dfp_gemm_counters",
    "dfp_matmul",
    "formats",
    "kernel_tiers",
    "layers",
    "precision_stats",
    "quantize",
    "quantize_dfp",
    "round_gradient",
    "round_to_format",
]
