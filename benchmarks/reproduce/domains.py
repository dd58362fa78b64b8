"""The workloads: data, model, optimiser, training length and metric.

Each `Domain` fixes every hyper-parameter; the precision configurations only
change the dtype policy of the layers, the weight-update rounding and the
loss scaling, never the data, the model, the learning rate or the number of
iterations.  `quick=True` shrinks data and steps for smoke runs.

Learning rates follow a cosine decay to zero over the run, as most of the
papers' schedules do: late updates are then small, which is where pure-BF16
weights with nearest rounding lose them (Zamirai et al. 2020).
"""

import keras

from . import data
from .base import Domain, _auc, _Classification, _cosine, _LanguageModel
from .hfp8_domains import MobileNet, TransformerLM


class Mnist(_Classification):
    """A LeNet-style CNN on the bundled 5,000-image MNIST sample."""

    name, title, lr = "mnist", "MNIST sample, CNN (2 conv + 2 dense)", 0.05

    def configure(self):
        self.epochs, self.batch_size = (1, 64) if self.quick else (8, 64)

    def load(self):
        self.train, self.test = data.mnist()
        if self.quick:
            self.train = (self.train[0][:512], self.train[1][:512])
            self.test = (self.test[0][:200], self.test[1][:200])

    def detail(self):
        return (f"{len(self.train[1])} train / {len(self.test[1])} test images; conv 3x3 16 "
                f"and 32 channels with 2x2 max-pooling, dense 64, dense 10; SGD momentum 0.9, "
                f"lr {self.lr} cosine-decayed to 0, batch {self.batch_size}, {self.epochs} "
                f"epochs ({self.steps} steps)")

    def build(self, policy):
        layers = keras.layers
        return keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(16, 3, activation="relu", dtype=policy),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu", dtype=policy),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(64, activation="relu", dtype=policy),
            layers.Dense(10, dtype=policy),
        ])


class Digits(_Classification):
    """A 2x128 ReLU MLP on scikit-learn's 8x8 digits (1,797 real images)."""

    name, title, lr = "digits", "sklearn 8x8 digits, MLP 2x128", 0.05

    def configure(self):
        self.epochs, self.batch_size = (2, 32) if self.quick else (12, 32)

    def load(self):
        self.train, self.test = data.digits()

    def detail(self):
        return (f"{len(self.train[1])} train / {len(self.test[1])} test 8x8 images; dense "
                f"128-128-10 ReLU; SGD momentum 0.9, lr {self.lr} cosine-decayed to 0, batch "
                f"{self.batch_size}, {self.epochs} epochs ({self.steps} steps)")

    def build(self, policy):
        layers = keras.layers
        return keras.Sequential([
            keras.Input((64,)),
            layers.Dense(128, activation="relu", dtype=policy),
            layers.Dense(128, activation="relu", dtype=policy),
            layers.Dense(10, dtype=policy),
        ])


class CharLM(_LanguageModel):
    """A character-level GRU language model on the standard library's sources."""

    name, title = "charlm", "Python stdlib sources, char-level GRU LM"
    lr, length = 5e-3, 64

    def configure(self):
        if self.quick:
            self.epochs, self.batch_size, self.windows, self.width = 1, 32, 256, 64
            self.val_windows = 64
        else:
            self.epochs, self.batch_size, self.windows, self.width = 4, 32, 4800, 128
            self.val_windows = 512

    def detail(self):
        return (f"{len(self.train[1])} training windows of {self.length} characters drawn "
                f"from 2 M characters of stdlib .py files, {len(self.test[1])} validation "
                f"windows from other files; embedding 32, GRU {self.width}, dense "
                f"{data.CHAR_VOCAB}; Adam lr {self.lr} cosine-decayed to 0, batch "
                f"{self.batch_size}, {self.epochs} epochs ({self.steps} steps)")

    def build(self, policy):
        layers = keras.layers
        return keras.Sequential([
            keras.Input((self.length,), dtype="int32"),
            layers.Embedding(data.CHAR_VOCAB, 32),
            layers.GRU(self.width, return_sequences=True, dtype=policy),
            layers.Dense(data.CHAR_VOCAB, dtype=policy),
        ])


class Recommender(Domain):
    """A DLRM-style click model (embeddings + dense MLP) on synthetic logs."""

    name, title = "recsys", "synthetic click logs, DLRM-style (embeddings + MLP)"
    metric = "test AUC"
    lr = 2e-3

    def configure(self):
        self.n_train, self.n_test = (4096, 2048) if self.quick else (60_000, 10_000)
        self.epochs, self.batch_size = (1, 256) if self.quick else (4, 256)

    def load(self):
        self.train, self.test = data.synthetic_clicks(self.n_train, self.n_test)

    def detail(self):
        return (f"{self.n_train} train / {self.n_test} test synthetic impressions (Zipf users "
                f"and items, clicks from a hidden rank-8 factor model); embeddings 16 for "
                f"{', '.join(map(str, data.SPARSE_SIZES))} ids, bottom MLP 16, top MLP 64-32-1; "
                f"Adam lr {self.lr} cosine-decayed to 0, batch {self.batch_size}, {self.epochs} "
                f"epochs ({self.steps} steps). Synthetic: no real recommendation data offline")

    def build(self, policy):
        layers = keras.layers
        sparse = keras.Input((3,), dtype="int32", name="sparse_ids")
        dense = keras.Input((8,), name="dense_features")
        embedded = [
            layers.Embedding(size, 16)(sparse[:, i])
            for i, size in enumerate(data.SPARSE_SIZES)
        ]
        bottom = layers.Dense(16, activation="relu", dtype=policy)(dense)
        x = layers.Concatenate()(embedded + [bottom])
        x = layers.Dense(64, activation="relu", dtype=policy)(x)
        x = layers.Dense(32, activation="relu", dtype=policy)(x)
        out = layers.Dense(1, dtype=policy)(x)
        return keras.Model({"sparse_ids": sparse, "dense_features": dense}, out)

    def loss(self):
        return keras.losses.BinaryCrossentropy(from_logits=True)

    def base_optimizer(self, loss_scale_factor=None):
        return keras.optimizers.Adam(_cosine(self.lr, self.steps),
                                     loss_scale_factor=loss_scale_factor)

    def evaluate(self, model):
        x, y = self.test
        scores = model.predict(x, batch_size=2048, verbose=0)[:, 0]
        return _auc(y, scores)


class Underflow(_Classification):
    """First-symbol recall through a long SimpleRNN: errors underflow FP16 on their own.

    The label is the first of `length` random symbols, so its error must travel
    back through every recurrent step, shrinking by the recurrent gain each
    time.  FP32 keeps the tiny early-step errors (and Adam's normalised step
    uses them); FP16 flushes those below 2^-24 to zero.  No loss multiplier.
    """

    name, lr, symbols, units = "underflow", 3e-3, 8, 32

    def configure(self):
        if self.quick:
            self.length, self.epochs, self.batch_size, self.n_train, self.n_test = (
                12, 1, 64, 320, 200)
        else:
            self.length, self.epochs, self.batch_size, self.n_train, self.n_test = (
                55, 10, 64, 4000, 1000)
        self.title = (f"first-symbol recall over {self.length} steps, SimpleRNN "
                      f"{self.units}")

    def load(self):
        self.train = data.recall_sequences(self.n_train, self.length, self.symbols, seed=10)
        self.test = data.recall_sequences(self.n_test, self.length, self.symbols, seed=11)

    def detail(self):
        return (f"{self.n_train} train / {self.n_test} test sequences of {self.length} "
                f"one-hot symbols out of {self.symbols}, label = the first symbol (chance "
                f"{100 / self.symbols:.1f} %); SimpleRNN {self.units} (tanh, orthogonal "
                f"recurrent init), dense {self.symbols}; Adam lr {self.lr} cosine-decayed to 0, "
                f"batch {self.batch_size}, {self.epochs} epochs ({self.steps} steps)")

    def build(self, policy):
        layers = keras.layers
        return keras.Sequential([
            keras.Input((self.length, self.symbols)),
            layers.SimpleRNN(self.units, dtype=policy),
            layers.Dense(self.symbols, dtype=policy),
        ])

    def base_optimizer(self, loss_scale_factor=None):
        return keras.optimizers.Adam(_cosine(self.lr, self.steps),
                                     loss_scale_factor=loss_scale_factor)


DOMAINS = {cls.name: cls for cls in (Mnist, Digits, CharLM, Recommender, Underflow, MobileNet,
                                     TransformerLM)}
