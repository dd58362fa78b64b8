// Register-only peak of the AVX2 INT16 GEMM step (vpmaddwd + vpaddd) and of
// FP32 FMA on ymm registers, per core and on all cores: the ceiling against
// which the avx2 tier of dfp_matmul is measured (benchmarks/bench_dfp_gemm.py).
//
// Each loop keeps 12 independent accumulators in registers, like the 6 x 16
// micro-kernel of dfp_gemm_microkernel_avx2.h, so that latency is hidden and
// only the issue rate counts; no memory is touched.  Written in inline
// assembly so that the compiler cannot hoist the loop-invariant products.
//   int16:  per step 12 x (vpmaddwd ymm + vpaddd ymm) = 12 x 16 multiply-adds
//   fp32:   per step 12 x vfmadd231ps ymm             = 12 x 8 multiply-adds
// Operations count 2 per multiply-add (GOP/s, as for a GEMM's 2 m n k).
// Printed per thread count: the rate per second of wall time (all threads
// together) and the sum of the threads' rates per second of their own CPU
// time (the figure a quiet machine would give in wall time).
//
//   g++ -O3 -mavx2 -mfma -pthread benchmarks/avx2_register_peak.cc -o /tmp/avx2_peak
//   /tmp/avx2_peak [threads...]     (default: 1 and every CPU)
#include <immintrin.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

constexpr int64_t kSteps = 100000000;  // loop iterations per thread and repeat

#define PEAK_MADD_ADD(r) \
  "vpmaddwd %%ymm12, %%ymm14, %%ymm15\n\t" \
  "vpaddd %%ymm15, %%ymm" #r ", %%ymm" #r "\n\t"

// 12 x (vpmaddwd + vpaddd) per iteration, 12 chains.
void Int16Loop(int64_t steps) {
  asm volatile(
      "vpxor %%ymm0, %%ymm0, %%ymm0\n\t"
      "vmovdqa %%ymm0, %%ymm1\n\t" "vmovdqa %%ymm0, %%ymm2\n\t" "vmovdqa %%ymm0, %%ymm3\n\t"
      "vmovdqa %%ymm0, %%ymm4\n\t" "vmovdqa %%ymm0, %%ymm5\n\t" "vmovdqa %%ymm0, %%ymm6\n\t"
      "vmovdqa %%ymm0, %%ymm7\n\t" "vmovdqa %%ymm0, %%ymm8\n\t" "vmovdqa %%ymm0, %%ymm9\n\t"
      "vmovdqa %%ymm0, %%ymm10\n\t" "vmovdqa %%ymm0, %%ymm11\n\t"
      "vpcmpeqd %%ymm12, %%ymm12, %%ymm12\n\t"
      "vpcmpeqd %%ymm14, %%ymm14, %%ymm14\n\t"
      "1:\n\t"
      PEAK_MADD_ADD(0) PEAK_MADD_ADD(1) PEAK_MADD_ADD(2) PEAK_MADD_ADD(3)
      PEAK_MADD_ADD(4) PEAK_MADD_ADD(5) PEAK_MADD_ADD(6) PEAK_MADD_ADD(7)
      PEAK_MADD_ADD(8) PEAK_MADD_ADD(9) PEAK_MADD_ADD(10) PEAK_MADD_ADD(11)
      "decq %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(steps)
      :
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

#define PEAK_FMA(r) "vfmadd231ps %%ymm12, %%ymm13, %%ymm" #r "\n\t"

// 12 x vfmadd231ps per iteration, 12 chains.
void Fp32Loop(int64_t steps) {
  asm volatile(
      "vxorps %%ymm0, %%ymm0, %%ymm0\n\t"
      "vmovaps %%ymm0, %%ymm1\n\t" "vmovaps %%ymm0, %%ymm2\n\t" "vmovaps %%ymm0, %%ymm3\n\t"
      "vmovaps %%ymm0, %%ymm4\n\t" "vmovaps %%ymm0, %%ymm5\n\t" "vmovaps %%ymm0, %%ymm6\n\t"
      "vmovaps %%ymm0, %%ymm7\n\t" "vmovaps %%ymm0, %%ymm8\n\t" "vmovaps %%ymm0, %%ymm9\n\t"
      "vmovaps %%ymm0, %%ymm10\n\t" "vmovaps %%ymm0, %%ymm11\n\t"
      "vmovaps %%ymm0, %%ymm12\n\t" "vmovaps %%ymm0, %%ymm13\n\t"
      "1:\n\t"
      PEAK_FMA(0) PEAK_FMA(1) PEAK_FMA(2) PEAK_FMA(3) PEAK_FMA(4) PEAK_FMA(5)
      PEAK_FMA(6) PEAK_FMA(7) PEAK_FMA(8) PEAK_FMA(9) PEAK_FMA(10) PEAK_FMA(11)
      "decq %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(steps)
      :
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11", "xmm12", "xmm13");
}

struct Rate {
  double wall = 0.0;  // GOP/s of all threads together, per second of wall time
  double cpu = 0.0;   // sum over threads of GOP per second of that thread's CPU time
};

double ThreadCpuSeconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

// `threads` threads each running loop(kSteps), best of `repeats` (the
// machine may be shared: the best run is the least disturbed one).  The CPU
// time rate counts only the time the threads ran, so it stays close to the
// peak per core when other processes take turns on the cores.
Rate Measure(void (*loop)(int64_t), double ops_per_step, int threads, int repeats) {
  Rate best;
  for (int r = 0; r < repeats; ++r) {
    std::vector<std::thread> pool;
    std::vector<double> cpu(threads);
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&cpu, t, loop] {
        const double c0 = ThreadCpuSeconds();
        loop(kSteps);
        cpu[t] = ThreadCpuSeconds() - c0;
      });
    }
    for (auto& t : pool) t.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double per_cpu = 0.0;
    for (double c : cpu) per_cpu += ops_per_step * kSteps / c / 1e9;
    best.wall = std::max(best.wall, ops_per_step * kSteps * threads / s / 1e9);
    best.cpu = std::max(best.cpu, per_cpu);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> thread_counts;
  for (int i = 1; i < argc; ++i) thread_counts.push_back(std::atoi(argv[i]));
  if (thread_counts.empty()) {
    thread_counts = {1, static_cast<int>(std::thread::hardware_concurrency())};
  }
  constexpr double kInt16Ops = 12 * 16 * 2;  // per step
  constexpr double kFp32Ops = 12 * 8 * 2;
  std::printf("threads  int16_GOPs_wall  int16_GOPs_cpu  fp32_GFLOPs_wall  fp32_GFLOPs_cpu\n");
  for (int threads : thread_counts) {
    const Rate int16 = Measure(Int16Loop, kInt16Ops, threads, 5);
    const Rate fp32 = Measure(Fp32Loop, kFp32Ops, threads, 5);
    std::printf("%7d  %15.1f  %14.1f  %16.1f  %15.1f\n", threads, int16.wall, int16.cpu,
                fp32.wall, fp32.cpu);
  }
  return 0;
}
