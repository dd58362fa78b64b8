"""Verdicts, the Markdown report, the README section and the plots."""

import math
import os
import re

import numpy as np

from . import claims as claims_lib
from . import papers

# What each claim expects of each configuration, relative to its baseline:
# "match" (within noise, or better) or "worse" (worse by more than noise).
EXPECTED = {
    "bf16": {"bf16": "match"},
    "dfp16": {"dfp16": "match"},
    "loss_scaling": {"fp16 (loss x c), no loss scaling": "worse",
                     "fp16 (loss x c), dynamic loss scaling": "match"},
    "hfp8": {"fp8 1-5-2 everywhere": "worse", "hfp8": "match"},
    "bf16_updates": {"bf16 weights, nearest": "worse", "bf16 weights, stochastic": "match",
                     "bf16 weights, Kahan": "match"},
}

# Smallest difference called real, whatever the seed spread: a quarter of a
# test image per 100 on digits (400 test images), 0.3 pp on the 1,000 MNIST
# test images, 0.02 bits per char, 0.003 AUC.
NOISE_FLOOR = {"mnist": 0.3, "digits": 0.5, "charlm": 0.02, "recsys": 0.003}
UNITS = {"mnist": "pp", "digits": "pp", "charlm": "bpc", "recsys": "AUC"}
SHORT = {"mnist": "MNIST CNN", "digits": "digits MLP", "charlm": "char-LM",
         "recsys": "recsys (synthetic)"}


def compare(domain, higher_is_better, base, other):
    """("match" | "worse" | "better", delta, noise): `other` against `base`."""
    delta = other["mean"] - base["mean"]
    if not math.isfinite(delta):
        return "worse", delta, float("nan")
    # The baseline's seed spread sets the noise: a configuration that fails on
    # some seeds only has a huge spread of its own, which must not hide it.
    noise = max(2.0 * base["std"], NOISE_FLOOR[domain])
    gain = delta if higher_is_better else -delta
    if gain < -noise:
        return "worse", delta, noise
    return ("better" if gain > noise else "match"), delta, noise


def verdicts(results, domains_meta):
    """{claim: {domain: {config: {"observed", "expected", "delta", "noise"}}}}."""
    out = {}
    for claim_name, claim in claims_lib.CLAIMS.items():
        per_domain = {}
        for domain, meta in domains_meta.items():
            cells = results.get(domain, {})
            if claim.baseline not in cells:
                continue
            rows = {}
            for config, expected in EXPECTED[claim_name].items():
                if config not in cells:
                    continue
                observed, delta, noise = compare(domain, meta["higher_is_better"],
                                                 cells[claim.baseline], cells[config])
                rows[config] = {"observed": observed, "expected": expected,
                                "delta": delta, "noise": noise,
                                "agrees": observed == expected
                                or (expected == "match" and observed == "better")}
            if rows:
                per_domain[domain] = rows
        if per_domain:
            out[claim_name] = per_domain
    return out


def _fmt(domain, value):
    if not math.isfinite(value):
        return "nan"
    return f"{value:.2f}" if domain in ("mnist", "digits") else (
        f"{value:.3f}" if domain == "charlm" else f"{value:.4f}")


def _cell(domain, summary):
    return f"{_fmt(domain, summary['mean'])} ± {_fmt(domain, summary['std'])}"


def _delta(domain, value):
    return ("+" if value >= 0 else "") + _fmt(domain, value) + " " + UNITS[domain]


def claim_summary(claim_name, per_domain, throughput, results):
    """One sentence of our outcome for a claim, and 'holds' / 'partly' / 'no'."""
    parts, agree, total = [], 0, 0
    for domain, rows in per_domain.items():
        bits = []
        for config, row in rows.items():
            total += 1
            agree += row["agrees"]
            mark = "✓" if row["agrees"] else "✗"
            label = config.replace("fp16 (loss x c), ", "").replace("bf16 weights, ", "")
            bits.append(f"{label} {_delta(domain, row['delta'])} {mark}")
        parts.append(f"{SHORT[domain]}: " + ", ".join(bits))
    text = "; ".join(parts)
    if claim_name == "dfp16":
        if throughput:
            gemm = [r["int16_speedup"] for r in throughput["rows"]]
            full = [r["dfp16_speedup"] for r in throughput["rows"]]
            text += (f". GEMM speed vs FP32 matmul: INT16 GEMM alone {min(gemm):.2f}-"
                     f"{max(gemm):.2f}x, dfp_matmul with quantization {min(full):.2f}-"
                     f"{max(full):.2f}x")
        ratios = [np.mean(results[d]["fp32"]["seconds"]) / np.mean(results[d]["dfp16"]["seconds"])
                  for d in per_domain if "dfp16" in results[d] and "fp32" in results[d]]
        if ratios:
            text += (f"; end-to-end emulated training {min(ratios):.2f}-{max(ratios):.2f}x "
                     "the FP32 speed")
    verdict = "holds" if agree == total else ("partly" if agree else "does not hold")
    return text, f"{verdict} ({agree}/{total})"


def markdown(report, command):
    """The full reproduction.md text."""
    results, meta = report["results"], report["meta"]
    domains_meta = meta["domains"]
    verdict_table = verdicts(results, domains_meta)
    lines = [
        "# Reproducing the seed papers' claims at small scale",
        "",
        f"Command: `{command}` ({meta['date']}, {meta['machine']}, {meta['cpus']} CPUs, "
        f"{meta['seeds']} seeds, total {meta['total_seconds'] / 60:.1f} min"
        f"{', quick mode: sizes are smoke-test sizes, not results' if meta['quick'] else ''}).",
        "",
        "Every precision runs the same data, model, optimiser, learning-rate schedule and "
        "number of iterations as FP32; seeds 0..n-1 vary the initialisation and batch order. "
        "Cells are mean ± std over seeds. A difference counts as real when it exceeds both twice "
        "the baseline's std over seeds and a floor (" + ", ".join(
            f"{SHORT[d]} {NOISE_FLOOR[d]} {UNITS[d]}" for d in NOISE_FLOOR) + ").",
        "",
        "## Claims",
        "",
        "| claim | paper's figures (papers.md) | ours: difference to the baseline "
        "(✓ as the paper says, ✗ not) | verdict |",
        "|---|---|---|---|",
    ]
    for claim_name, per_domain in verdict_table.items():
        claim = claims_lib.CLAIMS[claim_name]
        text, verdict = claim_summary(claim_name, per_domain, report.get("throughput"),
                                      results)
        lines.append(f"| **{claim.paper}**: {claim.statement} | "
                     f"{papers.figures_text(claim_name)} | {text} | {verdict} |")
    lines += ["", "## Every configuration", ""]
    domain_names = [d for d in domains_meta if d in results]
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
    lines += ["", "Seconds per training run (mean over seeds):", "",
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
    lines = [
        f"`{command}` trains every configuration on four workloads (MNIST sample CNN, "
        "scikit-learn digits MLP, char-level GRU LM on the Python standard library's "
        "sources, DLRM-style recommender on **synthetic** click logs), 3 seeds each, same "
        "iterations and hyper-parameters for every precision; full tables, per-seed values "
        f"and plots: [{results_link}]({results_link}). "
        f"Last run: {report['meta']['date']}, {report['meta']['total_seconds'] / 60:.0f} min "
        "on 2 cores.",
        "",
        "| claim | paper's figures | ours (difference to the baseline; ✓ as the paper says) "
        "| verdict |",
        "|---|---|---|---|",
    ]
    for claim_name, per_domain in verdict_table.items():
        claim = claims_lib.CLAIMS[claim_name]
        text, verdict = claim_summary(claim_name, per_domain, report.get("throughput"),
                                      report["results"])
        lines.append(f"| **{claim.paper}**: {claim.statement} | "
                     f"{papers.figures_text(claim_name)} | {text} | {verdict} |")
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
        ax.set_yticks(y, configs if d == domain_names[0] else [""] * len(configs),
                      fontsize=8)
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
        for config in ("fp32", "bf16", "dfp16", "hfp8", "bf16 weights, nearest",
                       "bf16 weights, Kahan"):
            if config in results[d]:
                curve = np.mean(np.array(results[d][config]["curves"]), axis=0)
                ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", ms=3, label=config)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.set_title(f"{SHORT[d]}: training loss", fontsize=9)
    axes[0][0].legend(fontsize=7)
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
