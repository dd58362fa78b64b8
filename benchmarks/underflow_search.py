"""Natural FP16 underflow: workloads whose errors leave FP16's range with no loss multiplier.

Issue 19, item 3.  For each candidate workload (all on the bundled MNIST sample,
SGD with momentum 0.9, learning rate cosine-decayed to 0, no loss multiplier):

  segmentation  foreground mask of noisy digits (Gaussian noise 0.5, clipped),
                3 conv 3x3 16 'same' + conv 1x1, per-pixel binary cross-entropy
                averaged over batch x 784 pixels (about 10^5 terms), so each
                output error is (p - y) / 10^5; metric: foreground IoU (%)
  deep_segmentation  the same with 6 convolutions initialised small
                (VarianceScaling(0.5)): the errors also shrink about 2x per layer
  gap_conv      the same convolutions, global average pooling over the 28x28
                map, dense 10: each position's error is divided by 784 x batch;
                metric: test accuracy (%)
  deep_mlp      12 x 64 ReLU dense + dense 10 (Glorot init), cross-entropy;
                metric: test accuracy (%)

it measures, in FP32, the fraction of every GEMM layer's output errors (dL/dY)
and weight gradients that FP16 would flush to zero (|x| <= 2^-25) or keep as a
subnormal, at initialisation and after the FP32 run of seed 0, and then trains
five arms over the same seeds: fp32, fp16 without loss scaling, fp16 with
Keras' dynamic LossScaleOptimizer, and fp16 with lp.AdaptiveLossScaleOptimizer
(local rule; paper rule from a loss scale of 1).  Each arm's mean, sample std
and minimal detectable difference against fp32 (benchmarks/reproduce/power.py)
are written out.

Run:  nice -n 5 python benchmarks/underflow_search.py [--seeds 3] [--candidates ...]
Writes benchmarks/results/avx2_zen3/natural_underflow.{md,json}.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_lowprec as lp  # noqa: E402
import results_io  # noqa: E402  (benchmarks/results_io.py, beside this script)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchmarks.reproduce import data, power  # noqa: E402

ARMS = ("fp32", "fp16, no loss scaling", "fp16, Keras dynamic", "fp16, adaptive (local)",
        "fp16, adaptive (paper, scale 1)")


def _cosine(lr, steps):
    return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1))


def noisy_masks(x, seed, noise=0.5):
    """(x plus Gaussian noise of std `noise` clipped to [0, 1], foreground mask x > 0.5)."""
    rng = np.random.default_rng(seed)
    noisy = np.clip(x + rng.normal(0.0, noise, x.shape), 0.0, 1.0).astype(np.float32)
    return noisy, (x > 0.5).astype(np.float32)


def iou(mask, logits):
    """Foreground intersection over union (%), all test pixels pooled."""
    pred, true = logits > 0, mask > 0.5
    return 100.0 * float(np.sum(pred & true) / max(np.sum(pred | true), 1))


def _convs(policy, channels=16, depth=3, init_scale=None):
    """`depth` conv 3x3 'same' + ReLU; kernels Glorot uniform, or with `init_scale`
    VarianceScaling(init_scale) (fan-in normal: 2.0 is He, below it the signal and the
    errors shrink by sqrt(init_scale / 2) per layer)."""
    init = "glorot_uniform" if init_scale is None else keras.initializers.VarianceScaling(
        init_scale, distribution="truncated_normal")
    layers = [keras.Input((28, 28, 1))]
    for _ in range(depth):
        layers += [keras.layers.Conv2D(channels, 3, padding="same", kernel_initializer=init,
                                       dtype=policy), keras.layers.ReLU()]
    return layers


class Candidate:
    name = ""
    lr, epochs, batch = 0.1, 3, 128
    depth, init_scale = 3, None  # of the convolutions (segmentation, gap_conv)

    def __init__(self):
        (xtr, ytr), (xte, yte) = data.mnist()
        self.train, self.test = (xtr, ytr), (xte, yte)

    @property
    def steps(self):
        return self.epochs * -(-len(self.train[1]) // self.batch)

    def optimizer(self):
        return keras.optimizers.SGD(_cosine(self.lr, self.steps), momentum=0.9)

    def loss(self):
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def metric(self, model):
        x, y = self.test
        logits = model.predict(x, batch_size=500, verbose=0)
        return 100.0 * float(np.mean(np.argmax(logits, -1) == y))


class Segmentation(Candidate):
    name, lr, epochs = "segmentation", 0.2, 3
    metric_name = "foreground IoU (%)"
    detail = ("noisy digits (Gaussian noise 0.5) -> foreground mask (clean pixel > 0.5); conv "
              "3x3 16 x3 + conv 1x1; per-pixel BCE averaged over batch x 784 pixels")

    def __init__(self):
        super().__init__()
        self.train = noisy_masks(self.train[0], seed=0)
        self.test = noisy_masks(self.test[0], seed=1)

    def build(self, policy):
        return keras.Sequential(_convs(policy, depth=self.depth, init_scale=self.init_scale)
                                + [keras.layers.Conv2D(1, 1, dtype=policy)])

    def loss(self):
        return keras.losses.BinaryCrossentropy(from_logits=True)

    def metric(self, model):
        x, y = self.test
        return iou(y, model.predict(x, batch_size=500, verbose=0))


class DeepSegmentation(Segmentation):
    name, depth, init_scale = "deep_segmentation", 6, 0.5
    detail = ("as segmentation with 6 conv 3x3 16, kernels VarianceScaling(0.5) (signal and "
              "errors shrink by about 2x per layer)")


class GapConv(Candidate):
    name, lr, epochs = "gap_conv", 0.5, 3
    metric_name = "test accuracy (%)"
    detail = ("conv 3x3 16 x3 at 28x28, global average pooling, dense 10; cross-entropy "
              "(errors at each position divided by 784 x batch)")

    def build(self, policy):
        return keras.Sequential(_convs(policy, depth=self.depth, init_scale=self.init_scale)
                                + [keras.layers.GlobalAveragePooling2D(),
                                                  keras.layers.Dense(10, dtype=policy)])


class DeepMlp(Candidate):
    name, lr, epochs = "deep_mlp", 0.05, 15
    metric_name = "test accuracy (%)"
    detail = "12 x 64 ReLU dense + dense 10 (Glorot uniform init), cross-entropy"

    def build(self, policy):
        layers = [keras.Input((28, 28, 1)), keras.layers.Flatten()]
        for _ in range(12):
            layers += [keras.layers.Dense(64, dtype=policy), keras.layers.ReLU()]
        return keras.Sequential(layers + [keras.layers.Dense(10, dtype=policy)])


CANDIDATES = {c.name: c for c in (Segmentation, DeepSegmentation, GapConv, DeepMlp)}


def fp16_fractions(model, x, y, loss_fn):
    """Per GEMM layer (input first), the % of non-zero FP32 errors dL/dY and weight gradients
    that FP16 flushes to zero and that it keeps only as subnormals: {"errors", "weight_grads"}
    each a list of [underflow %, subnormal %]."""
    outputs, h = [], tf.constant(x)
    with tf.GradientTape() as tape:
        for layer in model.layers:
            h = layer(h)
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                tape.watch(h)
                outputs.append(h)
        loss = loss_fn(y, h)
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    grads = tape.gradient(loss, outputs + kernels)

    def pct(g):
        s = lp.precision_stats(g, lp.FP16)
        return [round(100.0 * float(s["underflow"]), 1), round(100.0 * float(s["subnormal"]), 1)]

    return {"errors": [pct(g) for g in grads[:len(outputs)]],
            "weight_grads": [pct(g) for g in grads[len(outputs):]]}


def make_optimizer(arm, inner):
    if arm == "fp16, Keras dynamic":
        return keras.optimizers.LossScaleOptimizer(inner)
    if arm == "fp16, adaptive (local)":
        return lp.AdaptiveLossScaleOptimizer(inner)
    if arm == "fp16, adaptive (paper, scale 1)":
        return lp.AdaptiveLossScaleOptimizer(inner, initial_scale=1.0, scaling_rule="paper")
    return inner


def train(candidate, arm, seed, probe=None):
    """One run: (metric, final training loss, CPU seconds, fractions after training or None)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = candidate.build("float32" if arm == "fp32" else lp.Policy("fp16"))
    # Each arm names its own loss scaling ("no loss scaling" is one).
    with lp.loss_scaling.automatic_loss_scaling_mode(None):
        model.compile(optimizer=make_optimizer(arm, candidate.optimizer()),
                      loss=candidate.loss())
    x, y = candidate.train
    fractions = {}
    if probe:
        fractions["init"] = fp16_fractions(model, x[:candidate.batch], y[:candidate.batch],
                                           candidate.loss())
    start = time.process_time()
    history = model.fit(x, y, batch_size=candidate.batch, epochs=candidate.epochs, verbose=0)
    seconds = time.process_time() - start
    if probe:
        fractions["end"] = fp16_fractions(model, x[:candidate.batch], y[:candidate.batch],
                                          candidate.loss())
    return candidate.metric(model), history.history["loss"], seconds, fractions


def run_candidate(candidate, seeds):
    arms, fractions = {}, {}
    for arm in ARMS:
        metrics, curves, seconds = [], [], []
        for seed in range(seeds):
            # FP32 errors at init and after FP32 training; after fp16-unscaled training too.
            probe = seed == 0 and arm in ("fp32", "fp16, no loss scaling")
            metric, curve, cpu, frac = train(candidate, arm, seed, probe)
            metrics.append(metric)
            curves.append([float(v) for v in curve])
            seconds.append(cpu)
            if probe:
                fractions[arm] = frac
        stats = power.arm_stats(metrics)
        arms[arm] = dict(stats, metrics=metrics, curves=curves,
                         cpu_seconds_mean=float(np.mean(seconds)))
        print(f"{candidate.name:<13} {arm:<32} {stats['mean']:7.2f} ± {stats['std']:.2f}  "
              f"{metrics}  loss {curves[0][-1]:.4g}  {np.mean(seconds):.0f} s CPU", flush=True)
    control = arms["fp32"]
    for arm, row in arms.items():
        if arm != "fp32":
            row["delta"] = row["mean"] - control["mean"]
            row["mdd"] = power.detectable_difference(control, row)
    return {"candidate": candidate.name, "detail": candidate.detail, "run": _run_meta(),
            "metric": candidate.metric_name, "lr": candidate.lr, "epochs": candidate.epochs,
            "batch": candidate.batch, "steps": candidate.steps, "arms": arms,
            "fractions": fractions}


def _run_meta():
    meta = results_io.metadata()
    return {k: meta[k] for k in ("command", "date", "load_average")}


def _previous(out_dir, names):
    """The candidates of an earlier run of this script not rerun now (their own `run` kept)."""
    path = os.path.join(out_dir, "natural_underflow.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        previous = json.load(f)
    meta = previous["meta"]
    kept = [r for r in previous["results"] if r["candidate"] not in names]
    for r in kept:
        r.setdefault("run", {k: meta[k] for k in ("command", "date", "load_average")})
    return kept


def _fractions_line(f):
    return " · ".join(f"{u:g}/{s:g}" for u, s in f)


def write(results, args):
    meta = results_io.metadata(tf_lowprec=lp.__version__, seeds=args.seeds,
                               data="bundled MNIST sample: 4,000 train / 1,000 test")
    lines = [
        "# Natural FP16 underflow: candidates without a loss multiplier",
        "",
        f"CPU {meta['cpu']}, tier avx2_zen3, 2 cores shared with other jobs (load average "
        "above 2 means the runs were slowed, not changed: CPU seconds are reported). Each "
        "candidate's command, date and load average are under its heading; the last: "
        f"`nice -n 5 {meta['command']}` ({meta['date']}).",
        "",
        "Every arm: the same data, model, SGD (momentum 0.9, learning rate cosine-decayed to "
        f"0), batch and steps; seeds 0-{args.seeds - 1}. `lp.Policy(\"fp16\")` rounds GEMM "
        "operands, errors and weight gradients to IEEE half; master weights FP32. MDD: "
        "the minimal detectable difference against fp32 (benchmarks/reproduce/power.py, "
        "two-sided 5 %, 80 % power).",
        "",
    ]
    for r in results:
        run = r["run"]
        lines += [f"## {r['candidate']}: {r['metric']}", "",
                  f"{r['detail']}; SGD lr {r['lr']}, batch {r['batch']}, {r['epochs']} epochs "
                  f"({r['steps']} steps). Run: `nice -n 5 {run['command']}` ({run['date']}, "
                  f"load average {run['load_average']:.2f}).", "",
                  "FP16 underflow / subnormal (% of non-zero FP32 values), per GEMM layer "
                  "input first, on one training batch (underflow/subnormal):", "",
                  "| when | errors dL/dY | weight gradients |", "|---|---|---|"]
        for arm, label in (("fp32", "FP32 model"), ("fp16, no loss scaling",
                                                     "fp16-unscaled model")):
            for when in ("init", "end"):
                f = r["fractions"].get(arm, {}).get(when)
                if f and not (when == "init" and arm != "fp32"):
                    # The fp16 model's kernel gradients are already rounded: not shown.
                    wg = _fractions_line(f["weight_grads"]) if arm == "fp32" else "(rounded)"
                    lines.append(f"| {label}, {'initialisation' if when == 'init' else 'end'} "
                                 f"| {_fractions_line(f['errors'])} | "
                                 f"{wg} |")
        lines += ["", "| arm | mean ± std | per seed | Δ vs fp32 | MDD | final train loss "
                  "(seed 0) | CPU s / run |", "|---|---|---|---|---|---|---|"]
        for arm, a in r["arms"].items():
            per_seed = ", ".join(f"{m:.2f}" for m in a["metrics"])
            delta = "" if arm == "fp32" else f"{a['delta']:+.2f}"
            mdd = "" if arm == "fp32" else f"{a['mdd']:.2f}"
            lines.append(f"| {arm} | {a['mean']:.2f} ± {a['std']:.2f} | {per_seed} | {delta} | "
                         f"{mdd} | {a['curves'][0][-1]:.4g} | {a['cpu_seconds_mean']:.0f} |")
        lines.append("")
    results_io.write(args.out_dir, "natural_underflow", meta, results, lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    # deep_segmentation is not run by default: FP32 itself stays at the all-background
    # solution on 2 of seeds 0-2 (docs/loss_scaling.md, "Natural underflow").
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES),
                        default=[c for c in CANDIDATES if c != "deep_segmentation"])
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results", "avx2_zen3"))
    args = parser.parse_args(argv)
    results = [run_candidate(CANDIDATES[name](), args.seeds) for name in args.candidates]
    # Candidates run earlier (another invocation) stay in the file, in the script's order.
    results += _previous(args.out_dir, args.candidates)
    order = list(CANDIDATES)
    write(sorted(results, key=lambda r: order.index(r["candidate"])), args)


if __name__ == "__main__":
    main()
