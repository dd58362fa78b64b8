"""The base classes of the workloads (domains.py, hfp8_domains.py) and their shared parts."""

import math

import keras
import numpy as np

from . import data


def _cosine(lr, steps):
    return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1))


def _auc(labels, scores):
    """Area under the ROC curve via the rank-sum statistic (no ties in practice)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels > 0.5
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class Domain:
    """A workload.  Subclasses define the data, the model and the metric."""

    name = title = metric = ""
    higher_is_better = True

    def __init__(self, quick=False):
        self.quick = quick
        self.configure()

    def configure(self):
        """Sets the sizes (epochs, batch_size, ...) for full or quick runs."""
        raise NotImplementedError

    def detail(self):
        """Sizes and hyper-parameters, one line for the report."""
        raise NotImplementedError

    def load(self):
        """Loads the data once per domain: sets self.train, self.test."""
        raise NotImplementedError

    def build(self, policy):
        raise NotImplementedError

    def base_optimizer(self, loss_scale_factor=None):
        """The optimiser; `loss_scale_factor`: Keras' constant loss scale (None: none)."""
        raise NotImplementedError

    def loss(self):
        raise NotImplementedError

    def evaluate(self, model):
        raise NotImplementedError

    @property
    def steps(self):
        n = len(self.train[1])
        return self.epochs * math.ceil(n / self.batch_size)

    def fit(self, model):
        """Trains `model`; returns the mean training loss of every epoch."""
        x, y = self.train
        history = model.fit(x, y, batch_size=self.batch_size, epochs=self.epochs,
                            shuffle=True, verbose=0)
        return [float(v) for v in history.history["loss"]]


class _Classification(Domain):
    metric = "test accuracy (%)"

    def loss(self):
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def evaluate(self, model):
        x, y = self.test
        logits = model.predict(x, batch_size=500, verbose=0)
        return 100.0 * float(np.mean(np.argmax(logits, -1) == y))

    def base_optimizer(self, loss_scale_factor=None):
        return keras.optimizers.SGD(_cosine(self.lr, self.steps), momentum=0.9,
                                    loss_scale_factor=loss_scale_factor)


class _LanguageModel(Domain):
    """A next-character model on stdlib windows, scored in bits per character.

    Subclasses set `length`, `windows` and `val_windows` (in `configure`).
    """

    metric, higher_is_better = "validation bits per char", False

    def load(self):
        # Every 10th stdlib file is validation (data.stdlib_text): the same split for all.
        train_ids, val_ids = data.stdlib_text(2_000_000, 200_000)
        self.train = data.char_windows(train_ids, self.windows, self.length, seed=0)
        self.test = data.char_windows(val_ids, self.val_windows, self.length, seed=1)

    def loss(self):
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def base_optimizer(self, loss_scale_factor=None):
        return keras.optimizers.Adam(_cosine(self.lr, self.steps),
                                     loss_scale_factor=loss_scale_factor)

    def evaluate(self, model):
        x, y = self.test
        logits = model.predict(x, batch_size=128, verbose=0)
        ce = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return float(np.mean(keras.ops.convert_to_numpy(ce))) / math.log(2.0)
