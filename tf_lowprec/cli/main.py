"""The `tf-lowprec` command (also `python -m tf_lowprec`).

    tf-lowprec compare [--policies=fp32,bf16,fp16+als,hfp8,dfp16] [--epochs=3] ...
    tf-lowprec formats [--formats=bf16,fp16,...] [--rounding=nearest_even]
    tf-lowprec info

`compare` (the main job) trains one model on the bundled MNIST sample (or a
local TFDS data set) under several precision policies and prints a table of
accuracy, loss, step time relative to the first policy and under/overflow
rates; it writes the learning curves as a PNG and the numbers as JSON.

`formats` rounds real tensors (the bundled MNIST images, a Glorot-initialised
weight matrix and the layer's pre-activations) to each number format and
prints what the format does to them: relative RMS error, the fraction of
non-zero values that underflow to zero, and the fraction that saturate or
overflow.  (Speed is measured in benchmarks/, not here.)

`info` prints the versions the op library was built against, the CPU's
instruction sets and, for each op, the kernel tier `isa="auto"` runs
(avx512, avx2 or portable) and the tiers available.

Usage errors exit with status 2, like TensorFlow's tools.
"""

import argparse
import sys

import numpy as np

DEFAULT_FORMATS = "bf16,fp16,e4m3,e5m2,hfp8_forward,hfp8_backward,dfp16"


def _parser():
    parser = argparse.ArgumentParser(
        prog="tf-lowprec",
        description="Emulated low-precision numerics for Keras 3 / TensorFlow.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    compare = commands.add_parser(
        "compare",
        help="train one model under several precisions and compare them (the main job)",
        description="Train one model under several precision policies on the bundled MNIST "
        "sample (or a local TFDS data set); print accuracy, loss, relative step time and "
        "under/overflow rates; write compare.png and compare.json.",
    )
    compare.add_argument(
        "--policies", default="fp32,bf16,fp16+als,hfp8,dfp16",
        help="comma-separated NAME[:ROUNDING][+als|+ls] entries, e.g. bf16:stochastic or "
        "fp16+als (default: fp32,bf16,fp16+als,hfp8,dfp16); the first is the time baseline",
    )
    compare.add_argument("--dataset", default="mnist_5k",
                         help="mnist_5k (bundled, default) or a TFDS image data set prepared "
                         "in --data_dir (no download)")
    compare.add_argument("--data_dir", default=None, help="TFDS data_dir")
    compare.add_argument("--model", default="cnn", choices=["cnn", "mlp"])
    compare.add_argument("--epochs", type=_positive_int, default=3)
    compare.add_argument("--batch_size", type=_positive_int, default=64)
    compare.add_argument("--train_samples", type=_positive_int, default=None,
                         help="use only the first N training images")
    compare.add_argument("--learning_rate", type=float, default=1e-3)
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--monitor_every", type=_positive_int, default=20,
                         help="PrecisionMonitor sampling interval in steps")
    compare.add_argument("--out", default="tf_lowprec_compare",
                         help="output folder for compare.json and compare.png")
    formats = commands.add_parser(
        "formats",
        help="round real tensors to each format and print the error statistics",
        description="Round the bundled MNIST images, a dense layer's weights and its "
        "pre-activations to each number format; print errors, underflow and overflow.",
    )
    formats.add_argument(
        "--formats",
        default=DEFAULT_FORMATS,
        help=f"comma-separated preset names (default: {DEFAULT_FORMATS})",
    )
    formats.add_argument(
        "--rounding",
        default="nearest_even",
        choices=["nearest_even", "stochastic", "toward_zero"],
        help="rounding mode (default: nearest_even)",
    )
    formats.add_argument("--seed", type=int, default=0, help="seed of stochastic rounding")
    commands.add_parser(
        "info",
        help="print the build, the CPU's instruction sets and the kernel tier of each op",
        description="Print the TensorFlow/Keras the ops were built against, the CPU's "
        "instruction sets and, per op, the kernel tier isa='auto' runs.",
    )
    return parser


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _run_compare(args):
    from tf_lowprec.cli import compare  # noqa: PLC0415

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise _UsageError("--policies: give at least one policy")
    try:
        for entry in policies:
            compare.parse_entry(entry)
    except compare.CompareError as e:
        raise _UsageError(f"--policies: {e}") from e
    try:
        compare.compare(
            policies, dataset=args.dataset, data_dir=args.data_dir, model=args.model,
            epochs=args.epochs, batch_size=args.batch_size, train_samples=args.train_samples,
            seed=args.seed, learning_rate=args.learning_rate,
            monitor_every=args.monitor_every, out_dir=args.out,
        )
    except compare.CompareError as e:
        print(f"tf-lowprec compare: error: {e}", file=sys.stderr)
        return 1
    return 0


def _tensors():
    """Real activations, weights and pre-activations (float32 numpy arrays)."""
    from tf_lowprec.cli import datasets  # noqa: PLC0415

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


def _run_formats(args):
    import tensorflow as tf  # noqa: PLC0415

    import tf_lowprec as lp  # noqa: PLC0415

    names = [n.strip() for n in args.formats.split(",") if n.strip()]
    try:
        chosen = [(name, lp.formats.get(name)) for name in names]
    except ValueError as e:
        raise _UsageError(f"--formats: {e}") from e
    if not chosen:
        raise _UsageError("--formats: give at least one format")
    tensors = {k: tf.constant(v) for k, v in _tensors().items()}
    print(f"tf_lowprec {lp.__version__}: rounding real tensors (MNIST 5k sample), "
          f"rounding={args.rounding}")
    header = f"{'format':<14}{'tensor':<17}{'rel. RMS error':>15}{'underflow':>11}{'overflow':>10}"
    print(header)
    print("-" * len(header))
    for name, fmt in chosen:
        for tensor_name, x in tensors.items():
            y = lp.quantize(x, fmt, args.rounding, seed=args.seed)
            rel_rms, underflow, overflow = _statistics(x.numpy(), y.numpy(), fmt)
            print(f"{name:<14}{tensor_name:<17}{rel_rms:>15.3e}{underflow:>11.2%}"
                  f"{overflow:>10.2%}")
    return 0


_OP_NAMES = {"rounding": "round_to_format / quantize_dfp", "dfp_gemm": "dfp_matmul (INT16 GEMM)",
             "bf16_gemm": "bf16_matmul (BF16 GEMM)",
             "accumulation_gemm": "matmul (low-precision accumulation)"}


def _run_info(args):
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


class _UsageError(Exception):
    pass


class _HelpFull(argparse.Action):
    """--helpfull, as absl-based TensorFlow tools have: help of every command."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the help of every command and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        for action in parser._subparsers._group_actions:
            for name, subparser in action.choices.items():
                print(f"\n--- tf-lowprec {name} ---")
                subparser.print_help()
        parser.exit()


def main(argv=None):
    parser = _parser()
    parser.add_argument("--helpfull", action=_HelpFull)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        commands = {"compare": _run_compare, "formats": _run_formats, "info": _run_info}
        return commands[args.command](args)
    except _UsageError as e:
        parser.error(str(e))  # exits with status 2


def run():
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
