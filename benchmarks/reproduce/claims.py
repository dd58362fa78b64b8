"""Precision configurations and the paper claims that compare them.

A configuration changes only the numerics of a run: the layers' dtype policy,
whether the weights themselves are stored in BF16 (and how their update is
rounded), the loss scaling, and a loss multiplier `c` (see
`LOSS_MULTIPLIER`).  Everything else comes from the domain.
"""

import dataclasses

import keras

import tf_lowprec as lp

# Micikevicius et al.'s failure case is errors below FP16's range (SSD,
# bigLSTM); our small classifiers and LMs have errors well inside it, so, as
# in benchmarks/loss_scaling_experiment.py, the loss is multiplied by c and
# the optimiser adjusted so that FP32 training is unchanged (SGD: lr / c;
# Adam: epsilon * c), which pushes the FP16 errors below 2^-24.
LOSS_MULTIPLIER = 2.0**-18

# FP8 1-5-2 for every GEMM operand, error and weight gradient, no layer
# exceptions: the "plain FP8" Sun et al. contrast HFP8 with.
FP8_152_EVERYWHERE = lp.PrecisionSpec(activations="e5m2", weights="e5m2", errors="e5m2",
                                      weight_gradients="e5m2")


@dataclasses.dataclass(frozen=True)
class Config:
    """One precision configuration of a run."""

    name: str
    policy: object = None            # None: plain keras float32, else lp.Policy args
    weights: str = None              # None (FP32 master) or the BF16 update rounding
    loss_scaling: bool = False       # Keras' dynamic LossScaleOptimizer (2^15, x2 / 2000)
    loss_multiplier: float = 1.0
    description: str = ""

    def dtype_policy(self):
        if self.policy is None:
            return "float32"
        if isinstance(self.policy, lp.PrecisionSpec):
            return lp.Policy(self.name, spec=self.policy)
        return lp.Policy(self.policy)

    def optimizer(self, domain, seed):
        optimizer = domain.base_optimizer(self.loss_multiplier)
        if self.weights is not None:
            optimizer = lp.LowPrecisionWeights(optimizer, "bf16", self.weights, seed=seed)
        if self.loss_scaling:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer


CONFIGS = {c.name: c for c in [
    Config("fp32", description="plain Keras float32 (the control)"),
    Config("bf16", "bf16", description="BF16 GEMM inputs (acts, weights, errors), FP32 "
           "accumulation and master weights"),
    Config("dfp16", "dfp16", description="DFP16 (INT16, shared exponent per tensor) GEMM "
           "inputs, INT32 accumulation on the INT16 GEMM, FP32 master weights"),
    Config("fp32 (loss x c)", loss_multiplier=LOSS_MULTIPLIER,
           description="FP32 with the loss multiplied by c = 2^-18 (optimiser adjusted)"),
    Config("fp16 (loss x c), no loss scaling", "fp16", loss_multiplier=LOSS_MULTIPLIER,
           description="FP16 operands, errors, weight gradients; FP32 master weights"),
    Config("fp16 (loss x c), dynamic loss scaling", "fp16", loss_scaling=True,
           loss_multiplier=LOSS_MULTIPLIER,
           description="as above with Keras' dynamic loss scaling"),
    Config("fp8 1-5-2 everywhere", FP8_152_EVERYWHERE, loss_scaling=True,
           description="E5M2 for all GEMM inputs, errors and weight gradients, dynamic "
           "loss scaling"),
    Config("hfp8", "hfp8", loss_scaling=True,
           description="HFP8: forward 1-4-3 (bias 11), backward 1-5-2, first/last layer "
           "FP16, dynamic loss scaling"),
    Config("bf16 weights, nearest", "bf16", weights="nearest_even",
           description="bf16 policy + weights stored in BF16, update rounded to nearest"),
    Config("bf16 weights, stochastic", "bf16", weights="stochastic",
           description="... update stochastically rounded"),
    Config("bf16 weights, Kahan", "bf16", weights="kahan",
           description="... Kahan-compensated update (BF16 compensation buffer)"),
]}


@dataclasses.dataclass(frozen=True)
class Claim:
    """A paper's headline claim and the configurations that test it."""

    name: str
    paper: str
    statement: str
    configs: tuple
    baseline: str = "fp32"


CLAIMS = {c.name: c for c in [
    Claim("bf16", "Kalamkar et al. 2019 (arXiv:1905.12322)",
          "BF16 reaches FP32 accuracy in the same number of iterations with no "
          "hyper-parameter change", ("fp32", "bf16")),
    Claim("dfp16", "Das et al. 2018 (arXiv:1802.00930)",
          "DFP16 (INT16 with shared exponents) matches FP32 in the same iterations, no "
          "hyper-parameter change", ("fp32", "dfp16")),
    Claim("loss_scaling", "Micikevicius et al. 2018 (arXiv:1710.03740)",
          "FP16 training fails when errors underflow and works with loss scaling",
          ("fp32 (loss x c)", "fp16 (loss x c), no loss scaling",
           "fp16 (loss x c), dynamic loss scaling"), baseline="fp32 (loss x c)"),
    Claim("hfp8", "Sun et al. 2019 (NeurIPS)",
          "HFP8 (1-4-3 forward, 1-5-2 backward) trains without accuracy loss, unlike FP8 "
          "1-5-2 everywhere", ("fp32", "fp8 1-5-2 everywhere", "hfp8")),
    Claim("bf16_updates", "Zamirai et al. 2020 (arXiv:2010.06192)",
          "pure-BF16 weight updates with nearest rounding lose accuracy; stochastic "
          "rounding and Kahan summation recover FP32 accuracy",
          ("fp32", "bf16 weights, nearest", "bf16 weights, stochastic",
           "bf16 weights, Kahan")),
]}
