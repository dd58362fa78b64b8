"""`tf-lowprec compare`: one model trained under several precisions, side by side.

Each entry of `policies` is `NAME[:ROUNDING][+als|+ls]`: a policy preset
("fp32", "bf16", "fp16", "hfp8", "fp8", "dfp16"), optionally with a rounding
mode for every rounded role (e.g. "bf16:stochastic"), and optionally with
adaptive layer-wise loss scaling ("+als", `lp.AdaptiveLossScaleOptimizer`) or
Keras' global dynamic loss scaling ("+ls").  Every entry trains the same
architecture from the same initial weights on the same batches; the table
reports test accuracy and loss, the training-step time relative to the first
entry (measured in the same run), and the under/overflow rates that
`PrecisionMonitor` saw.

>>> from tf_lowprec.cli import compare
>>> compare.parse_entry("fp16+als")
('fp16', None, 'als')
"""

import json
import os
import time

import keras
import numpy as np

from tf_lowprec.training import callbacks as callbacks_lib
from tf_lowprec.cli import datasets
from tf_lowprec.training import loss_scaling
from tf_lowprec.keras import policy as policy_lib

DEFAULT_POLICIES = ("fp32", "bf16", "fp16+als", "hfp8", "dfp16")
MODELS = ("cnn", "mlp")
_SCALING = {"als": "adaptive", "ls": "dynamic"}


class CompareError(Exception):
    """A problem the user can fix (bad entry, unavailable data set)."""


def parse_entry(entry):
    """Splits "name[:rounding][+als|+ls]" into (name, rounding or None, scaling or None)."""
    scaling = None
    if "+" in entry:
        entry, scaling = entry.split("+", 1)
        if scaling not in _SCALING:
            raise CompareError(f"unknown loss scaling '+{scaling}': use +als (adaptive) or +ls")
    rounding = None
    if ":" in entry:
        entry, rounding = entry.split(":", 1)
    if entry not in policy_lib.PRESETS:
        raise CompareError(
            f"unknown policy {entry!r}; presets: {', '.join(policy_lib.PRESETS)}"
        )
    if rounding is not None and rounding not in ("nearest_even", "stochastic", "toward_zero"):
        raise CompareError(
            f"unknown rounding {rounding!r}; use nearest_even, stochastic or toward_zero"
        )
    return entry, rounding, scaling


def load_data(dataset, data_dir=None, train_samples=None):
    """((x_train, y_train), (x_test, y_test)) as float32 NHWC images in [0, 1] and int labels."""
    if dataset in ("mnist_5k", "bundled"):
        (x_train, y_train), (x_test, y_test) = datasets.load_mnist_5k()
        x_train, x_test = x_train[..., None], x_test[..., None]
    else:
        try:
            import tensorflow_datasets as tfds  # noqa: PLC0415
        except ImportError as e:
            raise CompareError(
                f"--dataset={dataset} needs tensorflow_datasets, which is not installed "
                "(pip install tensorflow-datasets); the bundled data is --dataset=mnist_5k"
            ) from e
        try:
            train, test = tfds.load(dataset, split=["train", "test"], as_supervised=True,
                                    data_dir=data_dir, download=False, batch_size=-1)
        except Exception as e:  # noqa: BLE001 - tfds raises many kinds; all mean "not here"
            raise CompareError(
                f"TFDS data set {dataset!r} is not prepared in data_dir={data_dir!r} and cannot "
                f"be downloaded here ({type(e).__name__}: {e}). Prepare it where there is a "
                "network (tfds.load(..., data_dir=...)) and pass --data_dir, or use the bundled "
                "--dataset=mnist_5k"
            ) from e
        (x_train, y_train), (x_test, y_test) = [
            (np.asarray(x, np.float32) / 255.0, np.asarray(y, np.int64)) for x, y in
            (tfds.as_numpy(train), tfds.as_numpy(test))
        ]
    if train_samples is not None:
        x_train, y_train = x_train[:train_samples], y_train[:train_samples]
    return (x_train, y_train), (x_test, y_test)


def build_model(kind, input_shape, classes):
    if kind == "cnn":
        layers = [
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(classes),
        ]
    else:
        layers = [
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(classes),
        ]
    return keras.Sequential([keras.Input(input_shape)] + layers)


class _StepTimer(keras.callbacks.Callback):
    """Median wall time of a training step, first epoch's first steps excluded."""

    def __init__(self):
        super().__init__()
        self.times = []
        self.losses = []  # Keras' running mean of the epoch's loss, after each step
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)
        self.losses.append(float((logs or {}).get("loss", float("nan"))))

    @property
    def step_seconds(self):
        times = self.times[3:] or self.times  # skip tracing
        return float(np.median(times)) if times else float("nan")


class _Progress(keras.callbacks.Callback):
    """One line per epoch (the monitor's many log keys would flood Keras' progress bar)."""

    def __init__(self, entry, log):
        super().__init__()
        self.entry, self.log = entry, log
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.log(f"  {self.entry} epoch {epoch + 1}/{self.params['epochs']}: "
                 f"loss {logs.get('loss', float('nan')):.4f}, "
                 f"accuracy {100 * logs.get('accuracy', float('nan')):.2f}%, "
                 f"test accuracy {100 * logs.get('val_accuracy', float('nan')):.2f}% "
                 f"({time.perf_counter() - self._start:.1f}s)")


def _summarise_precision(history):
    underflow = [v[-1] for k, v in history.items() if k.endswith("/underflow")]
    overflow = [v[-1] for k, v in history.items() if k.endswith("/overflow")]
    return (float(np.mean(underflow)) if underflow else 0.0,
            float(np.max(overflow)) if overflow else 0.0)


def run_one(entry, data, *, model_kind, epochs, batch_size, seed, learning_rate, monitor_every,
            log=print):
    name, rounding, scaling = parse_entry(entry)
    (x_train, y_train), (x_test, y_test) = data
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy_lib.Policy(name, rounding=rounding))
    try:
        keras.utils.set_random_seed(seed)
        model = build_model(model_kind, x_train.shape[1:], int(y_train.max()) + 1)
    finally:
        keras.config.set_dtype_policy(previous)
    optimizer = keras.optimizers.Adam(learning_rate)
    if scaling == "als":
        optimizer = loss_scaling.AdaptiveLossScaleOptimizer(optimizer)
    elif scaling == "ls":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    timer = _StepTimer()
    monitor = callbacks_lib.PrecisionMonitor(every_n_steps=monitor_every)
    start = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs,
                        validation_data=(x_test, y_test),
                        callbacks=[timer, monitor, _Progress(entry, log)], verbose=0,
                        shuffle=True)
    seconds = time.perf_counter() - start
    underflow, overflow = _summarise_precision(history.history)
    return {
        "entry": entry,
        "test_accuracy": float(history.history["val_accuracy"][-1]),
        "test_loss": float(history.history["val_loss"][-1]),
        "train_loss": [float(v) for v in history.history["loss"]],
        "step_loss": timer.losses,
        "val_accuracy": [float(v) for v in history.history["val_accuracy"]],
        "val_loss": [float(v) for v in history.history["val_loss"]],
        "step_seconds": timer.step_seconds,
        "fit_seconds": seconds,
        "mean_underflow": underflow,
        "max_overflow": overflow,
        "loss_scale": history.history.get("loss_scale", [None])[-1],
    }


def format_table(results):
    base = results[0]["step_seconds"]
    header = (f"{'policy':<18}{'test acc':>9}{'test loss':>10}{'step time':>11}"
              f"{'underflow':>11}{'overflow':>10}")
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r['entry']:<18}{100 * r['test_accuracy']:>8.2f}%{r['test_loss']:>10.4f}"
                     f"{r['step_seconds'] / base:>10.2f}x{100 * r['mean_underflow']:>10.2f}%"
                     f"{100 * r['max_overflow']:>9.2f}%")
    lines.append(f"(step time relative to {results[0]['entry']}: {1e3 * base:.1f} ms per step; "
                 "underflow: mean over layers and roles, overflow: max, at the last sample)")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        steps = np.arange(1, len(r["step_loss"]) + 1)
        ax_loss.plot(steps, r["step_loss"], label=r["entry"], linewidth=1)
        epochs = np.arange(1, len(r["val_accuracy"]) + 1)
        ax_acc.plot(epochs, 100 * np.asarray(r["val_accuracy"]), marker="o", label=r["entry"])
    ax_loss.set(xlabel="training step", ylabel="training loss (running mean within the epoch)",
                title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(policies=DEFAULT_POLICIES, *, dataset="mnist_5k", data_dir=None, model="cnn",
            epochs=3, batch_size=64, train_samples=None, seed=0, learning_rate=1e-3,
            monitor_every=20, out_dir="tf_lowprec_compare", log=print):
    """Trains `model` under each entry of `policies`; writes compare.json and compare.png."""
    if model not in MODELS:
        raise CompareError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
    for entry in policies:
        parse_entry(entry)
    data = load_data(dataset, data_dir, train_samples)
    log(f"data: {dataset}, {len(data[0][0])} training / {len(data[1][0])} test images; "
        f"model: {model}; {epochs} epoch(s), batch {batch_size}")
    results = []
    for i, entry in enumerate(policies, 1):
        log(f"[{i}/{len(policies)}] training under {entry} ...")
        results.append(run_one(entry, data, model_kind=model, epochs=epochs,
                               batch_size=batch_size, seed=seed, learning_rate=learning_rate,
                               monitor_every=monitor_every, log=log))
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "compare.json")
    png_path = os.path.join(out_dir, "compare.png")
    with open(json_path, "w") as f:
        json.dump({"settings": {"dataset": dataset, "model": model, "epochs": epochs,
                                "batch_size": batch_size, "seed": seed,
                                "train_samples": len(data[0][0])},
                   "results": results}, f, indent=1)
    plot(results, png_path)
    log(format_table(results))
    log(f"wrote {json_path} and {png_path}")
    return results
