// Single-kernel timing of the INT16 DFP GEMM, without TensorFlow: the numbers
// behind docs/dfp_gemm.md's per-core figures (thread CPU time for one thread,
// so that other processes on a shared machine disturb them less; wall time
// for two).  Data: Gaussian mantissas of standard deviation `scale` (clipped
// to +-32767, exponent -15): 3660 is like the benchmark's operands, 6180 is
// full scale (largest mantissa ~32700), 12000 overflows most chains.
//
// Build (from the repository root, after `python setup.py build_ext
// --inplace`, whose objects it links: the tiers and cpu_dispatch.cc's
// SelectKernels) and run:
//   T=build/temp.linux-x86_64-cpython-311/tf_lowprec_ops   # (your Python's)
//   O=$(echo $T/cpu_dispatch.cc.o $T/rounding_loops_*.o $T/{dfp,bf16}_gemm_{portable,avx2,avx512}.cc.o)
//   g++ -std=c++17 -O3 -Icustom_ops/kernels benchmarks/dfp_gemm_kernel_timing.cc $O
//       -lpthread -o /tmp/dfp_gemm_timing      (one line)
//   /tmp/dfp_gemm_timing M K N [threads=1] [scale=6180] [isa=avx512] [reps=5] [chunk_size=64]
// Prints the best GOP/s (2 M N K per second), the overflow counters and a
// checksum of the output (equal across ISAs and code versions: the results
// are defined bit for bit).
#include <time.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "dfp_gemm.h"

namespace {

using tf_lowprec::dfp_gemm::Kernels;
using tf_lowprec::dfp_gemm::ParallelFor;
using tf_lowprec::dfp_gemm::Problem;
using tf_lowprec::dfp_gemm::Stats;

int g_threads = 1;

// ParallelFor on 1 or 2 threads: [0, n) in two halves.
void RunSplit(void*, int64_t n, int64_t, void (*fn)(void*, int64_t, int64_t), void* arg) {
  if (g_threads == 1 || n < 2) {
    fn(arg, 0, n);
    return;
  }
  const int64_t half = n / 2;
  std::thread other([&] { fn(arg, half, n); });
  fn(arg, 0, half);
  other.join();
}

double Seconds(clockid_t clock) {
  timespec t;
  clock_gettime(clock, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s M K N [threads] [scale] [isa] [reps] [chunk_size]\n", argv[0]);
    return 2;
  }
  const int64_t m = std::atol(argv[1]), k = std::atol(argv[2]), n = std::atol(argv[3]);
  g_threads = argc > 4 ? std::atoi(argv[4]) : 1;
  const double scale = argc > 5 ? std::atof(argv[5]) : 6180.0;
  const char* isa = argc > 6 ? argv[6] : "avx512";
  const int reps = argc > 7 ? std::atoi(argv[7]) : 5;
  const int64_t chunk_size = argc > 8 ? std::atol(argv[8]) : 64;
  const Kernels* kernels = tf_lowprec::dfp_gemm::SelectKernels(isa);
  if (kernels == nullptr) {
    std::fprintf(stderr, "isa %s is not available here\n", isa);
    return 2;
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> gauss;
  auto mantissa = [&](float g) {
    const float v = std::fmin(std::fmax(std::nearbyint(g * scale), -32767.0f), 32767.0f);
    return v / 32768.0f;  // I * 2^-15
  };
  std::vector<float> a(m * k), b(k * n), out(m * n);
  for (float& x : a) x = mantissa(gauss(rng));
  for (float& x : b) x = mantissa(gauss(rng));
  const int32_t exponent = -15;
  Problem p;
  p.m = m;
  p.n = n;
  p.k = k;
  p.a = a.data();
  p.b = b.data();
  p.ea = &exponent;
  p.eb = &exponent;
  p.block_size = k > 0 ? k : 1;
  p.chunk_size = chunk_size;
  p.out = out.data();
  ParallelFor parallel;
  parallel.run = RunSplit;
  const clockid_t clock = g_threads == 1 ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
  Stats stats;
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = Seconds(clock);
    kernels->gemm(p, parallel, &stats);
    best = std::fmin(best, Seconds(clock) - t0);
  }
  double checksum = 0.0;
  for (float x : out) checksum += x;
  std::printf("%ldx%ldx%ld threads=%d scale=%g %s: %.1f GOP/s (overflowed chains %ld, "
              "recomputed tiles %ld) checksum %.6g\n",
              static_cast<long>(m), static_cast<long>(k), static_cast<long>(n), g_threads, scale,
              kernels->isa, 2.0 * m * n * k / best / 1e9,
              static_cast<long>(stats.overflowed_chunks), static_cast<long>(stats.recomputed_tiles),
              checksum);
  return 0;
}
