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
                          env=env, capture_output=True, text=True, timeout=600)


def test_quick_run_writes_report_with_verdicts_and_paper_figures(tmp_path):
    result = _run("--quick", "--tasks", "bf16", "loss_scaling", "--domains", "digits",
                  "underflow", "--seeds", "2", "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "reproduction_quick.json").read_text())
    # Each claim trains only on its own workloads.
    assert set(report["results"]["digits"]) == {"fp32", "bf16"}
    cells = report["results"]["underflow"]
    assert set(cells) == {"fp32", "fp16, no loss scaling", "fp16, fixed loss scale 2^15",
                          "fp16, dynamic loss scaling", "fp16, adaptive loss scaling"}
    for cell in cells.values():
        assert len(cell["metrics"]) == 2 and len(cell["curves"]) == 2
        assert all(0.0 <= m <= 100.0 for m in cell["metrics"])
    # Seeds differ only in initialisation and order: the two runs are not copies.
    assert cells["fp32"]["curves"][0] != cells["fp32"]["curves"][1]
    verdicts = report["verdicts"]
    assert set(verdicts) == {"bf16", "loss_scaling"}
    # Quick sizes are too small to learn the recall; the verdicts still follow the numbers.
    for rows in (verdicts["loss_scaling"]["underflow"], verdicts["bf16"]["digits"]):
        for row in rows.values():
            assert row["verdict"] in ("holds", "fails", "not tested")
            assert row["mdd"] > 0 and row["effect"] > 0
    text = (tmp_path / "reproduction_quick.md").read_text()
    assert "Kalamkar et al. 2019" in text and "Micikevicius et al. 2018" in text
    assert "(unverified)" in text and "MDD = (z_0.975 + z_0.80)" in text
    assert "## Power: every comparison" in text
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


def _modules():
    _cli()
    from benchmarks.reproduce import power, report  # noqa: PLC0415

    return power, report


def test_detectable_difference_follows_the_stated_formula():
    power, _ = _modules()
    a = power.arm_stats([1.0, 2.0, 3.0])
    b = power.arm_stats([2.0, 3.0, 4.0, float("nan")])
    assert (a["n"], a["mean"], a["std"]) == (3, 2.0, 1.0)
    assert (b["n"], b["n_failed"], b["mean"]) == (3, 1, 3.0)
    # (1.96 + 0.84) * s_p * sqrt(2 / n) with s_p = 1, n = 3.
    assert power.detectable_difference(a, b) == pytest.approx(2.801585 * (2 / 3) ** 0.5)
    assert power.detectable_difference(a, b, resolution=5.0) == 5.0
    # One seed has no spread: nothing is detectable.
    assert power.detectable_difference(power.arm_stats([1.0]), a) == float("inf")
    # MDD = effect at n = 2 (2.8 s / effect)^2 seeds.
    assert power.seeds_needed(1.0, 1.0) == 16
    assert power.seeds_needed(1.0, 0.01, resolution=0.1) is None


@pytest.mark.parametrize("expected, gain, mdd, effect, verdict", [
    ("worse", -5.0, 1.0, 10.0, "holds"),        # clearly worse: the paper's effect seen
    ("worse", -0.5, 1.0, 10.0, "fails"),        # could see 10, saw nothing
    ("worse", -0.5, 1.0, 0.5, "not tested"),    # could not see an effect of 0.5
    ("worse", float("-inf"), float("inf"), 1.0, "holds"),  # diverged on every seed
    ("match", -0.1, 0.15, 0.2, "holds"),
    ("match", 3.0, 0.15, 0.2, "holds"),         # better is no loss
    ("match", -0.1, 1.0, 0.2, "not tested"),    # a 0.2 loss could hide in the noise
    ("match", -0.3, 0.25, 0.2, "fails"),        # worse beyond both MDD and tolerance
    ("match", -2.0, 1.0, 0.2, "fails"),         # noisy, but worse beyond the noise
    ("match", -0.9, 1.0, 0.2, "not tested"),
])
def test_judge_gives_the_verdict_the_numbers_imply(expected, gain, mdd, effect, verdict):
    power, _ = _modules()
    assert power.judge(expected, gain, mdd, effect)[0] == verdict


def test_judge_refuses_unknown_expectations():
    power, _ = _modules()
    with pytest.raises(ValueError, match="expected must be"):
        power.judge("same", 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="effect must be > 0"):
        power.judge("match", 0.0, 1.0, 0.0)


def _cells(values):
    return {name: {"metrics": metrics} for name, metrics in values.items()}


def test_verdicts_and_ties_are_computed_from_synthetic_results():
    power, report = _modules()
    meta = {"underflow": {"higher_is_better": True}, "digits": {"higher_is_better": True}}
    results = {
        "underflow": _cells({
            "fp32": [90.4, 90.5, 90.6, 90.5],
            "fp16, no loss scaling": [40.0, 41.0, 39.0, 40.0],
            "fp16, fixed loss scale 2^15": [91.5, 91.6, 91.4, 91.5],
            "fp16, dynamic loss scaling": [90.45, 90.55, 90.5, 90.5],
            "fp16, adaptive loss scaling": [85.0, 85.5, 85.0, 84.5],
        }),
        "digits": _cells({"fp32": [92.0, 93.0, 91.0], "bf16": [92.0, 92.5, 91.5]}),
    }
    table = report.verdicts(results, meta)
    rows = table["loss_scaling"]["underflow"]
    assert rows["fp16, no loss scaling"]["verdict"] == "holds"
    assert rows["fp16, dynamic loss scaling"]["verdict"] == "holds"
    assert rows["fp16, fixed loss scale 2^15"]["verdict"] == "holds"
    assert rows["fp16, adaptive loss scaling"]["verdict"] == "fails"
    sp = rows["fp16, no loss scaling"]["pooled_std"]
    assert rows["fp16, no loss scaling"]["mdd"] == pytest.approx(
        max(power.MDD_FACTOR * sp * (2 / 4) ** 0.5, report.RESOLUTION["underflow"]))
    # The digits' seed spread (std 1 pp) cannot resolve a 0.2 pp tolerance.
    assert table["bf16"]["digits"]["bf16"]["verdict"] == "not tested"
    assert "loss_scaling" not in table or "digits" not in table["loss_scaling"]
    _, verdict = report.claim_summary("loss_scaling", table["loss_scaling"], None, results)
    assert verdict.startswith("fails")
    _, verdict = report.claim_summary("bf16", table["bf16"], None, results)
    assert verdict.startswith("not tested")
    ties = report.ties_and_beats(results, meta)["loss_scaling"]
    against_adaptive = {(other, how) for _, method, other, how, *_ in ties
                        if method == "fp16, adaptive loss scaling"}
    assert against_adaptive == {("fp32", "beats"), ("fp16, fixed loss scale 2^15", "beats"),
                                ("fp16, dynamic loss scaling", "beats")}
    assert not any(other == "fp16, no loss scaling" for _, _, other, *_ in ties)
    # A paper's method is compared with the control and baselines, not with other methods.
    against_fixed = {other for _, method, other, *_ in ties
                     if method == "fp16, fixed loss scale 2^15"}
    assert against_fixed == set()


def test_merged_reports_divide_times_only_within_one_run():
    _, report = _modules()
    meta = {"digits": {"higher_is_better": True}}

    def results(fp32_run, dfp16_run):
        return {"digits": {
            "fp32": {"metrics": [92.0, 93.0, 91.0], "seconds": [2.0, 2.0, 2.0], "run": fp32_run},
            "dfp16": {"metrics": [92.0, 92.5, 91.5], "seconds": [4.0, 4.0, 4.0],
                      "run": dfp16_run}}}

    same, mixed = results(0, 0), results(0, 1)
    text, _ = report.claim_summary("dfp16", report.verdicts(same, meta)["dfp16"], None, same,
                                   merged=True)
    assert "end-to-end emulated training 0.50-0.50x the FP32 speed" in text
    text, _ = report.claim_summary("dfp16", report.verdicts(mixed, meta)["dfp16"], None, mixed,
                                   merged=True)
    assert "end-to-end" not in text
