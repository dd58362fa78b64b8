"""`python -m tf_lowprec`: the `tf-lowprec` command (tf_lowprec.cli.main)."""

from tf_lowprec.cli import main as _cli
from tf_lowprec.cli.main import main, run

# absl's --help prints the docstring of the __main__ module: the command's usage.
__doc__ = _cli.__doc__  # noqa: A001

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
