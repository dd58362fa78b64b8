"""The examples in the package's docstrings run and print what they say."""

import doctest
import importlib
import pkgutil

import pytest

import tf_lowprec

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(tf_lowprec.__path__, "tf_lowprec.")
    # __main__ runs the CLI on import; _lowprec_ops is the op library, not Python.
    if not name.endswith(("__main__", "_lowprec_ops"))
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    report = []
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
