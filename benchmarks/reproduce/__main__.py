"""Command line of the reproduction suite: python -m benchmarks.reproduce --help."""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from . import claims as claims_lib  # noqa: E402
from . import domains as domains_lib  # noqa: E402
from . import report as report_lib  # noqa: E402
from . import throughput, training  # noqa: E402
from benchmarks import results_io  # noqa: E402  (the CPU model and kernel tiers)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.normpath(os.path.join(HERE, "..", "results"))
README = os.path.normpath(os.path.join(HERE, "..", "..", "README.md"))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reproduce",
        description="Reproduce the seed papers' headline claims at small scale.")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test sizes (writes reproduction_quick.*, never the README)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per cell (default 3; 1 with --quick)")
    parser.add_argument("--tasks", nargs="+", default=list(claims_lib.CLAIMS),
                        metavar="CLAIM", help=f"claims to test: {', '.join(claims_lib.CLAIMS)}")
    parser.add_argument("--domains", nargs="+", default=list(domains_lib.DOMAINS),
                        metavar="DOMAIN",
                        help=f"workloads: {', '.join(domains_lib.DOMAINS)}")
    parser.add_argument("--out-dir", default=RESULTS)
    parser.add_argument("--readme", action="store_true",
                        help="also rewrite the reproduction table in README.md")
    parser.add_argument("--from-json", metavar="PATH", nargs="+",
                        help="do not train: re-render the report, plots and README table "
                             "from previous runs' JSON; with several, a later run's "
                             "configurations replace an earlier one's on the same workload")
    args = parser.parse_args(argv)
    for name, allowed, given in (("--tasks", claims_lib.CLAIMS, args.tasks),
                                 ("--domains", domains_lib.DOMAINS, args.domains)):
        unknown = [g for g in given if g not in allowed]
        if unknown:
            parser.error(f"{name}: unknown {unknown}; allowed: {', '.join(allowed)}")
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.readme and args.quick:
        parser.error("--readme needs a full run (not --quick)")
    return args


def _save_partial(args, partial):
    os.makedirs(args.out_dir, exist_ok=True)
    name = "reproduction_quick" if args.quick else "reproduction"
    with open(os.path.join(args.out_dir, name + ".partial.json"), "w") as f:
        json.dump(partial, f, indent=1, allow_nan=True)


def write(report, args, command):
    """Writes the JSON, Markdown and plots (and the README table with --readme)."""
    prefix = "reproduction_quick" if report["meta"]["quick"] else "reproduction"
    os.makedirs(args.out_dir, exist_ok=True)
    report["plots"] = report_lib.plots(report, args.out_dir, prefix)
    text, verdict_table = report_lib.markdown(report, command)
    report["verdicts"] = verdict_table
    with open(os.path.join(args.out_dir, prefix + ".json"), "w") as f:
        json.dump(report, f, indent=1, allow_nan=True)
    with open(os.path.join(args.out_dir, prefix + ".md"), "w") as f:
        f.write(text)
    if args.readme:
        if report["meta"]["quick"]:
            raise ValueError("--readme needs the results of a full run, not --quick")
        link = os.path.relpath(os.path.join(args.out_dir, prefix + ".md"),
                               os.path.dirname(README))
        report_lib.update_readme(README, report_lib.readme_section(
            report, command, verdict_table, link))
    return os.path.join(args.out_dir, prefix)


def _machine():
    """The CPU model and the kernel tier of each op: every speed figure names its tier."""
    tiers = results_io.kernel_tiers()
    if not isinstance(tiers, dict):  # the op library did not load: say why
        return f"{results_io.cpu_model()}, kernel tiers {tiers}"
    return (f"{results_io.cpu_model()}, kernel tiers "
            + ", ".join(f"{op} {tier}" for op, tier in tiers.items()))


def _from_partial(path, partial):
    """A report from a run's .partial.json (what it saved before it stopped)."""
    cells = [c for d in partial["results"].values() for c in d.values()]
    return {
        "meta": {
            "command": partial.get("command") or f"(stopped run, saved as "
                                                 f"{os.path.basename(path)})",
            "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(path))),
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "seeds": min(len(c["metrics"]) for c in cells), "quick": False,
            "domains": partial["domains"],
            "total_seconds": sum(sum(c["seconds"]) for c in cells),
        },
        "results": partial["results"], "throughput": None,
    }


def merge_reports(paths):
    """One report from the JSON of several runs (later runs win per workload and configuration).

    Configurations the current claims no longer define are dropped; the command
    line, date and seeds of every run stay in the merged report's meta.
    """
    reports = []
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        if "meta" not in report:
            report = _from_partial(path, report)
        reports.append(report)
    if len(reports) == 1:
        report = reports[0]
        report["results"] = {d: {c: v for c, v in cells.items() if c in claims_lib.CONFIGS}
                             for d, cells in report["results"].items()}
        return report
    merged = {"results": {}, "throughput": None}
    domains, runs = {}, []
    for run, report in enumerate(reports):
        meta = report["meta"]
        # A report merged before lists its own runs: keep them, not its joined command.
        runs.extend(meta.get("runs") or [
            f"`{meta['command']}` ({meta['date']}, {meta['seeds']} seeds, "
            f"{meta['total_seconds'] / 60:.1f} min)"])
        domains.update(meta["domains"])
        for domain, cells in report["results"].items():
            # "run" says which run a cell came from: only cells of one run may
            # have their times divided by each other.
            kept = {c: dict(v, run=run) for c, v in cells.items() if c in claims_lib.CONFIGS}
            merged["results"].setdefault(domain, {}).update(kept)
        merged["throughput"] = report.get("throughput") or merged["throughput"]
    merged["meta"] = dict(reports[-1]["meta"], domains=domains,
                          command=" + ".join(r["meta"]["command"] for r in reports),
                          runs=runs, total_seconds=sum(r["meta"]["total_seconds"]
                                                       for r in reports),
                          seeds=min(r["meta"]["seeds"] for r in reports))
    return merged


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.from_json:
        report = merge_reports(args.from_json)
        path = write(report, args, report["meta"]["command"])
        print(f"re-rendered {path}.{{md,json}} and {len(report['plots'])} plots")
        return report
    command = "python -m benchmarks.reproduce " + " ".join(
        sys.argv[1:] if argv is None else argv)
    command = command.strip()
    start = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)

    results, domains_meta = {}, {}
    for name in args.domains:
        config_names = training.needed_configs(args.tasks, name)
        if not config_names:
            log(f"{name}: no requested claim runs on it, skipped")
            continue
        domain = domains_lib.DOMAINS[name](quick=args.quick)
        log(f"{name}: {len(config_names)} configurations x {args.seeds} seeds")
        results[name] = training.run_domain(domain, config_names, args.seeds, log)
        domains_meta[name] = {"title": domain.title, "metric": domain.metric,
                              "higher_is_better": domain.higher_is_better,
                              "detail": domain.detail(), "steps": domain.steps}
        # Saved after every domain, so a failure later loses nothing finished.
        _save_partial(args, {"command": command, "domains": domains_meta,
                             "results": results})
    dfp_throughput = None
    if "dfp16" in args.tasks:
        log("DFP16 GEMM throughput")
        dfp_throughput = throughput.run(args.quick, log)
    report = {
        "meta": {
            "command": command, "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": _machine(), "cpus": os.cpu_count(),
            "seeds": args.seeds, "quick": args.quick, "tasks": args.tasks,
            "domains": domains_meta, "total_seconds": time.perf_counter() - start,
        },
        "results": results,
        "throughput": dfp_throughput,
    }
    path = write(report, args, command)
    partial = path + ".partial.json"
    if os.path.exists(partial):
        os.remove(partial)
    log(f"wrote {path}.{{md,json}} and {len(report['plots'])} plots")
    return report


if __name__ == "__main__":
    main()
