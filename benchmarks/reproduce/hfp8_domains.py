"""The two workloads where Sun et al. 2019 see FP8 1-5-2 forward lose accuracy.

- `mobilenet`: a MobileNetV2-style CNN (inverted residual blocks: 1x1
  expansion, 3x3 depthwise convolution, 1x1 linear projection, BatchNorm,
  ReLU6, residual adds) on the bundled MNIST sample.
- `transformer`: a two-block causal Transformer language model
  (MultiHeadAttention, pre-LayerNorm, GELU feed-forward) on characters of
  the Python standard library's sources, the char-LM's data and split.

Every GEMM-bearing layer (convolutions, depthwise convolutions, attention,
dense) takes the precision policy; BatchNorm, LayerNorm, the embedding and
the fixed sinusoidal positions stay FP32.  The first and the last GEMM layer
(the stem convolution and the classifier; the first attention layer and
the output dense) are the ones a `first_last` spec exempts.
"""

import keras
import numpy as np

from . import data
from .base import _Classification, _LanguageModel


class MobileNet(_Classification):
    """A small MobileNetV2: stem conv, four inverted residual blocks, 1x1 head conv."""

    name, title, lr = "mobilenet", "MNIST sample, MobileNetV2-style CNN (depthwise blocks)", 0.05
    # (expansion t, output channels c, stride s), as in MobileNetV2's table 2.
    blocks = ((1, 16, 1), (4, 24, 2), (4, 24, 1), (4, 32, 2))
    head = 64

    def configure(self):
        self.epochs, self.batch_size = (1, 64) if self.quick else (2, 64)

    def load(self):
        self.train, self.test = data.mnist()
        if self.quick:
            # The test images are sorted by label: every 5th keeps all ten classes.
            self.train = (self.train[0][:256], self.train[1][:256])
            self.test = (self.test[0][::5], self.test[1][::5])

    def detail(self):
        blocks = ", ".join(f"(t {t}, c {c}, s {s})" for t, c, s in self.blocks)
        return (f"{len(self.train[1])} train / {len(self.test[1])} test 28x28 images; conv 3x3 "
                f"stride 2 16 channels, inverted residual blocks {blocks} (1x1 expand, 3x3 "
                f"depthwise, 1x1 linear projection, BatchNorm, ReLU6, residual add where "
                f"shapes match), 1x1 conv {self.head}, global average pooling, dense 10; SGD "
                f"momentum 0.9, lr {self.lr} cosine-decayed to 0, batch {self.batch_size}, "
                f"{self.epochs} epochs ({self.steps} steps)")

    def build(self, policy):
        layers = keras.layers

        def conv_bn(x, filters, kernel=1, stride=1, relu=True):
            x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                              dtype=policy)(x)
            # Momentum 0.9: a few hundred steps must settle the moving statistics.
            x = layers.BatchNormalization(momentum=0.9)(x)
            return layers.ReLU(6.0)(x) if relu else x

        inputs = keras.Input((28, 28, 1))
        x = conv_bn(inputs, 16, 3, 2)
        for t, c, s in self.blocks:
            h = conv_bn(x, x.shape[-1] * t) if t != 1 else x
            h = layers.DepthwiseConv2D(3, s, padding="same", use_bias=False, dtype=policy)(h)
            h = layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9)(h))
            h = conv_bn(h, c, relu=False)
            x = layers.Add()([x, h]) if s == 1 and x.shape[-1] == c else h
        x = conv_bn(x, self.head)
        x = layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, layers.Dense(10, dtype=policy)(x))


def _positions(length, width):
    """Sinusoidal position codes [length, width] (Vaswani et al. 2017): no weights to learn."""
    angles = np.arange(length)[:, None] / 10000.0 ** (np.arange(0, width, 2)[None] / width)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


class TransformerLM(_LanguageModel):
    """A causal character-level Transformer LM (pre-LayerNorm blocks) on stdlib sources."""

    name, title = "transformer", "Python stdlib sources, char-level Transformer LM (2 blocks)"
    lr, length, width, heads, depth = 4e-3, 64, 64, 4, 2

    def configure(self):
        if self.quick:
            self.epochs, self.batch_size, self.windows, self.val_windows = 1, 32, 128, 64
        else:
            self.epochs, self.batch_size, self.windows, self.val_windows = 3, 32, 2400, 512

    def detail(self):
        return (f"{len(self.train[1])} training windows of {self.length} characters drawn "
                f"from 2 M characters of stdlib .py files, {len(self.test[1])} validation "
                f"windows from other files; embedding {self.width} + sinusoidal positions, "
                f"{self.depth} pre-LayerNorm blocks (causal MultiHeadAttention {self.heads} "
                f"heads x {self.width // self.heads}, dense {4 * self.width} GELU - dense "
                f"{self.width}), LayerNorm, dense {data.CHAR_VOCAB}; Adam lr {self.lr} "
                f"cosine-decayed to 0, batch {self.batch_size}, {self.epochs} epochs "
                f"({self.steps} steps)")

    def build(self, policy):
        layers = keras.layers
        inputs = keras.Input((self.length,), dtype="int32")
        x = layers.Embedding(data.CHAR_VOCAB, self.width)(inputs)
        x = x + _positions(self.length, self.width)
        for _ in range(self.depth):
            h = layers.LayerNormalization()(x)
            h = layers.MultiHeadAttention(self.heads, self.width // self.heads,
                                          dtype=policy)(h, h, use_causal_mask=True)
            x = x + h
            h = layers.LayerNormalization()(x)
            h = layers.Dense(4 * self.width, activation="gelu", dtype=policy)(h)
            x = x + layers.Dense(self.width, dtype=policy)(h)
        x = layers.LayerNormalization()(x)
        return keras.Model(inputs, layers.Dense(data.CHAR_VOCAB, dtype=policy)(x))
