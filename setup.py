"""Build and install tf_lowprec.

The TensorFlow ops in custom_ops/ are compiled against the TensorFlow that is
installed in the build environment, so install TensorFlow first and build
without isolation:

    pip install -r requirements.txt
    pip install --no-build-isolation -e .

Sanitized build (test tooling, tools/sanitize_ops.py): with the environment
variable TF_LOWPREC_SANITIZE set to a -fsanitize= list such as
"address,undefined", every translation unit is compiled and linked with it
(-O1 -g, and -fno-sanitize-recover so that undefined behaviour aborts; a few
pointer checks are left out where TensorFlow's headers are included, see
_SANITIZE_TF_EXCLUSIONS).

Supported: TensorFlow 2.21 (tensorflow or tensorflow-cpu) with Keras 3.15,
Python 3.11, x86-64 Linux with g++ >= 9.  AVX2 and AVX-512 kernels are
compiled alongside portable ones and chosen at run time.
"""

import concurrent.futures
import json
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
OPS_DIR = os.path.join("custom_ops")

# Translation units, each with the kind of flags it needs:
#   "tf"       includes TensorFlow headers (slow to compile: keep them few)
#   "portable" header-only numerics, baseline instruction set
#   "avx2"     the same numerics compiled for AVX2 + FMA + F16C
#   "avx512"   the same numerics compiled for AVX-512
# (the tiers are chosen at run time: custom_ops/kernels/cpu_features.h)
OP_SOURCES = [
    ("custom_ops/ops/rounding_ops.cc", "tf"),
    ("custom_ops/kernels/rounding_kernels.cc", "tf"),
    ("custom_ops/kernels/cpu_dispatch.cc", "portable"),
    ("custom_ops/kernels/rounding_loops_portable.cc", "portable"),
    ("custom_ops/kernels/rounding_loops_avx2.cc", "avx2"),
    ("custom_ops/kernels/rounding_loops_avx512.cc", "avx512"),
    ("custom_ops/ops/block_scaled_ops.cc", "tf"),
    ("custom_ops/kernels/block_scaled_kernels.cc", "tf"),
    ("custom_ops/ops/dfp_gemm_ops.cc", "tf"),
    ("custom_ops/kernels/dfp_gemm_kernels.cc", "tf"),
    ("custom_ops/kernels/dfp_gemm_portable.cc", "portable"),
    ("custom_ops/kernels/dfp_gemm_avx2.cc", "avx2"),
    ("custom_ops/kernels/dfp_gemm_avx512.cc", "avx512"),
    ("custom_ops/ops/dfp_conv_ops.cc", "tf"),
    ("custom_ops/kernels/dfp_conv_kernels.cc", "tf"),
    ("custom_ops/ops/dfp_depthwise_ops.cc", "tf"),
    ("custom_ops/kernels/dfp_depthwise_kernels.cc", "tf"),
    ("custom_ops/kernels/dfp_depthwise_portable.cc", "portable"),
    ("custom_ops/kernels/dfp_depthwise_avx2.cc", "avx2"),
    ("custom_ops/kernels/dfp_depthwise_avx512.cc", "avx512"),
    ("custom_ops/ops/bf16_gemm_ops.cc", "tf"),
    ("custom_ops/kernels/bf16_gemm_kernels.cc", "tf"),
    ("custom_ops/ops/bf16_conv_ops.cc", "tf"),
    ("custom_ops/kernels/bf16_conv_kernels.cc", "tf"),
    ("custom_ops/kernels/bf16_gemm_portable.cc", "portable"),
    ("custom_ops/kernels/bf16_gemm_avx2.cc", "avx2"),
    ("custom_ops/kernels/bf16_gemm_avx512.cc", "avx512"),
    ("custom_ops/ops/accumulation_gemm_ops.cc", "tf"),
    ("custom_ops/kernels/accumulation_gemm_kernels.cc", "tf"),
    ("custom_ops/kernels/accumulation_gemm_portable.cc", "portable"),
    ("custom_ops/kernels/accumulation_gemm_avx2.cc", "avx2"),
    ("custom_ops/kernels/accumulation_gemm_avx512.cc", "avx512"),
]
HEADER_DIRS = ["custom_ops/kernels", "custom_ops/ops"]

def _supported_tensorflow():
    """tf_lowprec._op_library.SUPPORTED_TENSORFLOW, read without importing the package."""
    with open(os.path.join(HERE, "tf_lowprec", "_op_library.py")) as f:
        match = re.search(r'^SUPPORTED_TENSORFLOW = "([0-9.]+)"', f.read(), re.M)
    return match.group(1)


SUPPORTED_TF = _supported_tensorflow()


def _tensorflow():
    try:
        import tensorflow as tf  # noqa: PLC0415 (only needed at build time)
    except ImportError as e:
        raise SystemExit(
            "tf_lowprec compiles its ops against the installed TensorFlow, and none "
            "was found in this build environment.  Install it first and build "
            "without isolation:\n"
            "    pip install -r requirements.txt\n"
            "    pip install --no-build-isolation -e .\n"
            f"(import error: {e})"
        ) from e
    return tf


def _headers():
    paths = []
    for d in HEADER_DIRS:
        for name in os.listdir(os.path.join(HERE, d)):
            if name.endswith(".h"):
                paths.append(os.path.join(HERE, d, name))
    return paths


def _sanitize_flags():
    """Compiler and linker flags of a sanitized build (TF_LOWPREC_SANITIZE), else []."""
    checks = os.environ.get("TF_LOWPREC_SANITIZE", "").strip()
    if not checks:
        return []
    if not re.fullmatch(r"[a-z]+(,[a-z]+)*", checks):
        raise ValueError(
            "TF_LOWPREC_SANITIZE must be a -fsanitize= list such as 'address,undefined', "
            f"got {checks!r}")
    # -O1 after -O3 wins; frame pointers and -g give readable reports.
    return [f"-fsanitize={checks}", f"-fno-sanitize-recover={checks}", "-O1", "-g",
            "-fno-omit-frame-pointer"]


# UBSan checks left out of the translation units that include TensorFlow's
# headers: with them g++ 12 rejects constexpr code in absl ("is not a
# constant expression").  The header-only numerics keep every check.
_SANITIZE_TF_EXCLUSIONS = [
    "-fno-sanitize=vptr,null,nonnull-attribute,returns-nonnull-attribute,alignment,"
    "object-size,pointer-overflow,builtin"]


class BuildTensorFlowOps(build_ext):
    """Compiles custom_ops/ into one shared library loadable by tf.load_op_library."""

    def copy_file(self, infile, outfile, *args, **kwargs):
        # In-place builds copy the library into the source tree: copy then
        # rename, so that running processes keep their mapped copy.
        if os.path.isdir(outfile):
            outfile = os.path.join(outfile, os.path.basename(infile))
        partial = outfile + ".partial"
        shutil.copyfile(infile, partial)
        os.replace(partial, outfile)
        return outfile, 1

    def build_extension(self, ext):
        tf = _tensorflow()
        if not tf.__version__.startswith(SUPPORTED_TF):
            print(
                f"warning: tf_lowprec supports TensorFlow {SUPPORTED_TF}; building "
                f"against {tf.__version__}",
                file=sys.stderr,
            )
        output = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(output), exist_ok=True)
        tmp = os.path.join(self.build_temp, "tf_lowprec_ops")
        os.makedirs(tmp, exist_ok=True)

        cxx = os.environ.get("CXX", "g++")
        common = ["-std=c++17", "-O3", "-fPIC", "-DNDEBUG", "-Wall"]
        sanitize = _sanitize_flags()
        common += sanitize
        common += [f"-I{os.path.join(HERE, d)}" for d in HEADER_DIRS]
        tf_flags = tf.sysconfig.get_compile_flags() + ["-Wno-deprecated-declarations"]
        x86 = platform.machine() in ("x86_64", "AMD64")
        isa_flags = {
            "tf": tf_flags,
            "portable": [],
            "avx2": ["-mavx2", "-mfma", "-mf16c"] if x86 else [],
            "avx512": (
                ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl",
                 "-mprefer-vector-width=512"]
                if x86
                else []
            ),
        }
        newest_header = max(os.path.getmtime(h) for h in _headers())
        # Embedded in the library (cpu_dispatch.cc) and read back from the
        # file before loading it, so that loading with another TensorFlow
        # fails with a clear message instead of undefined symbols or a crash.
        import keras  # noqa: PLC0415

        build_info = json.dumps(
            {
                "tensorflow_version": tf.__version__,
                "keras_version": keras.__version__,
                "compiler": subprocess.check_output([cxx, "--version"], text=True)
                .splitlines()[0],
            },
            sort_keys=True,
        )
        build_info_define = "-DTF_LOWPREC_BUILD_INFO=" + json.dumps(build_info)

        def compile_one(item):
            source, kind = item
            obj = os.path.join(tmp, os.path.basename(source) + ".o")
            src = os.path.join(HERE, source)
            extra = [build_info_define] if source.endswith("cpu_dispatch.cc") else []
            if sanitize and kind == "tf":
                extra += _SANITIZE_TF_EXCLUSIONS
            cmd = [cxx, *common, *isa_flags[kind], *extra, "-c", src, "-o", obj]
            print(" ".join(cmd))
            subprocess.check_call(cmd)
            return obj

        jobs = max(1, min(len(OP_SOURCES), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            objects = list(pool.map(compile_one, OP_SOURCES))
        # Link to a temporary name and rename: processes that have the old
        # library mapped keep their copy instead of crashing mid-test.
        partial = output + ".partial"
        link = [cxx, "-shared", *sanitize, *objects, "-o", partial,
                *tf.sysconfig.get_link_flags()]
        print(" ".join(link))
        subprocess.check_call(link)
        os.replace(partial, output)


setup(
    name="tf_lowprec",
    version="0.1.0",
    description=(
        "Emulated low-precision training (BF16, FP16, FP8/HFP8, INT16 DFP) for Keras 3 "
        "on TensorFlow"
    ),
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tf_lowprec", "tf_lowprec.*"]),
    package_data={"tf_lowprec": ["data/*"]},
    ext_modules=[Extension("tf_lowprec._lowprec_ops", sources=[s for s, _ in OP_SOURCES])],
    cmdclass={"build_ext": BuildTensorFlowOps},
    # TensorFlow itself is not listed: it comes as `tensorflow` or
    # `tensorflow-cpu`, and must be installed before the build (see above).
    install_requires=["numpy>=1.26", "absl-py>=1.0"],
    extras_require={"test": ["pytest>=7", "ml_dtypes>=0.5"], "plot": ["matplotlib>=3.7"]},
    entry_points={"console_scripts": ["tf-lowprec=tf_lowprec.__main__:run"]},
    zip_safe=False,
)
