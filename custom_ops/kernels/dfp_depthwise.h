// Direct depthwise convolution on INT16 mantissas (DFP16): interface of the
// tier loops (dfp_depthwise_impl.h, compiled once per tier by
// dfp_depthwise_portable.cc, dfp_depthwise_avx2.cc and dfp_depthwise_avx512.cc),
// free of TensorFlow includes.  The op kernels (dfp_depthwise_kernels.cc)
// quantize the operands to mantissas, pick a tier and run these loops on
// TensorFlow's thread pool.
//
// Why not the GEMM: per channel, a depthwise convolution is a GEMM with
// K = kh * kw and N = the depth multiplier (often 1): too small for the GEMM's
// panels, and im2col / col2im dominated its cost.  Channels-last, one output
// pixel's channels are contiguous in x, the filters and y, so the loops run
// across channels (vectors of lanes) instead.
//
// Arithmetic (docs/dfp_gemm.md, "Depthwise convolutions"): for every output,
// the K products I_a * I_b (INT16 x INT16, exact in INT32) are summed exactly
// per chunk of `chunk` consecutive K indices (in INT64: a chunk of even 3
// full-scale products can leave INT32), the chunk sums are rounded to FP32
// and added in K order from +0, and the total is scaled once by
// 2^(E_a + E_b) as (double(acc) * scale_a) * scale_b rounded to FP32: the
// arithmetic of the INT16 GEMM (dfp_gemm.h) for one exponent block.
#ifndef TF_LOWPREC_KERNELS_DFP_DEPTHWISE_H_
#define TF_LOWPREC_KERNELS_DFP_DEPTHWISE_H_

#include <cstdint>

#include "cpu_features.h"

namespace tf_lowprec {
namespace dfp_depthwise {

// The geometry of one depthwise convolution, NHWC.  Output pixel (oy, ox),
// tap (i, j) reads the input dilated by (lh, lw) (lh - 1 zeros between its
// rows), padded by pad_top / pad_left, at row oy * sh + i * dh - pad_top
// (and likewise for columns); positions between dilated rows or outside are
// zeros.
struct Geometry {
  int64_t batch = 0, height = 0, width = 0;  // of the (undilated) input
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1, lh = 1, lw = 1;
  int64_t pad_top = 0, pad_left = 0;
  int64_t out_h = 0, out_w = 0;
  int64_t channels = 0;    // C: the filters' channel axis
  int64_t multiplier = 1;  // M: the depth multiplier
};

// Input row (or column) of output position o and tap i in the undilated
// input of `size` rows (stride s, dilation d, input dilation l, padding
// `pad` before), or -1 where the tap reads padding or a dilation zero.
inline int64_t SourceIndex(int64_t o, int64_t i, int64_t s, int64_t d, int64_t l, int64_t pad,
                           int64_t size) {
  const int64_t at = o * s + i * d - pad;
  if (l == 1) return at >= 0 && at < size ? at : -1;  // no division: the common case
  if (at < 0 || at % l != 0) return -1;
  const int64_t r = at / l;
  return r < size ? r : -1;
}

// y = depthwise conv of x with filters, on mantissas.
//   reduce_multiplier false (the forward pass): x [N, H, W, C], filters
//     [kh, kw, C, M], y [N, OH, OW, C * M]; y[.., c * M + m] sums over the
//     taps t = (i, j) in row-major order: K = kh * kw.
//   reduce_multiplier true (the input gradient: x is then the error, filters
//     flipped): x [N, H, W, C * M], y [N, OH, OW, C]; y[.., c] sums over
//     (t, m) in that order: K = kh * kw * M.
struct ForwardProblem {
  Geometry g;
  bool reduce_multiplier = false;
  const int16_t* x = nullptr;
  const int16_t* filters = nullptr;  // [kh * kw, C * M]
  int64_t chunk = 64;
  double scale_a = 1.0, scale_b = 1.0;  // 2^E of the operands, in the GEMM's order
  float* y = nullptr;
};

// d(filters)[t, c * M + m] = sum over the output pixels p = (b, oy, ox) in
// that order of x-patch(p, t, c) * dy[p, c * M + m]: K = N * OH * OW.  The
// loops write the FP32-rounded exact chunk sums of chunks [first, last) to
// partial[(chunk - first) * kh * kw * C * M + t * C * M + q]; the op adds them
// in chunk order.
struct FilterProblem {
  Geometry g;
  const int16_t* x = nullptr;   // [N, H, W, C]
  const int16_t* dy = nullptr;  // [N, OH, OW, C * M]
  int64_t chunk = 64;
  float* partial = nullptr;
};

struct Loops {
  const char* isa;
  // out[i] = rounded[i] * inverse as an INT16 mantissa, for quantize_dfp
  // outputs `rounded` = I * 2^E and inverse = 2^-E (a normal float: exact),
  // 0 for NaN and Inf.  Returns whether any value was NaN or Inf.
  bool (*to_mantissas)(const float* rounded, int64_t n, float inverse, int16_t* out);
  // Output rows [row_begin, row_end) of N * OH.  `scratch`: 2 * lanes int64
  // (lanes = C * M, or C when reduce_multiplier).
  void (*forward)(const ForwardProblem& p, int64_t row_begin, int64_t row_end,
                  int64_t* scratch);
  // Chunks [chunk_begin, chunk_end) of the pixels, written from partial[0]
  // on for chunk_begin == p's first chunk of this call (see FilterProblem).
  // `scratch`: kh * kw * C * M int64.
  void (*filter_chunks)(const FilterProblem& p, int64_t first_chunk, int64_t chunk_begin,
                        int64_t chunk_end, int64_t* scratch);
};

namespace portable {
extern const Loops kLoops;
}
namespace avx2 {
extern const Loops kLoops;
}
namespace avx512 {
extern const Loops kLoops;
}

// "portable", "avx2", "avx512" or "auto" (the fastest the CPU runs); nullptr
// for an unknown or unsupported name.
inline const Loops* SelectLoops(const char* isa) {
  return SelectTier<Loops>(isa, {&portable::kLoops, &avx2::kLoops, &avx512::kLoops,
                                 CpuSupportsAvx512()});
}

}  // namespace dfp_depthwise
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_DEPTHWISE_H_
