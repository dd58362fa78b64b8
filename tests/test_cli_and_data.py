"""The tf-lowprec command and the bundled data."""

import subprocess
import sys

import numpy as np

from tf_lowprec import datasets


def _run(*args):
    return subprocess.run([sys.executable, "-m", "tf_lowprec", *args], capture_output=True,
                          text=True, timeout=300)


def test_formats_command_prints_table():
    result = _run("formats", "--formats=bf16,e4m3,dfp16")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(("bf16", "e4m3",
                                                                             "dfp16"))]
    assert len(lines) == 9  # 3 formats x 3 tensors
    assert "underflow" in result.stdout


def test_usage_errors_exit_2_without_traceback():
    for args in (["formats", "--formats=bogus"], ["formats", "--rounding=up"], ["nosuch"], []):
        result = _run(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr


def test_mnist_split_is_stratified_and_fixed():
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist_5k()
    assert x_train.shape == (4000, 28, 28) and x_test.shape == (1000, 28, 28)
    np.testing.assert_array_equal(np.bincount(y_train), [400] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [100] * 10)
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    (again, _), _ = datasets.load_mnist_5k()
    np.testing.assert_array_equal(again, x_train)
    raw = datasets.load_mnist_5k(normalize=False)[0][0]
    assert raw.dtype == np.uint8
