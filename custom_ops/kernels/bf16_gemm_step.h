// The scalar arithmetic of the BF16 GEMM (bf16_gemm.h), shared by every
// kernel tier: the operand conversion (BF16 nearest even, then DAZ) and one
// step acc + x * y with the FTZ and NaN rules.  The portable kernel is built
// on these; the AVX2 kernel (bf16_gemm_fma_impl.h) uses them for the outputs
// its FMA fast path is not proved exact on.
//
// Included by bf16_gemm_impl.h and bf16_gemm_fma_impl.h inside the namespace
// of the tier (TF_LOWPREC_BF16_ISA), so every tier has its own copy.
#ifndef TF_LOWPREC_BF16_ISA
#error "define TF_LOWPREC_BF16_ISA before including bf16_gemm_step.h"
#endif
#include <cmath>
#include <cstdint>
#include <cstdlib>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "rounding.h"  // FloatBits, BitsFloat

namespace tf_lowprec {
namespace bf16_gemm {
namespace TF_LOWPREC_BF16_ISA {
namespace {

inline int64_t Min64(int64_t x, int64_t y) { return x < y ? x : y; }
inline int64_t CeilDiv(int64_t x, int64_t y) { return (x + y - 1) / y; }

// FP32 bits -> BF16 bits as the GEMM uses them: round to nearest even (NaN
// becomes the quiet NaN with its sign, as round_to_format(x, BF16) does),
// then a subnormal BF16 becomes zero with its sign (the instruction's DAZ).
inline uint32_t ToBf16Daz(uint32_t u) {
  uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) r = ((u >> 16) & 0x8000u) | 0x7FC0u;
  if ((r & 0x7F80u) == 0) r &= 0x8000u;
  return r;
}

inline bool IsNanBf16(uint32_t h) { return (h & 0x7FFFu) > 0x7F80u; }

// One step acc + x * y of bf16_gemm.h; x, y are BF16 bits (DAZ applied).
// The product of two BF16 values is exact in binary64, and rounding the sum
// to binary64 and then to FP32 is the same as rounding it once (at most 24
// significant bits each, and 53 >= 2 * 24 + 2: double rounding is innocuous
// for a sum).
inline float Step(float acc, uint32_t x, uint32_t y) {
  const double v = static_cast<double>(acc) +
                   static_cast<double>(BitsFloat(x << 16)) *
                       static_cast<double>(BitsFloat(y << 16));
  if (v != v) {
    // x's NaN, else y's, else the accumulator's (quiet); else an invalid
    // operation (Inf * 0, Inf - Inf): the default NaN.
    if (IsNanBf16(x)) return BitsFloat((x << 16) | 0x00400000u);
    if (IsNanBf16(y)) return BitsFloat((y << 16) | 0x00400000u);
    if (acc != acc) return BitsFloat(FloatBits(acc) | 0x00400000u);
    return BitsFloat(0xFFC00000u);
  }
  // FTZ: the 24-bit rounding of v (exponent unbounded) is below 2^-126
  // exactly when |v| is below the midpoint between 2^-126 and its 24-bit
  // predecessor (the tie rounds to the even 2^-126).  v is exact here, or
  // rounded in binary64 far from that threshold.
  constexpr double kFlushBelow = 0x1p-126 - 0x1p-151;
  if (std::fabs(v) < kFlushBelow) return std::signbit(v) ? -0.0f : 0.0f;
  return static_cast<float>(v);
}

// Step without the NaN rule (a NaN result comes out as some NaN), written so
// that the compiler can vectorise it: callers redo rows that produced NaN.
inline float StepFinite(float acc, double x, double y) {
  const double v = static_cast<double>(acc) + x * y;
  constexpr double kFlushBelow = 0x1p-126 - 0x1p-151;
  const float r = static_cast<float>(v);
  return std::fabs(v) < kFlushBelow ? std::copysign(0.0f, r) : r;
}

inline void* AlignedAlloc(int64_t bytes) {
  const int64_t rounded = bytes <= 0 ? 64 : (bytes + 63) / 64 * 64;
  return std::aligned_alloc(64, static_cast<size_t>(rounded));
}

// The packed operands (tens of MiB for large GEMMs, fresh every call): in
// 2 MiB pages where the kernel offers them (transparent huge pages on
// request), so that first touching them costs ~512 times fewer page faults
// (measured: 16 MiB in 1.4 ms instead of 11 ms on a Zen 3 VM; the CNN's
// d(filters) GEMM on Zen 4 spent a third of its time in page faults) and the
// micro-kernel's row streams fewer TLB misses.  Freed with std::free.
inline void* AllocatePacked(int64_t bytes) {
  constexpr int64_t kHugePage = int64_t{2} << 20;
  if (bytes < kHugePage) return AlignedAlloc(bytes);
  const int64_t rounded = CeilDiv(bytes, kHugePage) * kHugePage;
  void* memory = std::aligned_alloc(kHugePage, static_cast<size_t>(rounded));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (memory != nullptr) madvise(memory, static_cast<size_t>(rounded), MADV_HUGEPAGE);
#endif
  return memory;
}

}  // namespace
}  // namespace TF_LOWPREC_BF16_ISA
}  // namespace bf16_gemm
}  // namespace tf_lowprec
