"""`lp.compare`: does *my* model keep its accuracy at this precision, and what does it cost?

`compare(model, data, policies=[...])` trains the same model from the same
initial weights on the same batches under each policy and returns a
`Comparison`: a table (test metric and loss, training-step time relative to
the first policy, under/overflow rates), the curves per epoch and the
per-layer statistics `PrecisionMonitor` saw.  `write(folder)` saves
`compare.json` (everything) and `compare.png` (each policy's difference to
the first one).  `tf-lowprec compare` is this function with flags.

The model is one of the built-ins ("cnn", "mlp", "lstm"; None picks by the
data: images, features, sequences), a `.keras` file or a Keras model (cloned
per policy with every float layer under that policy, from the same weights),
or a function returning a new model (called under each policy, as
`keras.config.set_dtype_policy` makes it the layers' default), given as a
callable or as "module:function".  Loss, metrics and optimizer come from the
model's compile configuration, else from the arguments.

Each entry of `policies` is `NAME[:ROUNDING][+als|+ls|+none]`: a policy
preset, optionally a rounding mode for every rounded role
("bf16:stochastic"), optionally the loss scaling: adaptive ("+als"), Keras'
global dynamic ("+ls") or none ("+none").  Without a suffix, `compile`
chooses as it does for any model (automatic loss scaling, see
docs/loss_scaling.md).

>>> from tf_lowprec import comparison
>>> comparison.parse_entry("fp16+als")
('fp16', None, 'als')
"""

import dataclasses
import inspect
import json
import os
import pkgutil
import platform
import sys
import time
import zipfile

import keras
import numpy as np
from absl import logging

from tf_lowprec import datasets
from tf_lowprec.keras import policy as policy_lib
from tf_lowprec.training import callbacks as callbacks_lib
from tf_lowprec.training import loss_scaling

DEFAULT_POLICIES = ("fp32", "bf16", "fp16", "hfp8", "dfp16")
BUILTIN_MODELS = ("cnn", "mlp", "lstm")
SCALING = {"als": "adaptive", "ls": "dynamic", "none": "none"}
ROUNDINGS = ("nearest_even", "stochastic", "toward_zero")


class CompareError(ValueError):
    """A problem the user can fix (bad entry, model or data); the message says which."""


def parse_entry(entry):
    """Splits "name[:rounding][+als|+ls|+none]" into (name, rounding or None, scaling or None)."""
    scaling = None
    if "+" in entry:
        entry, scaling = entry.split("+", 1)
        if scaling not in SCALING:
            raise CompareError(f"unknown loss scaling '+{scaling}': use +als (adaptive), +ls "
                               "(Keras' global dynamic) or +none")
    rounding = None
    if ":" in entry:
        entry, rounding = entry.split(":", 1)
    if entry not in policy_lib.PRESETS:
        raise CompareError(f"unknown policy {entry!r}; presets: {', '.join(policy_lib.PRESETS)}")
    if rounding is not None and rounding not in ROUNDINGS:
        raise CompareError(f"unknown rounding {rounding!r}; use {', '.join(ROUNDINGS)}")
    return entry, rounding, scaling


# Models -------------------------------------------------------------------


def build_builtin(kind, data):
    """One of the built-in models for `data` (a `datasets.Data`), logits out."""
    if kind == "lstm":
        if data.kind != "sequences":
            raise CompareError(f"--model=lstm reads integer token sequences; {data.name} holds "
                               f"{data.kind}")
        body = [keras.layers.Embedding(data.vocabulary_size, 32, name="embedding"),
                keras.layers.LSTM(64, name="lstm")]
    elif data.kind == "sequences":
        raise CompareError(f"--model={kind} reads images or feature vectors; {data.name} holds "
                           "token sequences: use --model=lstm or your own model")
    elif kind == "cnn":
        if data.x_train.ndim == 3:  # (examples, height, width): one channel
            body = [keras.layers.Reshape(data.x_train.shape[1:] + (1,), name="channels")]
        elif data.x_train.ndim == 4:
            body = []
        else:
            raise CompareError(f"--model=cnn reads images; {data.name}'s examples have shape "
                               f"{data.x_train.shape[1:]}: use --model=mlp or your own model")
        body += [keras.layers.Conv2D(16, 3, activation="relu", name="conv1"),
                 keras.layers.MaxPooling2D(name="pool1"),
                 keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
                 keras.layers.MaxPooling2D(name="pool2"), keras.layers.Flatten(name="flatten"),
                 keras.layers.Dense(64, activation="relu", name="dense")]
    else:
        body = [keras.layers.Flatten(name="flatten"),
                keras.layers.Dense(256, activation="relu", name="dense1"),
                keras.layers.Dense(128, activation="relu", name="dense2")]
    return keras.Sequential([keras.Input(data.x_train.shape[1:], dtype=data.x_train.dtype)]
                            + body + [keras.layers.Dense(data.num_classes, name="logits")],
                            name=kind)


def _import_builder(spec):
    """The function named by "module:function" (the standard library's resolve_name)."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise CompareError(f"--model={spec}: give module:function, e.g. my_models:build")
    try:
        builder = pkgutil.resolve_name(spec)
    except ModuleNotFoundError as e:
        raise CompareError(f"--model={spec}: cannot import module {module_name!r} ({e}); run "
                           "from the folder that holds it or put it on PYTHONPATH") from e
    except AttributeError as e:
        raise CompareError(f"--model={spec}: module {module_name!r} has no function "
                           f"{function_name!r}") from e
    if not callable(builder):
        raise CompareError(f"--model={spec}: {function_name!r} in {module_name!r} is not a "
                           "function")
    return builder


def _load_model_file(path):
    if not os.path.exists(path):
        raise CompareError(f"--model={path}: no such file")
    try:
        return keras.saving.load_model(path)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise CompareError(f"--model={path}: Keras cannot load it ({type(e).__name__}: {e})") from e


def _call_builder(builder, data):
    """builder(), passing input_shape / num_classes when it takes them."""
    parameters = inspect.signature(builder).parameters
    offered = {"input_shape": data.x_train.shape[1:], "num_classes": data.num_classes}
    model = builder(**{k: v for k, v in offered.items() if k in parameters})
    if not isinstance(model, keras.Model):
        raise CompareError(f"the model function {getattr(builder, '__name__', builder)!r} "
                           f"returned {type(model).__name__}, not a keras.Model")
    return model


def _with_policy(layer, policy):
    """A copy of `layer` under `policy` when it computes in float (else as it is)."""
    config = layer.get_config()
    if keras.backend.is_float_dtype(layer.dtype_policy.compute_dtype):
        config["dtype"] = policy
    return layer.__class__.from_config(config)


class _ModelSource:
    """Makes the model of each run: fresh, under the run's policy, same initial weights."""

    def __init__(self, model, data):
        self.builtin = self.builder = self.template = None
        if model is None:
            model = {"images": "cnn", "sequences": "lstm"}.get(data.kind, "mlp")
        if isinstance(model, keras.Model):
            self.template, self.description = model, f"{model.name} (a Keras model)"
        elif callable(model):
            self.builder = model
            self.description = f"{getattr(model, '__module__', '?')}:" \
                               f"{getattr(model, '__name__', model)}"
        elif isinstance(model, str) and model in BUILTIN_MODELS:
            self.builtin, self.description = model, model
        elif isinstance(model, str) and model.endswith(".keras"):
            self.template, self.description = _load_model_file(model), model
        elif isinstance(model, str) and ":" in model:
            self.builder, self.description = _import_builder(model), model
        else:
            raise CompareError(
                f"model must be a built-in ({', '.join(BUILTIN_MODELS)}), a .keras file, "
                f"module:function, a keras.Model or a function returning one; got {model!r}")
        self.data = data

    def build(self, policy, seed):
        if self.template is not None:
            model = keras.models.clone_model(
                self.template, clone_function=lambda layer: _with_policy(layer, policy),
                recursive=True)
            model.set_weights(self.template.get_weights())
            return model
        previous = keras.config.dtype_policy()
        # Fresh layer names (dense, dense_1, ...) in every run, so that the runs'
        # statistics line up; it also resets the global policy, set just below.
        keras.backend.clear_session()
        keras.config.set_dtype_policy(policy)
        try:
            keras.utils.set_random_seed(seed)
            if self.builtin is not None:
                return build_builtin(self.builtin, self.data)
            return _call_builder(self.builder, self.data)
        finally:
            keras.config.set_dtype_policy(previous)

    def compile_config(self):
        """The template's compile configuration (serialized), or None."""
        return self.template.get_compile_config() if self.template is not None else None


@dataclasses.dataclass
class CompileSettings:
    """What to compile with where the model does not say (or to override it)."""

    loss: object = None
    metrics: object = None
    optimizer: object = None
    learning_rate: float = None


def _compile(model, source, settings, scaling):
    config = source.compile_config()
    if config is None and getattr(model, "compiled", False):
        config = model.get_compile_config()  # compiled by the model function
    kwargs = dict(keras.saving.deserialize_keras_object(config)) if config else {}
    if settings.loss is not None:
        kwargs["loss"] = settings.loss
    if settings.metrics is not None:
        kwargs["metrics"] = list(settings.metrics)
    if settings.optimizer is not None:
        kwargs["optimizer"] = settings.optimizer
    if "loss" not in kwargs or kwargs["loss"] is None:
        if source.builtin is None:
            raise CompareError(
                "the model has no compile configuration: give the loss (--loss=..., Python: "
                "loss=...), e.g. sparse_categorical_crossentropy")
        kwargs["loss"] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    kwargs.setdefault("metrics", ["accuracy"])
    optimizer = keras.optimizers.get(kwargs.get("optimizer") or "adam")
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and scaling is not None:
        optimizer = optimizer.inner_optimizer  # the entry chooses the scaling
    if settings.learning_rate is not None:
        optimizer.learning_rate = settings.learning_rate
    if scaling == "als":
        optimizer = loss_scaling.AdaptiveLossScaleOptimizer(optimizer)
    elif scaling == "ls":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    kwargs["optimizer"] = optimizer
    mode = None if scaling == "none" else loss_scaling.automatic_loss_scaling()
    with loss_scaling.automatic_loss_scaling_mode(mode):
        model.compile(**kwargs)
    return _scaling_name(model.optimizer, scaling)


def _scaling_name(optimizer, requested):
    if isinstance(optimizer, loss_scaling.AdaptiveLossScaleOptimizer):
        kind = "adaptive" if optimizer.adaptive else "dynamic"
    elif isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        kind = "dynamic"
    else:
        kind = "none"
    return kind if requested is not None or kind == "none" else f"{kind} (automatic)"


# Training -----------------------------------------------------------------


class _StepTimer(keras.callbacks.Callback):
    """Median wall time of a training step, the first steps (tracing) excluded."""

    def __init__(self):
        super().__init__()
        self.times = []
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)

    @property
    def step_seconds(self):
        times = self.times[3:] or self.times
        return float(np.median(times)) if times else float("nan")


class _ProgressBar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, showing the model's metrics but not the monitor's many keys."""

    @staticmethod
    def _shown(logs):
        return {k: v for k, v in (logs or {}).items()
                if "/" not in k and not k.startswith("loss_scale")}

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, self._shown(logs))

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(batch, self._shown(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self._shown(logs))

    def on_test_end(self, logs=None):
        super().on_test_end(self._shown(logs))


def _layer_statistics(history, model_name):
    """{"<layer path>/<role>": {stat: value at the last epoch}} from PrecisionMonitor's keys.

    Paths are relative to the model (its own name, which Keras numbers per
    instance, is left out).
    """
    layers = {}
    for key, values in history.items():
        if key.startswith("precision/") and values:
            path, stat = key[len("precision/"):].rsplit("/", 1)
            if path.startswith(model_name + "/"):
                path = path[len(model_name) + 1:]
            layers.setdefault(path, {})[stat] = float(values[-1])
    return layers


def _metric_name(history):
    names = [k[4:] for k in history if k.startswith("val_") and k != "val_loss"
             and "/" not in k and not k.startswith("val_loss_scale")]
    return names[0] if names else None


def run_one(entry, data, source, settings, *, epochs, batch_size, seed, monitor_every,
            verbose="auto"):
    """Trains under one entry with one seed; a dict of everything measured."""
    name, rounding, scaling = parse_entry(entry)
    model = source.build(policy_lib.Policy(name, rounding=rounding), seed)
    scaling_used = _compile(model, source, settings, scaling)
    timer = _StepTimer()
    monitor = callbacks_lib.PrecisionMonitor(every_n_steps=monitor_every)
    keras.utils.set_random_seed(seed)  # the same batches for every entry
    start = time.perf_counter()
    history = model.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=epochs,
                        validation_data=(data.x_test, data.y_test), shuffle=True,
                        callbacks=[timer, monitor, _ProgressBar()], verbose=verbose).history
    seconds = time.perf_counter() - start
    metric = _metric_name(history)
    layers = _layer_statistics(history, model.name)
    underflow = [s["underflow"] for s in layers.values() if "underflow" in s]
    overflow = [s["overflow"] for s in layers.values() if "overflow" in s]
    return {
        "entry": entry,
        "seed": seed,
        "loss_scaling": scaling_used,
        "metric": metric,
        "test_metric": float(history[f"val_{metric}"][-1]) if metric else None,
        "test_loss": float(history["val_loss"][-1]),
        "curves": {k.replace(f"/{model.name}/", "/"): [float(v) for v in values]
                   for k, values in history.items()},
        "step_seconds": timer.step_seconds,
        "step_times": timer.times,
        "fit_seconds": seconds,
        "mean_underflow": float(np.mean(underflow)) if underflow else 0.0,
        "max_overflow": float(np.max(overflow)) if overflow else 0.0,
        "layers": layers,
    }


# Results ------------------------------------------------------------------


class Comparison:
    """The runs of one comparison; `table()`, `curves()`, `layer_stats()`, `write()`.

    `runs[entry]` is the list of the entry's runs (one per seed), each a dict
    with the test metric and loss, the per-epoch curves (Keras' History),
    the step times and the per-layer statistics; the first entry is the
    baseline of every difference and ratio.
    """

    def __init__(self, runs, settings):
        self.runs = runs
        self.settings = settings
        self.entries = list(runs)
        self.baseline = self.entries[0]

    def _mean(self, entry, key):
        values = [r[key] for r in self.runs[entry] if r[key] is not None]
        return float(np.mean(values)) if values else float("nan")

    @property
    def metric(self):
        return self.runs[self.baseline][0]["metric"]

    def summary(self):
        """Per entry: means over seeds of the test metric, loss, step time ratio, rates."""
        base = self._mean(self.baseline, "step_seconds")
        rows = {}
        for entry in self.entries:
            rows[entry] = {
                "test_metric": self._mean(entry, "test_metric"),
                "test_loss": self._mean(entry, "test_loss"),
                "step_time_ratio": self._mean(entry, "step_seconds") / base,
                "mean_underflow": self._mean(entry, "mean_underflow"),
                "max_overflow": self._mean(entry, "max_overflow"),
                "loss_scaling": self.runs[entry][0]["loss_scaling"],
            }
        return rows

    def table(self):
        metric = self.metric or "metric"
        header = (f"{'policy':<18}{'test ' + metric[:12]:>18}{'test loss':>10}{'step time':>11}"
                  f"{'underflow':>11}{'overflow':>10}  loss scaling")
        lines = [header, "-" * len(header)]
        scale = 100.0 if _is_fraction(metric) else 1.0
        unit = "%" if scale == 100.0 else " "
        for entry, row in self.summary().items():
            lines.append(f"{entry:<18}{scale * row['test_metric']:>17.2f}{unit}"
                         f"{row['test_loss']:>10.4f}{row['step_time_ratio']:>10.2f}x"
                         f"{100 * row['mean_underflow']:>10.2f}%{100 * row['max_overflow']:>9.2f}%"
                         f"  {row['loss_scaling']}")
        seeds = len(self.runs[self.baseline])
        lines.append(
            f"(step time relative to {self.baseline}: "
            f"{1e3 * self._mean(self.baseline, 'step_seconds'):.1f} ms per step; underflow: "
            "mean over layers and roles, overflow: max, at the last epoch"
            + (f"; means over {seeds} seeds" if seeds > 1 else "") + ")")
        return "\n".join(lines)

    def curves(self):
        """{entry: {history key: [[per epoch] per seed]}} (Keras' History of each run).

        Keys as in Keras' History, with the monitor's per-layer statistics
        (`precision/<layer>/<role>/<stat>`, the model's own name left out).
        """
        return {entry: {key: [r["curves"].get(key) for r in runs]
                        for key in runs[0]["curves"]}
                for entry, runs in self.runs.items()}

    def layer_stats(self):
        """{entry: {"<layer>/<role>": {underflow, overflow, subnormal}}} of the first seed."""
        return {entry: runs[0]["layers"] for entry, runs in self.runs.items()}

    def to_dict(self):
        return {"settings": self.settings, "summary": self.summary(),
                "environment": _environment(), "runs": self.runs}

    def write(self, out_dir):
        """Writes compare.json and compare.png into `out_dir`; returns their paths."""
        os.makedirs(out_dir, exist_ok=True)
        json_path = os.path.join(out_dir, "compare.json")
        png_path = os.path.join(out_dir, "compare.png")
        with open(json_path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        plot(self, png_path)
        return json_path, png_path


def _is_fraction(metric):
    return metric is not None and ("accuracy" in metric or metric in ("acc", "auc"))


def _environment():
    import tensorflow as tf  # noqa: PLC0415

    from tf_lowprec import _op_library  # noqa: PLC0415

    tiers = _op_library.kernel_tiers()
    return {"python": sys.version.split()[0], "tensorflow": tf.__version__,
            "keras": keras.__version__, "machine": platform.machine(),
            "processor": platform.processor(), "cpu_features": tiers.get("cpu"),
            "kernel_tiers": {op: t["auto"] for op, t in tiers.items()
                             if isinstance(t, dict) and "auto" in t}}


def _deltas(comparison, entry, key):
    """[seeds, epochs] differences of history `key` to the baseline, seed by seed."""
    base = comparison.runs[comparison.baseline]
    rows = []
    for i, run in enumerate(comparison.runs[entry]):
        reference = base[i % len(base)]["curves"].get(key)
        values = run["curves"].get(key)
        if reference is None or values is None:
            return None
        rows.append(np.asarray(values) - np.asarray(reference))
    return np.asarray(rows)


def plot(comparison, path):
    """compare.png: differences to the baseline per epoch, step times, worst layers."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    metric = comparison.metric
    scale = 100.0 if _is_fraction(metric) else 1.0
    others = comparison.entries[1:]
    colors = {e: f"C{i}" for i, e in enumerate(comparison.entries)}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    summary = comparison.summary()
    base = summary[comparison.baseline]
    seeds = len(comparison.runs[comparison.baseline])
    for ax, key, label, factor in (
            (axes[0, 0], f"val_{metric}", f"test {metric} − {comparison.baseline}"
             + (" (percentage points)" if scale == 100.0 else ""), scale),
            (axes[0, 1], "val_loss", f"test loss − {comparison.baseline}", 1.0)):
        ax.axhline(0.0, color=colors[comparison.baseline], linewidth=1.5,
                   label=f"{comparison.baseline} (baseline)")
        for entry in others:
            deltas = _deltas(comparison, entry, key)
            if deltas is None:
                continue
            deltas = factor * deltas
            epochs = np.arange(1, deltas.shape[1] + 1)
            ax.plot(epochs, deltas.mean(axis=0), marker="o", color=colors[entry], label=entry)
            if len(deltas) > 1:
                ax.fill_between(epochs, deltas.min(axis=0), deltas.max(axis=0),
                                color=colors[entry], alpha=0.2)
        ax.set(xlabel="epoch", ylabel=label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    end = f"{scale * base['test_metric']:.2f}{' %' if scale == 100.0 else ''}"
    axes[0, 0].set_title(f"Test {metric}: difference to {comparison.baseline} "
                         f"(which ends at {end})", fontsize=10)
    axes[0, 1].set_title(f"Test loss: difference to {comparison.baseline} "
                         f"(which ends at {base['test_loss']:.4f})", fontsize=10)

    ax = axes[1, 0]
    ratios = [summary[e]["step_time_ratio"] for e in comparison.entries]
    bars = ax.bar(comparison.entries, ratios, color=[colors[e] for e in comparison.entries])
    if seeds > 1:
        base_times = [r["step_seconds"] for r in comparison.runs[comparison.baseline]]
        for i, entry in enumerate(comparison.entries):
            values = [r["step_seconds"] / np.mean(base_times) for r in comparison.runs[entry]]
            ax.plot([i, i], [min(values), max(values)], color="black", linewidth=1)
    ax.bar_label(bars, labels=[f"{r:.2f}×" for r in ratios], fontsize=8)
    ax.axhline(1.0, color="gray", linewidth=1, linestyle="--")
    ax.set(ylabel=f"training-step time / {comparison.baseline}'s",
           title=f"Step time ({comparison.baseline}: "
                 f"{1e3 * comparison._mean(comparison.baseline, 'step_seconds'):.1f} ms per step)")
    ax.tick_params(axis="x", labelsize=8, rotation=15)
    ax.grid(alpha=0.3, axis="y")

    ax = axes[1, 1]
    rows = []
    for entry, layers in comparison.layer_stats().items():
        for layer, stats in layers.items():
            rows.append((max(stats.get("underflow", 0.0), stats.get("overflow", 0.0)), entry,
                         layer, stats.get("underflow", 0.0), stats.get("overflow", 0.0)))
    rows = sorted(rows, key=lambda r: r[0], reverse=True)[:10][::-1]
    if rows and rows[-1][0] > 0:
        y = np.arange(len(rows))
        ax.barh(y - 0.2, [100 * r[3] for r in rows], height=0.4, color="tab:blue",
                label="underflow (non-zero → 0)")
        ax.barh(y + 0.2, [100 * r[4] for r in rows], height=0.4, color="tab:red",
                label="overflow / saturation")
        ax.set_yticks(y, [f"{r[1]} · {r[2]}" for r in rows], fontsize=7)
        ax.set(xlabel="% of the tensor's elements (last epoch)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    else:
        ax.text(0.5, 0.5, "no rounded tensor underflowed or overflowed", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title("Layers and roles with the most underflow / overflow", fontsize=10)
    spread = f"; bands and whiskers: min–max over {seeds} seeds" if seeds > 1 else ""
    fig.suptitle(f"{comparison.settings['model']} on {comparison.settings['dataset']}: "
                 f"each policy against {comparison.baseline}{spread}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(model=None, data="mnist_5k", policies=DEFAULT_POLICIES, *, epochs=3, batch_size=64,
            seeds=1, seed=0, train_samples=None, loss=None, metrics=None, optimizer=None,
            learning_rate=None, monitor_every=20, data_dir=None, features=None,
            splits=("train", "test"), out_dir=None, verbose="auto"):
    """Trains `model` on `data` under each of `policies`; returns a `Comparison`.

    Args:
      model: a built-in name ("cnn", "mlp", "lstm"), None (the built-in that
        fits the data), a `.keras` file or a `keras.Model` (cloned per policy
        from the same weights), "module:function" or a function returning a
        new Keras model (called under each policy; it may take
        `input_shape` and `num_classes`).
      data: "mnist_5k" (bundled), an `.npz` path (x_train, y_train, x_test,
        y_test), a TFDS name prepared in `data_dir`, a `datasets.Data`, or
        `((x_train, y_train), (x_test, y_test))`.
      policies: entries `NAME[:ROUNDING][+als|+ls|+none]`; the first is the
        baseline of every difference and ratio.
      epochs, batch_size: of each run.
      seeds: runs per entry, with seeds `seed, seed + 1, ...` (the initial
        weights, where the model is built here, and the batches' order); the
        plot shows their spread.
      train_samples: use only the first N training examples.
      loss, metrics, optimizer, learning_rate: override (or, where the model
        has no compile configuration, give) what `compile` gets.
      monitor_every: `PrecisionMonitor` sampling interval in steps.
      data_dir, features, splits: for TFDS sets (see `datasets.load`).
      out_dir: if given, compare.json and compare.png are written there.
      verbose: Keras' `fit` verbosity (progress bar: "auto" or 1).

    Raises:
      CompareError: bad entry, model or data (`datasets.DataError` is one).
    """
    if not policies:
        raise CompareError("policies: give at least one policy")
    for entry in policies:
        parse_entry(entry)
    if len(set(policies)) != len(policies):
        raise CompareError(f"policies: an entry appears twice in {list(policies)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise CompareError(f"seeds must be a positive integer; got {seeds!r}")
    if isinstance(data, datasets.Data):
        loaded = data
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        (x_train, y_train), (x_test, y_test) = data
        loaded = datasets.from_arrays(x_train, y_train, x_test, y_test)
    elif isinstance(data, str):
        loaded = datasets.load(data, data_dir=data_dir, features=features, splits=splits)
    else:
        raise CompareError("data must be a data set name, an .npz path, a datasets.Data or "
                           f"((x_train, y_train), (x_test, y_test)); got {type(data).__name__}")
    if train_samples is not None:
        loaded = dataclasses.replace(loaded, x_train=loaded.x_train[:train_samples],
                                     y_train=loaded.y_train[:train_samples])
    source = _ModelSource(model, loaded)
    settings = CompileSettings(loss, metrics, optimizer, learning_rate)
    logging.info("data: %s; model: %s; %d epoch(s), batch %d, %d seed(s)",
                 loaded.description(), source.description, epochs, batch_size, seeds)
    runs = {}
    for i, entry in enumerate(policies, 1):
        runs[entry] = []
        for s in range(seeds):
            logging.info("[%d/%d] training under %s (seed %d) ...", i, len(policies), entry,
                         seed + s)
            runs[entry].append(run_one(entry, loaded, source, settings, epochs=epochs,
                                       batch_size=batch_size, seed=seed + s,
                                       monitor_every=monitor_every, verbose=verbose))
    result = Comparison(runs, {
        "model": source.description, "dataset": loaded.name, "data": loaded.description(),
        "policies": list(policies), "epochs": epochs, "batch_size": batch_size,
        "seeds": seeds, "first_seed": seed, "train_samples": len(loaded.x_train),
        "monitor_every": monitor_every})
    if out_dir is not None:
        json_path, png_path = result.write(out_dir)
        logging.info("wrote %s and %s", json_path, png_path)
    return result
