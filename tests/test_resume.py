"""Exact resume under stochastic rounding (docs/reliability.md).

A `Policy("bf16", rounding="stochastic")` fit stopped after epoch 1 by a
`ModelCheckpoint(.keras)`, reloaded with `load_model` and continued with
`initial_epoch` ends with the weights of the uninterrupted run, bit for bit:
the rounding seeds hash each layer's name chain below the outermost model
(which `load_model` and renaming keep) and the optimizer step (which the
file restores), not `layer.path` (which changes on reload).  Runtime: ~6 s.
"""

import os

import keras
import numpy as np
import pytest

import tf_lowprec as lp
from tf_lowprec.keras import emulation


def _data():
    rng = np.random.RandomState(0)
    return rng.randn(24, 6).astype("float32"), rng.randn(24, 2).astype("float32")


def _model(name):
    keras.utils.set_random_seed(3)
    policy = lp.Policy("bf16", rounding="stochastic")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh",
                                                                    dtype=policy),
                              keras.layers.Dense(2, dtype=policy)], name=name)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


def _fit(model, epochs, initial_epoch=0, callbacks=()):
    x, y = _data()
    return model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch, shuffle=False,
              verbose=0, callbacks=list(callbacks))


def test_checkpoint_resume_is_bit_identical_under_stochastic_rounding(tmp_path):
    keras.backend.clear_session()
    uninterrupted = _model("run")
    _fit(uninterrupted, epochs=2)

    keras.backend.clear_session()
    path = os.path.join(tmp_path, "epoch.keras")
    first = _model("another_name")  # the model's own name takes no part in the seeds
    _fit(first, epochs=1, callbacks=[keras.callbacks.ModelCheckpoint(path)])
    keras.backend.clear_session()
    resumed = keras.saving.load_model(path)
    assert [layer.path for layer in resumed.layers] != [layer.path for layer in first.layers]
    _fit(resumed, epochs=2, initial_epoch=1)

    for want, got in zip(uninterrupted.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    # Stochastic rounding takes part: its draws follow the optimizer step.
    x = _data()[0]
    before = np.asarray(resumed(x))
    resumed.optimizer.iterations.assign(resumed.optimizer.iterations + 1)
    assert not np.array_equal(np.asarray(resumed(x)), before)


class _StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("killed after epoch 1")


def test_backup_and_restore_resume_is_bit_identical_under_stochastic_rounding(tmp_path):
    keras.backend.clear_session()
    uninterrupted = _model("run")
    _fit(uninterrupted, epochs=2)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), double_checkpoint=True)
    keras.backend.clear_session()
    with pytest.raises(KeyboardInterrupt):
        _fit(_model("run"), epochs=2, callbacks=[backup, _StopAfterFirstEpoch()])
    keras.backend.clear_session()
    resumed = _model("run")
    history = _fit(resumed, epochs=2, callbacks=[backup])
    assert history.epoch == [1]  # restored the epoch-1 backup, ran epoch 2 only
    for want, got in zip(uninterrupted.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("nested", [False, True])
def test_seed_keys_are_distinct_per_layer_and_ignore_the_outer_model(nested):
    keras.backend.clear_session()
    policy = lp.Policy("bf16", rounding="stochastic")
    layers = [keras.layers.Dense(4, dtype=policy, name=n) for n in ("a", "b")]
    inner = keras.Sequential([keras.Input((4,))] + layers, name="block")
    model = keras.Sequential([keras.Input((4,)), inner], name="outer") if nested else inner
    keys = []

    def record(context, role, value, round_fn, axis):
        keys.append(context.layer_key())
        return round_fn(value)

    remove = emulation.add_role_hook(record)
    try:
        model(np.ones((2, 4), "float32"))
    finally:
        remove()
    assert sorted(set(keys)) == (["block/a", "block/b"] if nested else ["a", "b"])
