"""`tf-lowprec compare`: `lp.compare` with the command's flags (see tf_lowprec/comparison.py).

Prints the table on stdout, progress through absl logging and Keras' progress
bar, writes compare.json and compare.png into --out; a model, data or policy
the run cannot use is reported in one line on stderr (exit status 1).
"""

import os
import sys

from tf_lowprec import comparison
from tf_lowprec import datasets


def run(*, policies, model, dataset, out_dir, **options):
    """Runs the comparison; returns the exit status."""
    if model is not None and ":" in model and not model.endswith(".keras"):
        # module:function is imported as `python -m` would: from the current folder.
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
    try:
        result = comparison.compare(model, dataset, policies, out_dir=out_dir, **options)
    except (comparison.CompareError, datasets.DataError) as e:
        print(f"tf-lowprec compare: error: {e}", file=sys.stderr)
        return 1
    print(result.table())
    print(f"wrote {os.path.join(out_dir, 'compare.json')} and "
          f"{os.path.join(out_dir, 'compare.png')}")
    return 0
