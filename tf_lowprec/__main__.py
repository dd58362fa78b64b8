"""`python -m tf_lowprec`: the `tf-lowprec` command (tf_lowprec.cli.main)."""

from tf_lowprec.cli.main import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
