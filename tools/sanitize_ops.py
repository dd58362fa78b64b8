"""Builds the op library with AddressSanitizer + UBSan and runs tests against it.

Test tooling, not part of the default test suite (the build takes minutes):

    python tools/sanitize_ops.py                      # build, then the raw-op edge cases
    python tools/sanitize_ops.py --skip-build tests/test_format_validation.py

The sanitized library is built out of tree (setup.py with
TF_LOWPREC_SANITIZE=address,undefined, into build/sanitize/) next to a copy
of the `tf_lowprec` package, so the library in the source tree is left
alone.  pytest then runs with that copy first on PYTHONPATH (and
PYTHONSAFEPATH=1, so that the current directory does not shadow it) and:

- LD_PRELOAD of the compiler's libasan.so, then its libstdc++.so: ASan's
  runtime must be loaded before anything else (python is not built with
  it), and its C++ exception interceptor needs libstdc++ already loaded
  (else "CHECK failed: ... real___cxa_throw" at the first C++ throw);
- ASAN_OPTIONS=detect_leaks=0: CPython and TensorFlow keep allocations
  alive until exit, which LeakSanitizer would report;
- undefined behaviour aborts (-fno-sanitize-recover), so a finding kills
  the process.  tests/test_raw_op_edges.py runs each case in a subprocess and
  fails the case a process died in, with the sanitizer's report.

Exit status: pytest's.  docs/reliability.md records the last run.
"""

import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_TESTS = ["tests/test_raw_op_edges.py"]


def runtime_library(cxx, name):
    """Absolute path of a sanitizer runtime (libasan.so) from the compiler."""
    path = subprocess.check_output([cxx, f"-print-file-name={name}"], text=True).strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        raise SystemExit(f"{cxx} has no {name}; install the compiler's sanitizer runtime")
    return os.path.realpath(path)


def build(out_dir, checks):
    """Sanitized library + a copy of the Python package under out_dir/lib."""
    lib = os.path.join(out_dir, "lib")
    package = os.path.join(lib, "tf_lowprec")
    if os.path.exists(package):
        shutil.rmtree(package)
    shutil.copytree(os.path.join(ROOT, "tf_lowprec"), package,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = dict(os.environ, TF_LOWPREC_SANITIZE=checks)
    subprocess.check_call(
        [sys.executable, "setup.py", "build_ext", "--build-lib", lib,
         "--build-temp", os.path.join(out_dir, "temp")],
        cwd=ROOT, env=env)
    return lib


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", nargs="*", default=DEFAULT_TESTS,
                        help=f"pytest arguments (default: {' '.join(DEFAULT_TESTS)})")
    parser.add_argument("--checks", default="address,undefined",
                        help="the -fsanitize= list (default: address,undefined)")
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "sanitize"),
                        help="build folder (default: build/sanitize)")
    parser.add_argument("--skip-build", action="store_true",
                        help="reuse the library built by an earlier run")
    args = parser.parse_args(argv)

    lib = os.path.join(args.out, "lib")
    if not args.skip_build:
        lib = build(args.out, args.checks)
    if not any(f.startswith("_lowprec_ops") for f in os.listdir(os.path.join(lib, "tf_lowprec"))):
        raise SystemExit(f"no sanitized library under {lib}: run without --skip-build")
    cxx = os.environ.get("CXX", "g++")
    env = dict(os.environ)
    preload = ([runtime_library(cxx, "libasan.so"), runtime_library(cxx, "libstdc++.so")]
               if "address" in args.checks else [])
    env.update(
        PYTHONPATH=os.pathsep.join([lib, os.path.join(ROOT, "tests")]),
        LD_PRELOAD=" ".join(preload + [p for p in env.get("LD_PRELOAD", "").split() if p]),
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        TF_CPP_MIN_LOG_LEVEL="2",
        # Python 3.11: no current directory at the front of sys.path (`-m`,
        # `-c`), in pytest and the subprocesses the tests start, so that the
        # copy under `lib` is what they import, not the source tree.
        PYTHONSAFEPATH="1",
    )
    probe = subprocess.run(
        [sys.executable, "-c", "import tf_lowprec._op_library as o; print(o.library_path())"],
        cwd=ROOT, env=env, capture_output=True, text=True)
    loaded = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else ""
    if not loaded.startswith(os.path.abspath(lib)):
        raise SystemExit(f"the tests would load {loaded or probe.stderr[-2000:]}, not the "
                         f"sanitized library under {lib}")
    print("sanitized library:", loaded, flush=True)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.tests]
    print("running:", " ".join(command), flush=True)
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
