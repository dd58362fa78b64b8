"""SavedModel export: stock TensorFlow serves it, without the custom op library."""

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_lowprec as lp

HERE = os.path.dirname(os.path.abspath(__file__))
SERVE = os.path.join(HERE, "export", "serve_without_tf_lowprec.py")


def _cnn(policy_name):
    keras.utils.set_random_seed(0)
    policy = lp.Policy(policy_name)
    model = keras.Sequential([
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(4, 3, activation="relu", dtype=policy),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(6, 3, padding="same", dtype=policy),
        keras.layers.Flatten(),
        keras.layers.Dense(5, dtype=policy),
    ])
    return model


def _inputs():
    return np.random.default_rng(0).normal(size=(3, 12, 12, 1)).astype(np.float32)


class _Server:
    """serve_without_tf_lowprec.py answering requests: one process (one TensorFlow start-up)
    serves every SavedModel of this module."""

    def __init__(self):
        self._stderr = tempfile.TemporaryFile()  # a file: a full pipe would block the server
        self.proc = subprocess.Popen([sys.executable, SERVE, "--requests"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr)
        self._pending = b""

    def _line(self, deadline):
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            ready = select.select([self.proc.stdout], [], [], max(left, 0))[0]
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                self.proc.kill()
                reason = "timed out" if not ready else f"exited ({self.proc.wait()})"
                self._stderr.seek(0)
                raise AssertionError(f"the serving process {reason}:\n"
                                     f"{self._stderr.read().decode()[-3000:]}")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode()

    def serve(self, *paths, timeout=300):
        """The stdout lines of one request; fails the test if serving failed."""
        self.proc.stdin.write((json.dumps([str(p) for p in paths]) + "\n").encode())
        self.proc.stdin.flush()
        deadline, lines = time.monotonic() + timeout, []
        while (line := self._line(deadline)) != "DONE":
            assert not line.startswith("ERROR"), line
            lines.append(line)
        return lines

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self._stderr.close()


@pytest.fixture(scope="module")
def server():
    served = _Server()
    yield served
    served.close()


def _serve_elsewhere(server, path, x, tmp_path):
    inputs, outputs = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(inputs, x)
    assert "CUSTOM_OPS []" in server.serve(path, inputs, outputs)
    return np.load(outputs)


@pytest.mark.parametrize("policy_name", ["bf16", "fp8", "dfp16"])
@pytest.mark.parametrize("route", ["export_saved_model", "model.export"])
def test_emulated_export_matches_predict_bit_for_bit(policy_name, route, server, tmp_path):
    model = _cnn(policy_name)
    x = _inputs()
    expected = model.predict(x, verbose=0)
    path = tmp_path / "saved"
    if route == "export_saved_model":
        lp.export_saved_model(model, str(path))
    else:
        model.export(str(path), format="tf_saved_model", verbose=False)
    # The layers keep their own policies after the export.
    assert all(layer.dtype_policy.implementation == "auto"
               for layer in model.layers if isinstance(layer.dtype_policy, lp.Policy))
    served = _serve_elsewhere(server, path, x, tmp_path)
    np.testing.assert_array_equal(served, expected)
    # And the emulation really is in the graph: float32 numerics differ.
    fp32 = _cnn("fp32")
    fp32.set_weights(model.get_weights())
    assert not np.array_equal(served, fp32.predict(x, verbose=0))


def test_float32_numerics_strips_the_emulation(server, tmp_path):
    model = _cnn("fp8")
    x = _inputs()
    path = tmp_path / "stripped"
    lp.export_saved_model(model, str(path), numerics="float32")
    fp32 = _cnn("fp32")
    fp32.set_weights(model.get_weights())
    np.testing.assert_array_equal(_serve_elsewhere(server, path, x, tmp_path),
                                  fp32.predict(x, verbose=0))


@pytest.mark.skipif(shutil.which("saved_model_cli") is None, reason="saved_model_cli not on PATH")
def test_saved_model_cli_show_and_run(tmp_path):
    model = _cnn("bf16")
    path = tmp_path / "cli"
    lp.export_saved_model(model, str(path))
    show = subprocess.run(["saved_model_cli", "show", "--dir", str(path), "--all"],
                          capture_output=True, text=True, timeout=300)
    assert show.returncode == 0, show.stderr[-2000:]
    assert "serving_default" in show.stdout
    x = _inputs()
    np.save(tmp_path / "x.npy", x)
    input_name = next(iter(
        tf.saved_model.load(str(path)).signatures["serving_default"].structured_input_signature[1]))
    run = subprocess.run(
        ["saved_model_cli", "run", "--dir", str(path), "--tag_set", "serve",
         "--signature_def", "serving_default",
         "--inputs", f"{input_name}={tmp_path / 'x.npy'}",
         "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = np.load(next((tmp_path / "out").glob("*.npy")))
    np.testing.assert_array_equal(out, model.predict(x, verbose=0))


def test_bad_numerics():
    with pytest.raises(ValueError, match="numerics must be one of"):
        lp.export_saved_model(_cnn("bf16"), "/tmp/unused", numerics="int8")
