"""Writing benchmark results: the command, when and where, as JSON and Markdown.

Every benchmark script records the exact command line that produced its
numbers beside them (benchmarks/README.md).
"""

import json
import os
import platform
import sys
import time


def metadata(**extra):
    """The command line, date, machine and load average of this run, plus `extra`."""
    meta = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    meta.update(extra)
    return meta


def write(out_dir, stem, meta, results, markdown_lines):
    """Writes `<stem>.json` ({meta, results}) and `<stem>.md` into `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, stem + ".json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    with open(os.path.join(out_dir, stem + ".md"), "w") as f:
        f.write("\n".join(markdown_lines) + "\n")
