"""Small-scale reproduction of the seed papers' headline claims.

    python -m benchmarks.reproduce              # full suite (26 min + 47 min for
                                                # mobilenet/transformer, 2 loaded cores)
    python -m benchmarks.reproduce --quick      # smoke-test sizes (minutes)
    python -m benchmarks.reproduce --tasks bf16 dfp16 --domains digits --seeds 2

Claims (`--tasks`): bf16 (Kalamkar et al. 2019), dfp16 (Das et al. 2018, with
the INT16 GEMM throughput), loss_scaling (Micikevicius et al. 2018), hfp8
(Sun et al. 2019), bf16_updates (Zamirai et al. 2020).  Workloads
(`--domains`): mnist, digits, charlm, recsys; underflow (a workload whose
errors underflow FP16 without any loss multiplier; only the loss_scaling claim
runs on it, and only on it); mobilenet and transformer (a MobileNetV2-style
CNN and a causal Transformer char-LM, hfp8_domains.py: only the hfp8 claim
runs on them, with the fp8_delayed, fp8_wang and mxfp8 recipes beside its arms).
Verdicts are computed from the seed spread (power.py).  Results: benchmarks/results/reproduction.md (and .json,
reproduction_*.png).
"""
