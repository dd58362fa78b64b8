"""Loads the compiled op library once, with a clear error when it cannot.

The library is built by setup.py against one TensorFlow version; loading it
into another one can fail with undefined symbols or, worse, crash.  The
build records its TensorFlow version inside the library, and `load()` checks
it before calling `tf.load_op_library`.
"""

import ctypes
import glob
import json
import os
import re
import threading

import tensorflow as tf

# The TensorFlow version (major.minor) the ops are written and tested against;
# setup.py reads it from here (the one place it is spelled).
SUPPORTED_TENSORFLOW = "2.21"

_HERE = os.path.dirname(os.path.abspath(__file__))
_REBUILD = (
    "Rebuild the ops against the installed TensorFlow from the tf_lowprec source "
    "folder:  pip install --no-build-isolation --force-reinstall -e .   "
    "(or `python setup.py build_ext --inplace --force`)"
)

_lock = threading.Lock()
_library = None
_error = None


class OpLibraryError(RuntimeError):
    """The custom op library is missing, stale or was built for another TensorFlow."""


def library_path():
    """Path of the compiled library, or None when it has not been built."""
    candidates = sorted(glob.glob(os.path.join(_HERE, "_lowprec_ops*.so")))
    return candidates[0] if candidates else None


def build_info(path=None):
    """What setup.py recorded in the library: TensorFlow and Keras versions, compiler.

    Read from the file without loading it (custom_ops/kernels/cpu_dispatch.cc).
    """
    path = path or library_path()
    if path is None:
        return None
    with open(path, "rb") as f:
        match = re.search(rb"TF_LOWPREC_BUILD_INFO=(\{[^\x00]*\})\x00", f.read())
    return json.loads(match.group(1)) if match else None


def _load():
    path = library_path()
    if path is None:
        raise OpLibraryError(f"tf_lowprec's op library has not been built. {_REBUILD}")
    info = build_info(path)
    if info is None:
        raise OpLibraryError(
            f"{os.path.basename(path)} has no build record, so its TensorFlow version is "
            f"unknown. {_REBUILD}"
        )
    if info["tensorflow_version"] != tf.__version__:
        raise OpLibraryError(
            f"tf_lowprec's ops were built against TensorFlow {info['tensorflow_version']} "
            f"but TensorFlow {tf.__version__} is running. {_REBUILD}"
        )
    try:
        return tf.load_op_library(path)
    except (tf.errors.NotFoundError, OSError) as e:
        raise OpLibraryError(f"could not load {path}: {e}. {_REBUILD}") from e


def load():
    """Returns the loaded op module; raises OpLibraryError with rebuild advice."""
    global _library, _error
    with _lock:
        if _library is None and _error is None:
            try:
                _library = _load()
            except OpLibraryError as e:
                _error = e
        if _error is not None:
            raise OpLibraryError(str(_error))
        return _library


# Kernel tiers an op's `isa` argument names (custom_ops/kernels/cpu_features.h):
# "auto" is the fastest tier this CPU runs.
ISAS = ("auto", "portable", "avx2", "avx512")


def check_isa(isa):
    """Raises ValueError unless `isa` names a kernel tier."""
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {', '.join(map(repr, ISAS))}; got {isa!r}")


_tiers = None


def kernel_tiers():
    """The CPU's features and, per op, the tier `isa="auto"` runs and those available.

    Returns a dict such as ``{"cpu": {"avx2": True, "avx512": False, ...},
    "rounding": {"auto": "avx2", "available": ["portable", "avx2"]},
    "dfp_gemm": {...}, "bf16_gemm": {...}, "accumulation_gemm": {...}}``, read from the
    loaded library.
    """
    global _tiers
    if _tiers is None:
        load()  # the library is mapped into the process: ctypes finds the same copy
        function = ctypes.CDLL(library_path()).tf_lowprec_kernel_tiers
        function.restype = ctypes.c_char_p
        _tiers = json.loads(function().decode())
    return _tiers


def available():
    """True when the op library loads in this process."""
    try:
        load()
        return True
    except OpLibraryError:
        return False
