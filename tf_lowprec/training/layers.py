"""Keras layers that put an explicit emulation point into a model.

The dtype policies round the operands of every GEMM; `Quantize` reaches where
they do not: the residual stream, attention scores, an embedding output, a
model's input.

>>> import keras, numpy as np, tf_lowprec as lp
>>> layer = lp.layers.Quantize("e4m3")
>>> layer(np.array([[0.3, 1000.0]], np.float32)).numpy().tolist()
[[0.3125, 448.0]]
"""

import keras
import tensorflow as tf

from tf_lowprec.numerics import formats as formats_lib
from tf_lowprec.numerics import rounding as rounding_lib


@keras.saving.register_keras_serializable(package="tf_lowprec")
class Quantize(keras.layers.Layer):
    """Rounds its input onto a float, DFP or block-scaled grid; optionally the gradient too.

    Args:
      format: a `FloatFormat`, `DfpFormat`, `BlockFormat` (blocked along its
        `axis`), preset name or format config: the grid of the forward pass.
      backward_format: None (straight-through gradient) or a format the
        incoming gradient is rounded to in the backward pass.
      rounding: "nearest_even", "stochastic" or "toward_zero" (forward).
      backward_rounding: rounding mode of the backward pass.
      seed: stochastic rounding: int seed of the layer's
        `keras.random.SeedGenerator`.  Every call (every training step) draws
        fresh bits from it, and two runs with the same seed, or with
        `keras.utils.set_random_seed` and seed=None, draw the same bits.
      random_bits: random bits per element for stochastic rounding (1..32;
        see `round_to_format` for the bias bound of the default 16).
      implementation: "auto", "op" or "tf" (see `round_to_format`).

    The layer computes in float32 whatever the global dtype policy: inputs
    are cast to float32 (exact from float16 / bfloat16) and the output is
    float32.
    """

    def __init__(
        self,
        format,  # noqa: A002 (the natural name; mirrors `dtype`)
        backward_format=None,
        rounding="nearest_even",
        backward_rounding="nearest_even",
        seed=None,
        random_bits=16,
        implementation="auto",
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.format = formats_lib.get(format)
        self.backward_format = (
            None if backward_format is None else formats_lib.get(backward_format)
        )
        formats_lib.check_rounding(rounding)
        formats_lib.check_rounding(backward_rounding, "backward_rounding")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be None or an int, got {seed!r}")
        rounding_lib.check_random_bits(random_bits)
        rounding_lib.check_implementation(implementation)
        self.rounding = rounding
        self.backward_rounding = backward_rounding
        self.seed = seed
        self.random_bits = random_bits
        self.implementation = implementation
        self.supports_masking = True
        self._stochastic = rounding == "stochastic" or (
            self.backward_format is not None and backward_rounding == "stochastic"
        )
        self.seed_generator = keras.random.SeedGenerator(seed) if self._stochastic else None

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        seed = self.seed_generator.next() if self._stochastic else None
        return rounding_lib.quantize(
            x,
            self.format,
            self.rounding,
            seed=seed,
            random_bits=self.random_bits,
            backward_format=self.backward_format,
            backward_rounding=self.backward_rounding,
            implementation=self.implementation,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    # Keras does not save SeedGenerator states (Dropout's included); this
    # layer does, so that training resumed from a checkpoint draws the same
    # stochastic-rounding bits as an uninterrupted run.
    def save_own_variables(self, store):
        if self.seed_generator is not None:
            store["seed_generator_state"] = keras.ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store):
        if self.seed_generator is not None and "seed_generator_state" in store:
            self.seed_generator.state.assign(store["seed_generator_state"])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "format": formats_lib.serialize(self.format),
                "backward_format": (
                    None
                    if self.backward_format is None
                    else formats_lib.serialize(self.backward_format)
                ),
                "rounding": self.rounding,
                "backward_rounding": self.backward_rounding,
                "seed": self.seed,
                "random_bits": self.random_bits,
                "implementation": self.implementation,
            }
        )
        return config
