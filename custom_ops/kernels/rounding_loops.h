// Loops of the rounding kernels, compiled once per instruction set.
//
// rounding_loops_portable.cc, rounding_loops_avx2.cc and
// rounding_loops_avx512.cc each define TF_LOWPREC_ISA (the namespace) and
// include rounding_loops_impl.h with different compiler flags; kernels pick
// one set at run time (SelectRoundingLoops, cpu_features.h).  All sets are
// compiled from the same source, and tests check they are bit-identical.
#ifndef TF_LOWPREC_KERNELS_ROUNDING_LOOPS_H_
#define TF_LOWPREC_KERNELS_ROUNDING_LOOPS_H_

#include <cstdint>

#include "block_scaling.h"
#include "cpu_features.h"
#include "number_formats.h"
#include "philox.h"

namespace tf_lowprec {

// Random words for stochastic rounding: the element with global index g uses
// RandomWordOfElement (philox.h) of its stream word, masked with `mask`.
struct RandomStream {
  PhiloxState philox;
  uint32_t mask = 0xFFFFFFFFu;  // keeps the top random_bits bits
  bool half_words = false;      // random_bits <= kMaxHalfWordRandomBits
};

// One block-scaled conversion (LowprecQuantizeBlockScaled), x viewed as
// [outer, length, inner] with the blocks along `length`.  Work units:
// with inner == 1, unit u is block u of the outer * blocks blocks (row-major);
// otherwise unit u is columns [c * kBlockColumns, (c + 1) * kBlockColumns) of
// block b of row o, u = (o * blocks + b) * column_chunks + c.
constexpr int64_t kBlockColumns = 256;

struct BlockScaledJob {
  const float* in = nullptr;
  float* out = nullptr;
  float* scales = nullptr;  // [outer, blocks, inner]
  int64_t outer = 1, length = 0, inner = 1;
  int64_t blocks = 0;         // per row: ceil(length / block_size)
  int64_t column_chunks = 1;  // ceil(inner / kBlockColumns)
  const BlockScaledSpec* spec = nullptr;
  Rounding rounding = Rounding::kNearestEven;
  RandomStream random;
  double encode = 1.0;  // tensor encode scale (float scales; TensorEncodeScale)
};

struct RoundingLoops {
  const char* isa;
  // out[i] = round(in[i]) to `grid`, for i in [0, n); element i has global
  // index first_index + i (stochastic rounding only).
  void (*round_float)(const float* in, float* out, int64_t n, int64_t first_index,
                      const FloatGrid& grid, Rounding rounding, const RandomStream& random);
  // out[i] = round(in[i]) onto the grid 2^k[i * k_stride] (k_stride 0 or 1).
  void (*round_dfp)(const float* in, float* out, int64_t n, int64_t first_index,
                    const int32_t* k, int64_t k_stride, Rounding rounding,
                    const RandomStream& random);
  // max_bits[j] = max(max_bits[j], |in[r * stride + j]|) over rows r < rows and
  // j < width, as float32 bit patterns, ignoring NaN and Inf.
  void (*max_abs_bits)(const float* in, int64_t rows, int64_t width, int64_t stride,
                       uint32_t* max_bits);
  // max |in[i]| over i < n as float32 bits, ignoring NaN and Inf (0 if none).
  uint32_t (*max_abs_bits_all)(const float* in, int64_t n);
  // Work units [first_unit, last_unit) of a block-scaled conversion: the
  // scales of their blocks and the values of their elements.
  void (*quantize_block_scaled)(const BlockScaledJob& job, int64_t first_unit,
                                int64_t last_unit);
};

namespace portable {
extern const RoundingLoops kRoundingLoops;
}
namespace avx2 {
extern const RoundingLoops kRoundingLoops;
}
namespace avx512 {
extern const RoundingLoops kRoundingLoops;
}

// "portable", "avx2", "avx512" or "auto" (the fastest the CPU runs); nullptr
// for an unknown or unsupported name.  Defined in cpu_dispatch.cc.
const RoundingLoops* SelectRoundingLoops(const char* isa);

}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_ROUNDING_LOOPS_H_
