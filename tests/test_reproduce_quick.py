"""The reproduction suite's command keeps working (benchmarks/reproduce, --quick).

Runs two claims on the smallest workload in quick mode, in a subprocess as
the README documents it, and checks the report it writes: every requested
cell trained, the verdicts were computed, the paper's figures are beside ours.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "benchmarks.reproduce", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_quick_run_writes_report_with_verdicts_and_paper_figures(tmp_path):
    result = _run("--quick", "--tasks", "bf16", "loss_scaling", "--domains", "digits",
                  "--seeds", "2", "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "reproduction_quick.json").read_text())
    cells = report["results"]["digits"]
    assert set(cells) == {"fp32", "bf16", "fp32 (loss x c)", "fp16 (loss x c), no loss scaling",
                          "fp16 (loss x c), dynamic loss scaling"}
    for cell in cells.values():
        assert len(cell["metrics"]) == 2 and len(cell["curves"]) == 2
        assert all(0.0 <= m <= 100.0 for m in cell["metrics"])
    # Seeds differ only in initialisation and order: the two runs are not copies.
    assert cells["fp32"]["curves"][0] != cells["fp32"]["curves"][1]
    verdicts = report["verdicts"]
    assert set(verdicts) == {"bf16", "loss_scaling"}
    # The loss multiplier c = 2^-18 underflows FP16 errors even on this tiny run.
    no_scaling = verdicts["loss_scaling"]["digits"]["fp16 (loss x c), no loss scaling"]
    assert no_scaling["observed"] == "worse"
    text = (tmp_path / "reproduction_quick.md").read_text()
    assert "Kalamkar et al. 2019" in text and "Micikevicius et al. 2018" in text
    assert "(unverified)" in text
    for plot in report["plots"]:
        assert (tmp_path / plot).stat().st_size > 1000


def _cli():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.reproduce import __main__ as cli  # noqa: PLC0415

    return cli


def test_from_json_rerenders_without_training(tmp_path):
    result = _run("--quick", "--tasks", "dfp16", "--domains", "digits", "--out-dir",
                  str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "reproduction_quick.json").read_text())
    # The DFP16 claim comes with the INT16 GEMM measured against FP32 matmul.
    assert [row["size"] for row in report["throughput"]["rows"]] == [128, 256]
    assert all(row["gops"]["int16"] > 0 for row in report["throughput"]["rows"])
    md = tmp_path / "reproduction_quick.md"
    md.unlink()
    _cli().main(["--from-json", str(tmp_path / "reproduction_quick.json"), "--out-dir",
                 str(tmp_path)])
    assert "INT16 GEMM alone" in md.read_text()


@pytest.mark.parametrize("args, message", [
    (["--tasks", "fp64"], "--tasks: unknown ['fp64']"),
    (["--domains", "imagenet"], "--domains: unknown ['imagenet']"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--quick", "--readme"], "--readme needs a full run"),
])
def test_bad_arguments_are_refused_with_the_allowed_values(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli().parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
