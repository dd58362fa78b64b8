import numpy as np
import tensorflow as tf

import tf_lowprec as lp


def test_bf16_ties_to_even_and_specials():
    x = tf.constant([1 + 2**-8, 1 + 3 * 2**-8, np.inf, -0.0], tf.float32)
    y = lp.round_to_format(x, lp.BF16).numpy()
    np.testing.assert_array_equal(y[:3], [1.0, 1 + 2**-6, np.inf])
    assert np.signbit(y[3])
