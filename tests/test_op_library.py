"""Loading the op library: version checks with a clear message."""

import pytest
import tensorflow as tf

from tf_lowprec import _op_library


@pytest.fixture
def fresh_loader(monkeypatch):
    monkeypatch.setattr(_op_library, "_library", None)
    monkeypatch.setattr(_op_library, "_error", None)
    return monkeypatch


def test_build_info_records_tensorflow_version():
    info = _op_library.build_info()
    assert info["tensorflow_version"] == tf.__version__
    assert "keras_version" in info and "compiler" in info


def test_version_mismatch_gives_rebuild_advice(fresh_loader):
    fresh_loader.setattr(tf, "__version__", "2.99.0")
    with pytest.raises(_op_library.OpLibraryError, match=r"built against TensorFlow 2\.21.*"
                       r"2\.99\.0 is running.*--no-build-isolation"):
        _op_library.load()
    assert not _op_library.available()


def test_missing_library_gives_rebuild_advice(fresh_loader):
    fresh_loader.setattr(_op_library, "library_path", lambda: None)
    with pytest.raises(_op_library.OpLibraryError, match="has not been built.*pip install"):
        _op_library.load()


def test_rounding_with_op_implementation_reports_the_error(fresh_loader):
    import tf_lowprec as lp

    fresh_loader.setattr(tf, "__version__", "2.99.0")
    with pytest.raises(lp.OpLibraryError):
        lp.round_to_format([1.0], lp.BF16, implementation="op")
    # The pure-TF path needs no library.
    assert float(lp.round_to_format([1.0], lp.BF16, implementation="tf")[0]) == 1.0
