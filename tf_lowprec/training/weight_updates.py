"""Weights kept in a 16-bit format, with the update rounded three ways.

"Revisiting BFloat16 Training" (Zamirai et al. 2020): when the weights
themselves are BF16, rounding `w + update` to nearest cancels every update
smaller than half an ulp of w, and training stalls.  Stochastic rounding
(unbiased in expectation) and Kahan summation (a 16-bit compensation buffer
that carries the lost low part into later steps) recover.

`LowPrecisionWeights` wraps any Keras optimizer: the inner optimizer computes
the update in FP32 (its state stays FP32), then the new weight is rounded to
`format`:

- "nearest_even": `w <- round(w + u)`.
- "stochastic":   `w <- SR(w + u)`, bits from (seed, step, variable index).
- "kahan":        `y = round(u - c); s = round(w + y); c = round(round(s - w) - y);
  w <- s` with `c` a per-weight buffer in the same format (docs/papers.md §0.6).

The weights are rounded to `format` when the optimizer is built, so they
hold representable values from the first step.

>>> import keras, numpy as np, tf_lowprec as lp
>>> v = keras.Variable(np.ones(3, np.float32))
>>> opt = lp.LowPrecisionWeights(keras.optimizers.SGD(1e-3), "bf16", "nearest_even")
>>> opt.apply([np.ones(3, np.float32)], [v])
>>> v.numpy()  # 1 - 1e-3 rounds back to 1 in bfloat16
array([1., 1., 1.], dtype=float32)
"""

import keras
import tensorflow as tf

from tf_lowprec.numerics import formats as formats_lib
from tf_lowprec.numerics import rounding as rounding_lib

UPDATE_ROUNDINGS = ("nearest_even", "stochastic", "kahan")


@keras.saving.register_keras_serializable(package="tf_lowprec")
class LowPrecisionWeights(keras.optimizers.Optimizer):
    """Keeps trainable weights in a low-precision float format.

    Args:
      inner_optimizer: the Keras optimizer that computes the update.
      format: the weights' format (a `FloatFormat` or preset name, e.g. "bf16").
      rounding: "nearest_even", "stochastic" or "kahan".
      seed: int seed of the stochastic rounding (None: from the global Keras
        seed at construction).
    """

    def __init__(self, inner_optimizer, format="bf16", rounding="nearest_even",  # noqa: A002
                 seed=None, name=None, **kwargs):
        if kwargs:
            raise ValueError(
                f"LowPrecisionWeights does not take {sorted(kwargs)}; set them on the inner "
                "optimizer"
            )
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise ValueError(
                f"inner_optimizer must be a keras.optimizers.Optimizer, got {inner_optimizer!r}"
            )
        fmt = formats_lib.get(format)
        if not isinstance(fmt, formats_lib.FloatFormat):
            raise ValueError(f"format must be a FloatFormat for weights, got {fmt!r}")
        if rounding not in UPDATE_ROUNDINGS:
            raise ValueError(
                f"rounding must be one of {', '.join(map(repr, UPDATE_ROUNDINGS))}; got "
                f"{rounding!r}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be None or an int, got {seed!r}")
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self.format = fmt
        self.rounding = rounding
        self.seed = seed
        self._seed_pair = keras.random.SeedGenerator(seed)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    def build(self, var_list):
        self.compensations = []
        if self.rounding == "kahan":
            for v in var_list:
                self.compensations.append(self.add_variable_from_reference(v, "kahan"))
        self._seed_state = self.add_variable(
            shape=(2,), dtype="int64", initializer="zeros", name="seed",
            aggregation="only_first_replica",
        )
        self._seed_state.assign(tf.cast(self._seed_pair.state, tf.int64))
        self.inner_optimizer.build(var_list)
        super().build(var_list)
        for v in var_list:  # representable from the start
            if not getattr(v, "overwrite_with_gradient", False):
                v.assign(self._round(v.value))

    def _round(self, x, rounding="nearest_even", seed=None):
        return rounding_lib.round_to_format(x, self.format, rounding, seed=seed)

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        variables = trainable_variables or self._trainable_variables
        old = [tf.identity(v.value) for v in variables]
        with tf.control_dependencies(old):
            self.inner_optimizer.apply(grads, variables)
        step = tf.cast(self.inner_optimizer.iterations, tf.int64)
        for index, (v, w) in enumerate(zip(variables, old)):
            if getattr(v, "overwrite_with_gradient", False):
                continue  # state the inner optimizer assigned (lp.Scaling's scales), not a weight
            new = v.value
            if self.rounding == "nearest_even":
                v.assign(self._round(new))
            elif self.rounding == "stochastic":
                seed = tf.random.experimental.stateless_fold_in(
                    tf.random.experimental.stateless_fold_in(self._seed_state.value, step), index
                )
                v.assign(self._round(new, "stochastic", seed))
            else:
                c = self.compensations[index]
                update = new - w  # the FP32 update the inner optimizer applied
                y = self._round(update - c.value)
                s = self._round(w + y)
                c.assign(self._round(self._round(s - w) - y))
                v.assign(s)

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "format": formats_lib.serialize(self.format),
            "rounding": self.rounding,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        return cls(inner, **config)
