"""The `tf-lowprec` command (also `python -m tf_lowprec`).

USAGE: tf-lowprec COMMAND [--flag=value ...]

  compare   train one model under several precisions and compare them (the main
            job): --model (cnn, mlp, lstm, a .keras file or module:function),
            --dataset (mnist_5k, an .npz file or a TFDS set prepared in
            --data_dir), --policies, --epochs, --seeds, --out, ...
  formats   round real tensors to each number format and print the errors
  info      print the build, the CPU's instruction sets and each op's kernel tier

`compare` trains one model on one data set under several precision policies
and prints a table of the test metric, loss, step time relative to the first
policy and under/overflow rates; it writes compare.png (each policy's
difference to the first) and compare.json (everything).

`formats` rounds real tensors (the bundled MNIST images, a Glorot-initialised
weight matrix and the layer's pre-activations) to each number format and
prints what the format does to them: relative RMS error, the fraction of
non-zero values that underflow to zero, and the fraction that saturate or
overflow.  (Speed is measured in benchmarks/, not here.)

`info` prints the versions the op library was built against, the CPU's
instruction sets and, for each op, the kernel tier `isa="auto"` runs
(avx512, avx2 or portable) and the tiers available.

Flags, help (--help: this command's flags, --helpfull: all) and logging are
absl's, as in TensorFlow's own tools; errors exit with status 1.
"""

import sys

import numpy as np
from absl import app
from absl import flags


COMMANDS = ("compare", "formats", "info")
FLAGS = flags.FLAGS

# compare
_POLICIES = flags.DEFINE_list(
    "policies", "fp32,bf16,fp16,hfp8,dfp16",
    "compare: comma-separated NAME[:ROUNDING][+als|+ls|+none] entries, e.g. bf16:stochastic "
    "or fp16+als; without a suffix compile adds loss scaling where the policy needs it. The "
    "first entry is the baseline of every difference and ratio.")
_MODEL = flags.DEFINE_string(
    "model", None,
    "compare: cnn, mlp, lstm, a .keras file (cloned per policy, from its weights) or "
    "module:function returning a new Keras model (called under each policy; it may take "
    "input_shape and num_classes). Default: cnn for images, lstm for token sequences, mlp "
    "otherwise.")
_DATASET = flags.DEFINE_string(
    "dataset", "mnist_5k",
    "compare: mnist_5k (bundled), an .npz file with x_train, y_train, x_test, y_test, or the "
    "name of a TFDS data set prepared in --data_dir (nothing is downloaded)")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "compare: the TFDS data_dir")
_FEATURES = flags.DEFINE_list(
    "features", None,
    "compare: INPUT,LABEL features of a TFDS set without supervised keys (default: its one "
    "ClassLabel feature and its one other feature)")
_SPLITS = flags.DEFINE_list("splits", ["train", "test"],
                            "compare: TRAIN,TEST splits of a TFDS set, e.g. "
                            "train[:80%],train[80%:]")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "compare: epochs per run", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "compare: batch size", lower_bound=1)
_TRAIN_SAMPLES = flags.DEFINE_integer("train_samples", None,
                                      "compare: use only the first N training examples",
                                      lower_bound=1)
_SEEDS = flags.DEFINE_integer("seeds", 1, "compare: runs per policy (seeds --seed, --seed+1, "
                              "...); the plot shows their spread", lower_bound=1)
_LOSS = flags.DEFINE_string("loss", None, "compare: loss (default: the model's compile "
                            "configuration; the built-ins use sparse categorical "
                            "cross-entropy on logits)")
_METRICS = flags.DEFINE_list("metrics", None, "compare: metrics (default: the model's, else "
                             "accuracy)")
_OPTIMIZER = flags.DEFINE_string("optimizer", None, "compare: optimizer name (default: the "
                                 "model's, else adam)")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", None,
                                    "compare: learning rate (default: the optimizer's)")
_MONITOR_EVERY = flags.DEFINE_integer("monitor_every", 20,
                                      "compare: PrecisionMonitor sampling interval in steps",
                                      lower_bound=1)
_OUT = flags.DEFINE_string("out", "tf_lowprec_compare",
                           "compare: output folder for compare.json and compare.png")
# formats
DEFAULT_FORMATS = "bf16,fp16,e4m3,e5m2,hfp8_forward,hfp8_backward,dfp16"
_FORMATS = flags.DEFINE_list("formats", DEFAULT_FORMATS,
                             "formats: comma-separated format preset names")
_ROUNDING = flags.DEFINE_enum("rounding", "nearest_even",
                              ["nearest_even", "stochastic", "toward_zero"],
                              "formats: rounding mode")
# both
_SEED = flags.DEFINE_integer("seed", 0, "compare: the first seed; formats: the seed of "
                             "stochastic rounding")


@flags.validator("policies", "give comma-separated NAME[:ROUNDING][+als|+ls|+none] entries")
def _check_policies(entries):
    from tf_lowprec import comparison  # noqa: PLC0415

    if not entries:
        raise flags.ValidationError("give at least one policy")
    for entry in entries:
        try:
            comparison.parse_entry(entry)
        except comparison.CompareError as e:
            raise flags.ValidationError(str(e)) from e
    return True


@flags.validator("formats", "give comma-separated format preset names")
def _check_formats(names):
    from tf_lowprec.numerics import formats  # noqa: PLC0415

    if not names:
        raise flags.ValidationError("give at least one format")
    for name in names:
        try:
            formats.get(name)
        except ValueError as e:
            raise flags.ValidationError(str(e)) from e
    return True


def _run_compare():
    from tf_lowprec.cli import compare  # noqa: PLC0415

    return compare.run(
        policies=_POLICIES.value, model=_MODEL.value, dataset=_DATASET.value,
        data_dir=_DATA_DIR.value, features=_FEATURES.value, splits=_SPLITS.value,
        epochs=_EPOCHS.value, batch_size=_BATCH_SIZE.value, train_samples=_TRAIN_SAMPLES.value,
        seeds=_SEEDS.value, seed=_SEED.value, loss=_LOSS.value, metrics=_METRICS.value,
        optimizer=_OPTIMIZER.value, learning_rate=_LEARNING_RATE.value,
        monitor_every=_MONITOR_EVERY.value, out_dir=_OUT.value)


def _tensors():
    """Real activations, weights and pre-activations (float32 numpy arrays)."""
    from tf_lowprec import datasets  # noqa: PLC0415

    (x_train, _), _ = datasets.load_mnist_5k()
    images = x_train[:1000].reshape(1000, -1)
    rng = np.random.default_rng(0)
    limit = np.sqrt(6.0 / (784 + 128))
    weights = rng.uniform(-limit, limit, size=(784, 128)).astype(np.float32)
    return {
        "images": images,
        "weights": weights,
        "pre-activations": (images @ weights).astype(np.float32),
    }


def _statistics(original, rounded, fmt):
    nonzero = original != 0
    err = rounded.astype(np.float64) - original
    rel_rms = np.sqrt(np.mean(err**2)) / max(np.sqrt(np.mean(original.astype(np.float64) ** 2)),
                                             1e-300)
    underflow = np.mean(rounded[nonzero] == 0) if nonzero.any() else 0.0
    limit = getattr(fmt, "max_value", None)
    if limit is None:
        overflow = 0.0
    else:
        overflow = np.mean((np.abs(rounded) >= limit) & (np.abs(original) > limit))
    return rel_rms, underflow, overflow


def _run_formats():
    import tensorflow as tf  # noqa: PLC0415

    import tf_lowprec as lp  # noqa: PLC0415

    chosen = [(name, lp.formats.get(name)) for name in _FORMATS.value]
    tensors = {k: tf.constant(v) for k, v in _tensors().items()}
    print(f"tf_lowprec {lp.__version__}: rounding real tensors (MNIST 5k sample), "
          f"rounding={_ROUNDING.value}")
    header = f"{'format':<14}{'tensor':<17}{'rel. RMS error':>15}{'underflow':>11}{'overflow':>10}"
    print(header)
    print("-" * len(header))
    for name, fmt in chosen:
        for tensor_name, x in tensors.items():
            y = lp.quantize(x, fmt, _ROUNDING.value, seed=_SEED.value)
            rel_rms, underflow, overflow = _statistics(x.numpy(), y.numpy(), fmt)
            print(f"{name:<14}{tensor_name:<17}{rel_rms:>15.3e}{underflow:>11.2%}"
                  f"{overflow:>10.2%}")
    return 0


_OP_NAMES = {"rounding": "round_to_format / quantize_dfp", "dfp_gemm": "dfp_matmul (INT16 GEMM)",
             "bf16_gemm": "bf16_matmul (BF16 GEMM)",
             "accumulation_gemm": "matmul (low-precision accumulation)"}


def _run_info():
    import platform  # noqa: PLC0415

    import tf_lowprec as lp  # noqa: PLC0415
    from tf_lowprec import _op_library  # noqa: PLC0415

    build = _op_library.build_info() or {}
    tiers = lp.kernel_tiers()
    print(f"tf_lowprec {lp.__version__}; ops built against TensorFlow "
          f"{build.get('tensorflow_version', '?')}, Keras {build.get('keras_version', '?')} "
          f"({build.get('compiler', '?')})")
    cpu = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in tiers["cpu"].items())
    print(f"CPU: {_cpu_model() or platform.machine()}; {cpu}")
    print(f"{'op':<36}{'auto runs':<11}available tiers")
    for op, name in _OP_NAMES.items():
        print(f"{name:<36}{tiers[op]['auto']:<11}{', '.join(tiers[op]['available'])}")
    return 0


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _main(argv):
    """absl's main: `argv` is the command line without the flags."""
    if len(argv) < 2:
        raise app.UsageError(f"give a command: {', '.join(COMMANDS)}")
    if argv[1] not in COMMANDS:
        raise app.UsageError(f"unknown command {argv[1]!r}; commands: {', '.join(COMMANDS)}")
    if len(argv) > 2:
        raise app.UsageError(f"unexpected arguments {' '.join(argv[2:])!r} (flags are "
                             "--name=value)")
    return {"compare": _run_compare, "formats": _run_formats, "info": _run_info}[argv[1]]()


def _parse_flags(argv):
    # Every call parses from the defaults (main() may run several times in one process).
    FLAGS.unparse_flags()
    return app.parse_flags_with_usage(argv)


def main(argv=None):
    """Runs `tf-lowprec ARGV` (default: sys.argv[1:]) through absl.app; exits with its status."""
    # absl's --help prints the __main__ module's docstring and the key flags of
    # the program: for the console script, whose __main__ has neither, give it ours.
    program = sys.modules.get("__main__")
    if program is not None and not getattr(program, "__doc__", None):
        program.__doc__ = __doc__
    for name in _KEY_FLAGS:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    argv = ["tf-lowprec"] + list(sys.argv[1:] if argv is None else argv)
    app.run(_main, argv=argv, flags_parser=_parse_flags)


_KEY_FLAGS = ("policies", "model", "dataset", "data_dir", "features", "splits", "epochs",
              "batch_size", "train_samples", "seeds", "loss", "metrics", "optimizer",
              "learning_rate", "monitor_every", "out", "formats", "rounding", "seed")


def run():
    """Console-script entry point."""
    main()


if __name__ == "__main__":
    run()
