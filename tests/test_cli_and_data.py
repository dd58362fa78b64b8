"""The tf-lowprec command and the bundled data."""

import subprocess
import sys

import numpy as np
import pytest

from tf_lowprec.cli import datasets


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


def _main_in_process(args, capsys):
    """(exit status, stderr) of `tf-lowprec ARGS` run in this process (no TF start-up cost)."""
    from tf_lowprec.cli.main import main

    with pytest.raises(SystemExit) as exit_info:  # absl.app exits
        main(args)
    return exit_info.value.code or 0, capsys.readouterr().err


def test_usage_errors_exit_1_with_absl_messages(capsys):
    for args, message in ((["formats", "--formats=bogus"], "FATAL Flags parsing error"),
                          (["formats", "--rounding=up"], "FATAL Flags parsing error"),
                          (["nosuch"], "unknown command 'nosuch'"),
                          ([], "give a command"),
                          (["formats", "--no_such_flag=1"], "Unknown command line flag")):
        status, err = _main_in_process(args, capsys)
        assert status == 1 and message in err, (args, err)


def test_usage_error_from_the_console_script_has_no_traceback():
    result = _run("compare", "--policies=fp64")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "unknown policy 'fp64'" in result.stderr


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


def test_compare_tiny_run_writes_table_plot_and_json(tmp_path):
    out = tmp_path / "cmp"
    result = _run("compare", "--policies=fp32,bf16:stochastic,fp16+als", "--epochs=1",
                  "--train_samples=256", "--model=mlp", "--monitor_every=2", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines()
             if line.startswith(("fp32 ", "bf16:stochastic", "fp16+als"))]
    assert len(table) == 3 and "1.00x" in table[0] and table[2].endswith("adaptive")
    assert "training under fp16+als" in result.stderr  # absl logging
    assert "val_accuracy" in result.stdout  # Keras' progress bar
    import json

    data = json.loads((out / "compare.json").read_text())
    assert list(data["runs"]) == ["fp32", "bf16:stochastic", "fp16+als"]
    assert all(np.isfinite(r[0]["test_loss"]) for r in data["runs"].values())
    assert data["runs"]["fp16+als"][0]["curves"]["loss_scale"] == [2.0**15]
    assert data["environment"]["keras"].startswith("3.")
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_and_helpfull_are_absls(capsys, monkeypatch):
    import types

    from tf_lowprec.cli.main import main

    # As under the console script, whose __main__ module has no docstring.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    for flag in ("--helpfull", "--help"):
        with pytest.raises(SystemExit):
            main([flag])
        out = capsys.readouterr().out
        assert "USAGE: tf-lowprec COMMAND" in out and "--policies" in out, flag
        assert "--rounding" in out and "--model" in out, flag
    # --helpfull also lists the flags of absl itself (logging).
    with pytest.raises(SystemExit):
        main(["--helpfull"])
    assert "--verbosity" in capsys.readouterr().out


def test_info_prints_the_tier_each_op_runs(capsys):
    import tf_lowprec as lp
    from tf_lowprec.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["info"])
    assert not exit_info.value.code
    out = capsys.readouterr().out
    tiers = lp.kernel_tiers()
    for op, name in (("rounding", "round_to_format"), ("dfp_gemm", "dfp_matmul"),
                     ("bf16_gemm", "bf16_matmul")):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert line.split()[-1 - len(tiers[op]["available"])] == tiers[op]["auto"]
        assert line.endswith(", ".join(tiers[op]["available"]))
    assert "TensorFlow 2.21" in out and "CPU:" in out
