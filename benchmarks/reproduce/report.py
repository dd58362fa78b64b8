"""Verdicts, the Markdown report, the README section and the plots."""

import math
import os
import re

import numpy as np

from . import claims as claims_lib
from . import papers, power

# Per domain: short name, unit, resolution (the smallest difference the metric
# can show: one test example, the printed precision) and the size of one
# percentage point of top-1 accuracy in the domain's unit.  A pp of top-1 is
# about 1/90 of the way from chance to a trained classifier; the same share of
# the char-LM's way from chance (6.6 bits/char) to FP32 (2.7) is 0.04 bits/char,
# of the recommender's (AUC 0.5 to 0.76) 0.003 AUC.
# The Transformer LM's way from chance to FP32 (about 3.3 bits/char) gives 0.035.
SHORT = {"mnist": "MNIST CNN", "digits": "digits MLP", "charlm": "char-LM",
         "recsys": "recsys (synthetic)", "underflow": "recall RNN (underflow)",
         "mobilenet": "MobileNetV2-style CNN", "transformer": "Transformer LM"}
UNITS = {"mnist": "pp", "digits": "pp", "charlm": "bpc", "recsys": "AUC", "underflow": "pp",
         "mobilenet": "pp", "transformer": "bpc"}
RESOLUTION = {"mnist": 0.1, "digits": 0.25, "charlm": 0.001, "recsys": 0.0001,
              "underflow": 0.1, "mobilenet": 0.1, "transformer": 0.001}
PER_PP = {"mnist": 1.0, "digits": 1.0, "charlm": 0.04, "recsys": 0.003, "underflow": 1.0,
          "mobilenet": 1.0, "transformer": 0.035}


def verdicts(results, domains_meta):
    """{claim: {domain: {config: row}}}: every arm against its claim's control.

    A row holds both arms' statistics (power.arm_stats), the difference, the
    pooled std, the minimal detectable difference, the paper's effect in the
    domain's unit, the seeds that would detect it, and the computed verdict.
    """
    out = {}
    for claim_name, claim in claims_lib.CLAIMS.items():
        per_domain = {}
        for domain, meta in domains_meta.items():
            cells = results.get(domain, {})
            if domain not in claim.domains or claim.control not in cells:
                continue
            control = power.arm_stats(cells[claim.control]["metrics"])
            rows = {}
            for arm in claim.arms[1:]:
                # Context arms (no expectation) enter no verdict: ties_and_beats lists them.
                if arm.config not in cells or arm.expected is None:
                    continue
                stats = power.arm_stats(cells[arm.config]["metrics"])
                delta = stats["mean"] - control["mean"] if stats["n"] else float("-inf")
                gain = delta if meta["higher_is_better"] else -delta
                if stats["n_failed"]:  # a seed that diverged is a failed run, not noise
                    gain = float("-inf")
                mdd = power.detectable_difference(control, stats, RESOLUTION[domain])
                effect = arm.effect_pp * PER_PP[domain]
                verdict, observed = power.judge(arm.expected, gain, mdd, effect)
                rows[arm.config] = {
                    "role": arm.role, "expected": arm.expected, "control": control,
                    "arm": stats, "delta": delta, "pooled_std": power.pooled_std(control, stats),
                    "mdd": mdd, "effect": effect, "effect_source": arm.effect_source,
                    "seeds_needed": power.seeds_needed(power.pooled_std(control, stats),
                                                       effect, RESOLUTION[domain]),
                    "observed": observed, "verdict": verdict,
                }
            if rows:
                per_domain[domain] = rows
        if per_domain:
            out[claim_name] = per_domain
    return out


def ties_and_beats(results, domains_meta):
    """{claim: [(domain, method, other, "ties" | "beats", other_stats, method_stats, mdd)]}.

    For every arm a claim proposes (role METHOD or OURS), each control or
    baseline arm of the claim whose mean ties it (within the MDD of the two) or
    beats it; for this library's own method (OURS), the paper's methods too.
    """
    proposed = (claims_lib.METHOD, claims_lib.OURS)
    out = {}
    for claim_name, claim in claims_lib.CLAIMS.items():
        found = []
        for domain, meta in domains_meta.items():
            cells = results.get(domain, {})
            if domain not in claim.domains:
                continue
            for method in claim.arms:
                if method.role not in proposed or method.config not in cells:
                    continue
                ours = power.arm_stats(cells[method.config]["metrics"])
                for other in claim.arms:
                    if other.config == method.config or other.config not in cells:
                        continue
                    if other.role in proposed and method.role != claims_lib.OURS:
                        continue
                    theirs = power.arm_stats(cells[other.config]["metrics"])
                    mdd = power.detectable_difference(ours, theirs, RESOLUTION[domain])
                    how = power.ties_or_beats(theirs, ours, mdd, meta["higher_is_better"])
                    if how:
                        found.append((domain, method.config, other.config, how, theirs, ours,
                                      mdd))
        if found:
            out[claim_name] = found
    return out


def _fmt(domain, value):
    if value is None or math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.2f}" if UNITS.get(domain) == "pp" else (
        f"{value:.3f}" if UNITS.get(domain) == "bpc" else f"{value:.4f}")


def _cell(domain, summary):
    return f"{_fmt(domain, summary['mean'])} ± {_fmt(domain, summary['std'])}"


def _delta(domain, value):
    return ("+" if value >= 0 else "") + _fmt(domain, value) + " " + UNITS[domain]


_MARK = {power.HOLDS: "✓", power.FAILS: "✗", power.NOT_TESTED: "?"}


def _label(config):
    return config.replace("fp16, ", "").replace("bf16 weights, ", "")


def claim_summary(claim_name, per_domain, throughput, results, merged=False):
    """Our outcome for a claim in one sentence, and its computed verdict.

    `merged`: rows come from several runs, whose times (a loaded machine, an
    idle one) must not be divided by each other: a workload's speed ratio is
    given only where its fp32 and dfp16 cells come from the same run.
    """
    parts, row_verdicts = [], []
    for domain, rows in per_domain.items():
        bits = []
        for config, row in rows.items():
            row_verdicts.append(row["verdict"])
            bits.append(f"{_label(config)} {_delta(domain, row['delta'])} "
                        f"(MDD {_fmt(domain, row['mdd'])}) {_MARK[row['verdict']]}")
        parts.append(f"{SHORT[domain]}: " + ", ".join(bits))
    text = "; ".join(parts)
    if claim_name == "dfp16":
        if throughput:
            gemm = [r["int16_speedup"] for r in throughput["rows"]]
            full = [r["dfp16_speedup"] for r in throughput["rows"]]
            text += (f". GEMM speed vs FP32 matmul: INT16 GEMM alone {min(gemm):.2f}-"
                     f"{max(gemm):.2f}x, dfp_matmul with quantization {min(full):.2f}-"
                     f"{max(full):.2f}x")
        ratios = [
            np.mean(results[d]["fp32"]["seconds"]) / np.mean(results[d]["dfp16"]["seconds"])
            for d in per_domain if "dfp16" in results[d] and "fp32" in results[d]
            and (not merged or results[d]["fp32"].get("run") == results[d]["dfp16"].get("run"))]
        if ratios:
            text += (f"; end-to-end emulated training {min(ratios):.2f}-{max(ratios):.2f}x "
                     "the FP32 speed")
    verdict, detail = power.claim_verdict(row_verdicts)
    return text, f"{verdict} ({detail})"


def ties_text(found, with_domain_values=True):
    """'method: other ties (domain a ± s vs b ± s)' for one claim's ties_and_beats list."""
    bits = []
    for domain, method, other, how, theirs, ours, mdd in found:
        values = (f" ({_cell(domain, theirs)} vs {_cell(domain, ours)}, MDD "
                  f"{_fmt(domain, mdd)})" if with_domain_values else "")
        bits.append(f"{SHORT[domain]}: {other} {how} {method}{values}")
    return "; ".join(bits)


def _claims_table(report, verdict_table):
    ties = ties_and_beats(report["results"], report["meta"]["domains"])
    lines = ["| claim | paper's figures (papers.md) | ours: difference to the control, its "
             "MDD (✓ holds, ✗ fails, ? not tested) | control or baselines that tie or beat "
             "the method | verdict |", "|---|---|---|---|---|"]
    for claim_name, per_domain in verdict_table.items():
        claim = claims_lib.CLAIMS[claim_name]
        text, verdict = claim_summary(claim_name, per_domain, report.get("throughput"),
                                      report["results"], bool(report["meta"].get("runs")))
        lines.append(f"| **{claim.paper}**: {claim.statement} | "
                     f"{papers.figures_text(claim_name)} | {text} | "
                     f"{ties_text(ties.get(claim_name, []), False) or 'none'} | "
                     f"**{verdict}** |")
    return lines, ties


def _power_table(verdict_table):
    lines = ["| claim | workload | arm | paper expects | control | arm | difference | "
             "pooled std | MDD | paper's effect | seeds for the effect | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for claim_name, per_domain in verdict_table.items():
        for domain, rows in per_domain.items():
            for config, r in rows.items():
                needed = r["seeds_needed"]
                needed = "below resolution" if needed is None else str(needed)
                failed = r["arm"]["n_failed"]
                failed = f", {failed} diverged" if failed else ""
                lines.append(
                    f"| {claim_name} | {SHORT[domain]} | {config} | {r['expected']} | "
                    f"{_cell(domain, r['control'])} (n={r['control']['n']}) | "
                    f"{_cell(domain, r['arm'])} (n={r['arm']['n']}{failed}) | "
                    f"{_delta(domain, r['delta'])} | {_fmt(domain, r['pooled_std'])} | "
                    f"{_fmt(domain, r['mdd'])} | {_fmt(domain, r['effect'])}: "
                    f"{r['effect_source']} | {needed} | {_MARK[r['verdict']]} {r['verdict']} "
                    f"({r['observed']}) |")
    return lines


def markdown(report, command):
    """The full reproduction.md text."""
    results, meta = report["results"], report["meta"]
    domains_meta = meta["domains"]
    verdict_table = verdicts(results, domains_meta)
    domain_names = [d for d in domains_meta if d in results]
    if meta.get("runs"):
        header = ("Rows merged from several runs (`--from-json`; a later run's configuration "
                  "replaces an earlier one's on the same workload, so each claim's control is "
                  "the latest run's): " + "; ".join(meta["runs"]) + f". {meta['machine']}, "
                  f"{meta['cpus']} CPUs.")
    else:
        header = (f"Command: `{command}` ({meta['date']}, {meta['machine']}, {meta['cpus']} "
                  f"CPUs, {meta['seeds']} seeds, total {meta['total_seconds'] / 60:.1f} min"
                  + (", quick mode: sizes are smoke-test sizes, not results" if meta["quick"]
                     else "") + ").")
    lines = [
        "# Reproducing the seed papers' claims at small scale",
        "",
        header,
        "",
        "Every precision runs the same data, model, optimiser, learning-rate schedule and "
        "number of iterations as its control; seeds 0..n-1 vary the initialisation and batch "
        "order. Cells are mean ± sample std over seeds. No loss is multiplied by a constant: "
        "the loss-scaling claim runs on a workload whose errors underflow FP16 by themselves "
        "(none found here makes unscaled FP16 fail: docs/loss_scaling.md).",
        "",
        "**How the verdicts are computed** (benchmarks/reproduce/power.py, from the numbers "
        "below; nothing is written by hand). Each arm is compared with its claim's control. "
        "The minimal detectable difference: " + power.FORMULA + ", and never below the "
        "metric's resolution (" + ", ".join(
            f"{SHORT[d]} {RESOLUTION[d]} {UNITS[d]}" for d in domain_names) + "). The paper's "
        "effect is stated in pp of top-1 accuracy and converted to each workload's unit ("
        + ", ".join(f"{SHORT[d]} 1 pp = {PER_PP[d]} {UNITS[d]}" for d in domain_names)
        + ": the same share of the way from chance to FP32). An arm the paper expects to "
        "be **worse** holds if it is worse by more than the MDD, is *not tested* if the MDD "
        "exceeds the paper's effect (the setting could miss it), and fails otherwise. An arm "
        "the paper expects to **match** fails if it is worse by more than both the MDD and "
        "the paper's tolerance, is *not tested* if the MDD exceeds the tolerance (a loss "
        "the paper would call real could go unseen), and holds otherwise. A seed that "
        "diverges counts as a failed run. A claim fails if any comparison fails, holds if "
        "all hold, and is not tested if none was.",
        "",
        "## Claims",
        "",
    ]
    claims_lines, ties = _claims_table(report, verdict_table)
    lines += claims_lines
    lines += ["", "## Power: every comparison", "",
              "The seeds column is the number per arm whose MDD would reach the paper's "
              "effect at this seed spread.", ""]
    lines += _power_table(verdict_table)
    lines += ["", "## Arms that tie or beat a claim's method", "",
              "For each method a claim proposes, every control or baseline arm whose mean "
              "is within the MDD of the two (ties) or better by more (beats); for this "
              "library's own adaptive loss scaling, the paper's methods too:", ""]
    for claim_name, found in ties.items():
        lines.append(f"- **{claim_name}**: {ties_text(found)}")
    if not ties:
        lines.append("- none")
    lines += ["", "## Every configuration", ""]
    header = "| configuration | " + " | ".join(
        f"{SHORT[d]}: {domains_meta[d]['metric']}" for d in domain_names) + " |"
    lines += [header, "|---|" + "---|" * len(domain_names)]
    configs = []
    for d in domain_names:
        configs += [c for c in results[d] if c not in configs]
    for config in configs:
        cells = [_cell(d, results[d][config]) if config in results[d] else "–"
                 for d in domain_names]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    lines += ["", "Final training loss (mean over seeds of the last epoch's mean loss, unscaled; "
              "it shows stalls that the held-out metric of a small model may not):", "",
              "| configuration | " + " | ".join(SHORT[d] for d in domain_names) + " |",
              "|---|" + "---|" * len(domain_names)]
    for config in configs:
        cells = [f"{np.mean([c[-1] for c in results[d][config]['curves']]):.4f}"
                 if config in results[d] else "–" for d in domain_names]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per training run (mean over seeds; merged runs ran under different "
              "machine load, so compare times only within one run):", "",
              "| configuration | " + " | ".join(SHORT[d] for d in domain_names) + " |",
              "|---|" + "---|" * len(domain_names)]
    for config in configs:
        cells = [f"{np.mean(results[d][config]['seconds']):.1f}" if config in results[d]
                 else "–" for d in domain_names]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    lines += ["", "## Workloads", ""]
    for d in domain_names:
        m = domains_meta[d]
        lines.append(f"- **{SHORT[d]}** ({m['title']}): {m['detail']}")
    lines += ["", "## Configurations", ""]
    for config in configs:
        lines.append(f"- `{config}`: {claims_lib.CONFIGS[config].description}")
    if report.get("throughput"):
        t = report["throughput"]
        lines += ["", "## DFP16 GEMM throughput", "",
                  f"Square GEMMs, median of interleaved repetitions, {t['threads']} threads, "
                  f"load average {t['load_average']:.1f} at the end (shared machine).", "",
                  "| size | FP32 matmul GOP/s | dfp_matmul GOP/s | INT16 GEMM alone GOP/s | "
                  "dfp_matmul / FP32 | INT16 GEMM / FP32 |", "|---|---|---|---|---|---|"]
        for r in t["rows"]:
            g = r["gops"]
            lines.append(f"| {r['size']}^3 | {g['fp32']:.1f} | {g['dfp16']:.1f} | "
                         f"{g['int16']:.1f} | {r['dfp16_speedup']:.2f} | "
                         f"{r['int16_speedup']:.2f} |")
    lines += ["", "## Per-seed values", ""]
    for d in domain_names:
        for config, s in results[d].items():
            values = ", ".join(_fmt(d, v) for v in s["metrics"])
            lines.append(f"- {SHORT[d]} / {config}: {values}")
    plots = [p for p in report.get("plots", [])]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n", verdict_table


def readme_section(report, command, verdict_table, results_link):
    """The README's reproduction table (papers beside ours), between markers."""
    meta = report["meta"]
    names = [m["title"] for d, m in meta["domains"].items() if d in report["results"]]
    if meta.get("runs"):
        command = "python -m benchmarks.reproduce"
    lines = [
        f"`{command}` trains every configuration on {len(names)} workloads "
        f"({'; '.join(names)}), {meta['seeds']} seeds each, same iterations and "
        "hyper-parameters for every precision; verdicts are computed from the seed spread "
        "(MDD: the smallest difference the setting detects with 80 % power at the 5 % "
        "level; *not tested* where it exceeds the paper's effect). Full tables, per-seed "
        f"values and plots: [{results_link}]({results_link}). " + (
            "Rows merged from the runs " + "; ".join(meta["runs"]) + ", on 2 cores."
            if meta.get("runs") else
            f"Last run: {meta['date']}, {meta['total_seconds'] / 60:.0f} min on 2 cores."),
        "",
    ]
    lines += _claims_table(report, verdict_table)[0]
    return "\n".join(lines)


README_START = "<!-- reproduction table: start (written by python -m benchmarks.reproduce) -->"
README_END = "<!-- reproduction table: end -->"


def update_readme(path, section):
    """Replaces the text between the markers; raises ValueError if they are missing."""
    with open(path) as f:
        text = f.read()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no reproduction markers ({README_START!r})")
    text = pattern.sub(lambda _: README_START + "\n" + section + "\n" + README_END, text)
    with open(path, "w") as f:
        f.write(text)


def plots(report, out_dir, prefix):
    """Writes the PNGs; returns their file names."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    results, domains_meta = report["results"], report["meta"]["domains"]
    domain_names = [d for d in domains_meta if d in results]
    names = []

    fig, axes = plt.subplots(1, len(domain_names), figsize=(4.6 * len(domain_names), 4.8),
                             squeeze=False)
    for ax, d in zip(axes[0], domain_names):
        configs = list(results[d])
        means = [results[d][c]["mean"] for c in configs]
        stds = [results[d][c]["std"] for c in configs]
        y = np.arange(len(configs))
        ax.barh(y, means, xerr=stds, color="tab:blue", alpha=0.75)
        if "fp32" in results[d]:
            ax.axvline(results[d]["fp32"]["mean"], color="k", lw=0.8, ls="--")
        finite = [m for m in means if math.isfinite(m)]
        if finite:
            lo, hi = min(finite), max(finite)
            pad = max(0.1 * (hi - lo), 0.005 * abs(hi), 1e-3)
            ax.set_xlim(lo - pad, hi + 4 * pad)
            for yi, m, s in zip(y, means, stds):
                if math.isfinite(m):
                    ax.text(m + pad * 0.3, yi, f"{_fmt(d, m)} ± {_fmt(d, s)}", va="center",
                            fontsize=7)
        # Labelled on every panel: workloads train different sets of configurations.
        ax.set_yticks(y, configs, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{SHORT[d]}\n{domains_meta[d]['metric']}", fontsize=9)
    fig.suptitle("Every configuration, mean ± std over seeds (dashed: FP32)", fontsize=10)
    fig.tight_layout()
    names.append(f"{prefix}_metrics.png")
    fig.savefig(os.path.join(out_dir, names[-1]), dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(domain_names), figsize=(4.2 * len(domain_names), 3.6),
                             squeeze=False)
    for ax, d in zip(axes[0], domain_names):
        # The underflow workload's arms all differ in loss scaling: plot each.
        shown = list(results[d]) if d == "underflow" else [
            "fp32", "bf16", "dfp16", "fp8 1-5-2 forward", "hfp8", "fp8_delayed, ends fp16",
            "fp8_wang, ends fp16", "mxfp8, ends fp16", "bf16 weights, nearest",
            "bf16 weights, Kahan"]
        for config in shown:
            if config in results[d]:
                curve = np.mean(np.array(results[d][config]["curves"]), axis=0)
                ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", ms=3, label=config)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.set_title(f"{SHORT[d]}: training loss", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    names.append(f"{prefix}_curves.png")
    fig.savefig(os.path.join(out_dir, names[-1]), dpi=90)
    plt.close(fig)

    if report.get("throughput"):
        rows = report["throughput"]["rows"]
        fig, ax = plt.subplots(figsize=(5, 3.6))
        sizes = [r["size"] for r in rows]
        for key, label in (("fp32", "FP32 tf.linalg.matmul"), ("dfp16", "lp.dfp_matmul"),
                           ("int16", "INT16 GEMM alone")):
            ax.plot(sizes, [r["gops"][key] for r in rows], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("square GEMM size")
        ax.set_ylabel("GOP/s")
        ax.legend(fontsize=8)
        ax.set_title("DFP16 INT16 GEMM vs FP32", fontsize=9)
        fig.tight_layout()
        names.append(f"{prefix}_dfp_throughput.png")
        fig.savefig(os.path.join(out_dir, names[-1]), dpi=90)
        plt.close(fig)
    return names
