"""Precision configurations, the paper claims that compare them, and the effect sizes.

A configuration changes only the numerics of a run: the layers' dtype policy,
whether the weights themselves are stored in BF16 (and how their update is
rounded) and the loss scaling.  Everything else comes from the domain; no
configuration rescales the loss.
"""

import dataclasses

import keras

import tf_lowprec as lp

# The HFP8 preset with the forward format swapped for FP8 1-5-2: errors and
# weight gradients in 1-5-2, first and last layer in FP16, loss scaling, as in
# "hfp8".  The two arms differ only in the forward format, the contrast Sun et
# al. draw.
FP8_152_FORWARD = lp.PrecisionSpec(
    activations="e5m2", weights="e5m2", errors="hfp8_backward",
    weight_gradients="hfp8_backward", first_last="fp16")



def _fp16_ends(preset):
    """`preset` with its first and last GEMM layer in FP16, as HFP8 keeps them.

    For the other FP8 recipes beside HFP8 (our choice, not their papers'): every
    FP8 arm of the HFP8 claim then keeps the same two layers in FP16, so the
    arms differ only in the format and scaling of the layers between.
    """
    config = lp.keras.policy.get_spec(preset).get_config()
    config["first_last"] = lp.keras.policy.get_spec("fp16").get_config()
    return lp.PrecisionSpec.from_config(config)


FP8_DELAYED_ENDS = _fp16_ends("fp8_delayed")
FP8_WANG_ENDS = _fp16_ends("fp8_wang")
MXFP8_ENDS = _fp16_ends("mxfp8")

# The fixed scale of the "constant loss scaling" arm: 2^15 is where Keras'
# dynamic scaling starts, and no fixed scale above it is needed to lift errors
# of 2^-24 * 2^-15 into half precision's normal range.
FIXED_LOSS_SCALE = 2.0**15

# An arm's role: the control; a method the paper proposes; this library's own
# method beyond the paper ("ours": adaptive loss scaling); a baseline the claim
# contrasts with.
CONTROL, METHOD, OURS, BASELINE = "control", "method", "ours", "baseline"


@dataclasses.dataclass(frozen=True)
class Config:
    """One precision configuration of a run."""

    name: str
    policy: object = None            # None: plain keras float32, else lp.Policy args
    weights: str = None              # None (FP32 master) or the BF16 update rounding
    # None, "dynamic" (Keras' LossScaleOptimizer: 2^15, x2 / 2000 steps),
    # "adaptive" (lp.AdaptiveLossScaleOptimizer) or "fixed" (FIXED_LOSS_SCALE).
    loss_scaling: str = None
    description: str = ""

    def dtype_policy(self):
        if self.policy is None:
            return "float32"
        if isinstance(self.policy, lp.PrecisionSpec):
            return lp.Policy(self.name, spec=self.policy)
        return lp.Policy(self.policy)

    def optimizer(self, domain, seed):
        if self.loss_scaling == "fixed":
            optimizer = domain.base_optimizer(loss_scale_factor=FIXED_LOSS_SCALE)
        else:
            optimizer = domain.base_optimizer()
        if self.weights is not None:
            optimizer = lp.LowPrecisionWeights(optimizer, "bf16", self.weights, seed=seed)
        if self.loss_scaling == "dynamic":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        elif self.loss_scaling == "adaptive":
            optimizer = lp.AdaptiveLossScaleOptimizer(optimizer)
        elif self.loss_scaling not in (None, "fixed"):
            raise ValueError(f"loss_scaling must be None, 'dynamic', 'adaptive' or 'fixed', "
                             f"got {self.loss_scaling!r}")
        return optimizer


CONFIGS = {c.name: c for c in [
    Config("fp32", description="plain Keras float32 (the control)"),
    Config("bf16", "bf16", description="BF16 GEMM inputs (acts, weights, errors), FP32 "
           "accumulation and master weights"),
    Config("dfp16", "dfp16", description="DFP16 (INT16, shared exponent per tensor) GEMM "
           "inputs, INT32 accumulation on the INT16 GEMM, FP32 master weights"),
    Config("fp16, no loss scaling", "fp16",
           description="FP16 operands, errors, weight gradients; FP32 master weights"),
    Config("fp16, fixed loss scale 2^15", "fp16", loss_scaling="fixed",
           description="as above with a constant loss scale of 2^15 (Keras' "
           "loss_scale_factor)"),
    Config("fp16, dynamic loss scaling", "fp16", loss_scaling="dynamic",
           description="as above with Keras' dynamic loss scaling (2^15, halved on "
           "overflow, doubled after 2,000 finite steps)"),
    Config("fp16, adaptive loss scaling", "fp16", loss_scaling="adaptive",
           description="as above with lp.AdaptiveLossScaleOptimizer (this library: "
           "dynamic scaling plus a scale per layer, Zhao et al. 2019)"),
    Config("fp8 1-5-2 forward", FP8_152_FORWARD, loss_scaling="dynamic",
           description="HFP8's arm with a 1-5-2 forward: E5M2 activations and weights, "
           "1-5-2 errors and weight gradients, first/last layer FP16, dynamic loss scaling"),
    Config("hfp8", "hfp8", loss_scaling="dynamic",
           description="HFP8: forward 1-4-3 (bias 11), backward 1-5-2, first/last layer "
           "FP16, dynamic loss scaling"),
    Config("fp8_delayed, ends fp16", FP8_DELAYED_ENDS, loss_scaling="dynamic",
           description="Transformer Engine's delayed-scaling recipe (preset fp8_delayed: E4M3 "
           "activations and weights, E5M2 errors, per-tensor scales from a 1,024-step amax "
           "history), first/last layer FP16 as in hfp8, dynamic loss scaling"),
    Config("fp8_wang, ends fp16", FP8_WANG_ENDS, loss_scaling="dynamic",
           description="Wang et al. 2018 (preset fp8_wang: 1-5-2 operands, errors and weight "
           "gradients, FP16 chunk-64 accumulation; FP32 master weights here), first/last "
           "layer FP16 as in hfp8, dynamic loss scaling"),
    Config("mxfp8, ends fp16", MXFP8_ENDS, loss_scaling="dynamic",
           description="OCP MX (preset mxfp8: E4M3 activations, weights and errors in "
           "blocks of 32 sharing a power-of-two E8M0 scale), first/last layer FP16 as in "
           "hfp8, dynamic loss scaling"),
    Config("bf16 weights, nearest", "bf16", weights="nearest_even",
           description="bf16 policy + weights stored in BF16, update rounded to nearest"),
    Config("bf16 weights, stochastic", "bf16", weights="stochastic",
           description="... update stochastically rounded"),
    Config("bf16 weights, Kahan", "bf16", weights="kahan",
           description="... Kahan-compensated update (BF16 compensation buffer)"),
]}

# Where a paper says "no loss", it reports gaps of 0.1-0.2 pp top-1 (BF16
# ResNet-50 within ±0.1-0.2, DFP16 +0.07, MP +0.12, SR/Kahan -0.1..+0.2):
# the ImageNet seed spread.  A "match" arm may lose this much.
MATCH_PP = 0.2


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm of a claim: its configuration, what the paper expects, and the effect size.

    `effect_pp` is in percentage points of top-1 accuracy (domains convert it
    to their units): for `expected="match"` the largest loss the paper still
    calls no loss, for `"worse"` the smallest loss the paper's claim implies.
    An arm without `expected` is context: it is trained and listed where it
    ties or beats the claim's method, but the paper says nothing of it, so it
    enters no verdict.  `domains`: the claim's workloads this arm runs on
    (None: all of them).
    """

    config: str
    role: str
    expected: str = None
    effect_pp: float = None
    effect_source: str = ""
    domains: tuple = None


@dataclasses.dataclass(frozen=True)
class Claim:
    """A paper's headline claim, its arms (the first is the control) and its domains."""

    name: str
    paper: str
    statement: str
    arms: tuple
    domains: tuple = ("mnist", "digits", "charlm", "recsys")

    @property
    def control(self):
        return self.arms[0].config

    @property
    def configs(self):
        return tuple(arm.config for arm in self.arms)

    def configs_on(self, domain):
        """The configurations this claim trains on `domain` (none if not one of its domains)."""
        if domain not in self.domains:
            return ()
        return tuple(arm.config for arm in self.arms
                     if arm.domains is None or domain in arm.domains)


_FP32 = Arm("fp32", CONTROL)
_HFP8_WORKLOADS = ("mobilenet", "transformer")
_MATCH = f"the 0.1-0.2 pp these papers call no loss (taken as {MATCH_PP} pp)"

CLAIMS = {c.name: c for c in [
    Claim("bf16", "Kalamkar et al. 2019 (arXiv:1905.12322)",
          "BF16 reaches FP32 accuracy in the same number of iterations with no "
          "hyper-parameter change",
          (_FP32, Arm("bf16", METHOD, "match", MATCH_PP, _MATCH))),
    Claim("dfp16", "Das et al. 2018 (arXiv:1802.00930)",
          "DFP16 (INT16 with shared exponents) matches FP32 in the same iterations, no "
          "hyper-parameter change",
          (_FP32, Arm("dfp16", METHOD, "match", MATCH_PP, _MATCH))),
    Claim("loss_scaling", "Micikevicius et al. 2018 (arXiv:1710.03740)",
          "FP16 training fails when errors underflow and works with loss scaling",
          (_FP32,
           Arm("fp16, no loss scaling", BASELINE, "worse", 10.0,
               "SSD 'diverges' without loss scaling: taken as at least 10 pp"),
           Arm("fp16, fixed loss scale 2^15", METHOD, "match", MATCH_PP, _MATCH),
           Arm("fp16, dynamic loss scaling", METHOD, "match", MATCH_PP, _MATCH),
           Arm("fp16, adaptive loss scaling", OURS, "match", MATCH_PP, _MATCH)),
          domains=("underflow",)),
    Claim("hfp8", "Sun et al. 2019 (NeurIPS)",
          "HFP8 (1-4-3 forward, 1-5-2 backward) trains without accuracy loss, unlike an "
          "FP8 1-5-2 forward",
          (_FP32,
           Arm("fp8 1-5-2 forward", BASELINE, "worse", 1.0,
               "'degrades significantly' (the paper's figure not verified): taken as "
               "at least 1 pp"),
           Arm("hfp8", METHOD, "match", 0.5, "HFP8 within ~0.1-0.5 pp of FP32 (unverified)"),
           # Other FP8 recipes for comparison, only where the paper sees the
           # contrast: the workloads are the most expensive to emulate.
           Arm("fp8_delayed, ends fp16", BASELINE, domains=_HFP8_WORKLOADS),
           Arm("fp8_wang, ends fp16", BASELINE, domains=_HFP8_WORKLOADS),
           Arm("mxfp8, ends fp16", BASELINE, domains=_HFP8_WORKLOADS)),
          # Not the char-LM: its only GEMM layers, the GRU and the output dense,
          # are its first and last, which both arms keep in FP16.  MobileNet and
          # Transformer are the workloads where the paper sees FP8 1-5-2 fail.
          domains=("mnist", "digits", "recsys") + _HFP8_WORKLOADS),
    Claim("bf16_updates", "Zamirai et al. 2020 (arXiv:2010.06192)",
          "pure-BF16 weight updates with nearest rounding lose accuracy; stochastic "
          "rounding and Kahan summation recover FP32 accuracy",
          (_FP32,
           Arm("bf16 weights, nearest", BASELINE, "worse", 1.0,
               "SR and Kahan gain 'up to 7%' over nearest: taken as at least 1 pp"),
           Arm("bf16 weights, stochastic", METHOD, "match", MATCH_PP, _MATCH),
           Arm("bf16 weights, Kahan", METHOD, "match", MATCH_PP, _MATCH))),
]}
