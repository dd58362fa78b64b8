"""Writing benchmark results: the command, when and where, as JSON and Markdown.

Every benchmark script records the exact command line that produced its
numbers beside them (benchmarks/README.md).
"""

import json
import os
import platform
import sys
import time


def cpu_model():
    """The CPU's model name with its x86 family and model numbers: a VM's name may omit the
    generation ("AMD EPYC" family 25 model 1 is Zen 3, family 25 model 17 is Zen 4)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        return f"{fields['model name']} (family {fields['cpu family']}, model {fields['model']})"
    return fields["model name"]


def metadata(**extra):
    """The command line, date, machine (CPU model and the kernel tier each op runs) and load
    average of this run, plus `extra`."""
    meta = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "kernel_tiers": kernel_tiers(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    meta.update(extra)
    return meta


def kernel_tiers():
    """The kernel tier `isa="auto"` runs for each op (or why that is unknown)."""
    try:
        import tf_lowprec as lp  # noqa: PLC0415 (benchmarks import it anyway)

        return {op: tiers["auto"] for op, tiers in lp.kernel_tiers().items() if op != "cpu"}
    except Exception as e:  # noqa: BLE001 (the op library may be missing: still record why)
        return f"unavailable: {e}"


def write(out_dir, stem, meta, results, markdown_lines):
    """Writes `<stem>.json` ({meta, results}) and `<stem>.md` into `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, stem + ".json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    with open(os.path.join(out_dir, stem + ".md"), "w") as f:
        f.write("\n".join(markdown_lines) + "\n")
