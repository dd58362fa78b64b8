"""The papers' headline figures, as docs/papers.md records them.

`verified` is False where docs/papers.md could only recall the number (it had no
full text of the paper); those are printed with "(unverified)".
"""

PAPER_FIGURES = {
    "bf16": [
        ("BF16 = FP32 'in the same number of iterations and with no changes to "
         "hyper-parameters', across image, speech, language, GAN and recommendation", True),
        ("ResNet-50 ImageNet top-1: FP32 and BF16 within ±0.1-0.2 pp; AlexNet 57.4 vs 57.2", False),
    ],
    "dfp16": [
        ("INT16 DFP 'achieve[s] or exceed[s] SOTA accuracy within the same number of iterations "
         "... without any change in hyper-parameters'", True),
        ("ResNet-50 ImageNet top-1: FP32 75.70, DFP16 75.77", False),
        ("1.8x end-to-end training throughput over FP32", True),
        ("measured on Intel Knights Mill (QVNNI INT16 FMAs)", False),
    ],
    "loss_scaling": [
        ("Multibox SSD (VOC2007 mAP): FP32 76.9, FP16 without loss scaling diverges, "
         "with loss scaling 77.1", False),
        ("image classifiers trained in FP16 need no loss scaling (ResNet-50: FP32 75.92, "
         "MP 76.04)", False),
    ],
    "hfp8": [
        ("plain FP8 degrades significantly on MobileNet and Transformer; HFP8 (1-4-3 forward, "
         "1-5-2 backward) trains 'without accuracy degradation'", True),
        ("HFP8 within ~0.1-0.5 pp of FP32 on ResNet-50, MobileNetV2, DenseNet, AlexNet", False),
    ],
    "bf16_updates": [
        ("nearest rounding of BF16 weight updates 'cancels small updates'; SR and Kahan give "
         "'up to 7% absolute' accuracy gain and end 0.1% lower to 0.2% higher than FP32 "
         "across seven applications", True),
        ("'stochastic rounding alone could not fully match 32-bit training on all models'; "
         "Kahan 'closes remaining gaps' (quoted second-hand)", True),
    ],
}


def figures_text(claim):
    return "; ".join(text + ("" if verified else " (unverified)")
                     for text, verified in PAPER_FIGURES[claim])
