// Single-thread timing of the INT16 DFP GEMM on recorded operands (the
// GEMMs of a training step, written by benchmarks/dump_step_gemms.py), with
// the fused rounding of the op (Problem::round_inputs): thread CPU time, best
// of `reps` calls, the overflow count and the micro-tile chunks recomputed
// in INT64 (Stats of one call) and a hash of the output bits (equal
// across tiers and code versions: the results are defined bit for bit).
//
// Build (from the repository root, after `python setup.py build_ext
// --inplace`, whose tier objects it links; one line):
//   T=build/temp.linux-x86_64-cpython-311/tf_lowprec_ops
//   g++ -std=c++17 -O2 -Icustom_ops/kernels benchmarks/dfp_gemm_operand_timing.cc
//       $T/dfp_gemm_avx2.cc.o $T/dfp_gemm_portable.cc.o $T/dfp_gemm_avx512.cc.o -lpthread
//       -o /tmp/dfp_operand_timing
//   /tmp/dfp_operand_timing avx512|avx2|portable REPS /tmp/mlp_gemms/g*.bin
// (avx512 runs only where the CPU has AVX512_VNNI.)
#include <time.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dfp_gemm.h"

namespace {

using tf_lowprec::dfp_gemm::Kernels;
using tf_lowprec::dfp_gemm::ParallelFor;
using tf_lowprec::dfp_gemm::Problem;
using tf_lowprec::dfp_gemm::Stats;

void RunInline(void*, int64_t n, int64_t, void (*fn)(void*, int64_t, int64_t), void* arg) {
  fn(arg, 0, n);
}

double ThreadSeconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s avx512|avx2|portable REPS FILE...\n", argv[0]);
    return 2;
  }
  const std::string tier = argv[1];
  const Kernels* kernels = tier == "portable" ? &tf_lowprec::dfp_gemm::portable::kKernels
                           : tier == "avx512"  ? &tf_lowprec::dfp_gemm::avx512vnni::kKernels
                                               : &tf_lowprec::dfp_gemm::avx2::kKernels;
  const int reps = std::atoi(argv[2]);
  double total = 0.0;
  for (int f = 3; f < argc; ++f) {
    FILE* file = std::fopen(argv[f], "rb");
    int64_t h[8];
    if (file == nullptr || std::fread(h, sizeof h[0], 8, file) != 8) return 1;
    const int64_t m = h[0], n = h[1], k = h[2];
    std::vector<float> a(m * k), b(k * n), out(m * n);
    if (std::fread(a.data(), 4, a.size(), file) != a.size() ||
        std::fread(b.data(), 4, b.size(), file) != b.size()) {
      return 1;
    }
    std::fclose(file);
    const int32_t ea = static_cast<int32_t>(h[5]), eb = static_cast<int32_t>(h[6]);
    Problem p;
    p.m = m;
    p.n = n;
    p.k = k;
    p.a = a.data();
    p.b = b.data();
    p.transpose_a = h[3] != 0;
    p.transpose_b = h[4] != 0;
    p.ea = &ea;
    p.eb = &eb;
    p.block_size = k;
    p.chunk_size = h[7];
    p.round_inputs = true;  // as LowprecDfpMatmulFused (its exponents are in range here)
    p.out = out.data();
    ParallelFor parallel;
    parallel.run = RunInline;
    Stats stats;
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      const double t0 = ThreadSeconds();
      kernels->gemm(p, parallel, &stats);
      best = std::min(best, ThreadSeconds() - t0);
    }
    uint64_t hash = 1469598103934665603ull;  // FNV-1a over the output bits
    for (float x : out) {
      uint32_t u;
      std::memcpy(&u, &x, 4);
      hash = (hash ^ u) * 1099511628211ull;
    }
    total += best;
    std::printf("%s %ldx%ldx%ld ta=%d tb=%d %s: %.3f ms, overflowed chains %ld, recomputed %ld, hash %016lx\n",
                argv[f], static_cast<long>(m), static_cast<long>(k), static_cast<long>(n),
                static_cast<int>(h[3]), static_cast<int>(h[4]), kernels->isa, best * 1e3,
                static_cast<long>(stats.overflowed_chunks),
                static_cast<long>(stats.recomputed_tiles), static_cast<unsigned long>(hash));
  }
  std::printf("total %.3f ms\n", total * 1e3);
  return 0;
}
