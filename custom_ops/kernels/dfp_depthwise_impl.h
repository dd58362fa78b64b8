// The tier loops of the direct DFP16 depthwise convolution (dfp_depthwise.h
// states what they compute).  Compiled once per tier, inside namespace
// TF_LOWPREC_DEPTHWISE_ISA, by dfp_depthwise_portable.cc, _avx2.cc and
// _avx512.cc with that tier's flags.  Plain loops across the channels of
// one pixel (contiguous, channels last) that the compiler vectorizes: per
// lane, an INT16 x INT16 product formed in INT32 (exact: |I| <= 32767) and
// added to an INT64 chunk sum (vpmovsxwd, vpmulld, vpmovsxdq, vpaddq with
// AVX-512: 8 products a vector).  With multiplier 1 (Keras' default) every
// inner loop is unit-stride; other multipliers run a (channel, m) double loop.
#ifndef TF_LOWPREC_KERNELS_DFP_DEPTHWISE_IMPL_H_
#define TF_LOWPREC_KERNELS_DFP_DEPTHWISE_IMPL_H_

#include <cstdint>

#include "dfp_depthwise.h"

namespace tf_lowprec {
namespace dfp_depthwise {
namespace TF_LOWPREC_DEPTHWISE_ISA {
namespace {

// acc[q] += float(s[q]); s[q] = 0: the end of a chunk.
inline void FlushChunk(int64_t* __restrict s, float* __restrict acc, int64_t lanes) {
  for (int64_t q = 0; q < lanes; ++q) {
    acc[q] += static_cast<float>(s[q]);
    s[q] = 0;
  }
}

bool ToMantissas(const float* __restrict rounded, int64_t n, float inverse,
                 int16_t* __restrict out) {
  int32_t nonfinite = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = rounded[i];
    const int32_t finite = (v - v) == 0.0f;  // false for NaN and +-Inf
    out[i] = static_cast<int16_t>(static_cast<int32_t>(finite ? v * inverse : 0.0f));
    nonfinite |= 1 - finite;
  }
  return nonfinite != 0;
}

// Lanes per block of the multiplier-1 paths: 16 INT64 chunk sums and FP32
// totals held in registers (2 + 1 AVX-512 vectors) across all the taps.
constexpr int64_t kLaneBlock = 16;

// Multiplier 1 (either direction: then K = the taps): output pixel (b, oy,
// ox), lanes [q0, q0 + n) with n <= kLaneBlock (kFull: n == kLaneBlock, so
// that the loops have constant trip counts and stay in registers).
template <bool kFull>
inline void ForwardBlockM1(const ForwardProblem& p, const int64_t* iy, const int64_t* ix,
                           int64_t b, int64_t oy, int64_t ox, int64_t q0, int64_t n_in) {
  const Geometry& g = p.g;
  const int64_t n = kFull ? kLaneBlock : n_in;
  const int64_t lanes = g.channels;
  int64_t s[kLaneBlock] = {0};
  float acc[kLaneBlock] = {0.0f};
  int64_t pending = 0;
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      if (iy[i] >= 0 && ix[j] >= 0) {
        const int16_t* __restrict xr =
            p.x + ((b * g.height + iy[i]) * g.width + ix[j]) * lanes + q0;
        const int16_t* __restrict wr = p.filters + (i * g.kw + j) * lanes + q0;
        for (int64_t l = 0; l < n; ++l) {
          s[l] += static_cast<int32_t>(xr[l]) * static_cast<int32_t>(wr[l]);
        }
      }
      if (++pending == p.chunk) {
        for (int64_t l = 0; l < n; ++l) {
          acc[l] += static_cast<float>(s[l]);
          s[l] = 0;
        }
        pending = 0;
      }
    }
  }
  if (pending != 0) {
    for (int64_t l = 0; l < n; ++l) acc[l] += static_cast<float>(s[l]);
  }
  float* __restrict yo = p.y + ((b * g.out_h + oy) * g.out_w + ox) * lanes + q0;
  for (int64_t l = 0; l < n; ++l) {
    yo[l] = static_cast<float>((static_cast<double>(acc[l]) * p.scale_a) * p.scale_b);
  }
}

void ForwardM1(const ForwardProblem& p, int64_t row_begin, int64_t row_end) {
  const Geometry& g = p.g;
  constexpr int64_t kMaxTaps = 64;  // taps per axis held on the stack (else the generic loop)
  int64_t iy[kMaxTaps], ix[kMaxTaps];
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / g.out_h, oy = row % g.out_h;
    for (int64_t i = 0; i < g.kh; ++i) {
      iy[i] = SourceIndex(oy, i, g.sh, g.dh, g.lh, g.pad_top, g.height);
    }
    for (int64_t ox = 0; ox < g.out_w; ++ox) {
      for (int64_t j = 0; j < g.kw; ++j) {
        ix[j] = SourceIndex(ox, j, g.sw, g.dw, g.lw, g.pad_left, g.width);
      }
      int64_t q0 = 0;
      for (; q0 + kLaneBlock <= g.channels; q0 += kLaneBlock) {
        ForwardBlockM1<true>(p, iy, ix, b, oy, ox, q0, kLaneBlock);
      }
      if (q0 < g.channels) ForwardBlockM1<false>(p, iy, ix, b, oy, ox, q0, g.channels - q0);
    }
  }
}

void Forward(const ForwardProblem& p, int64_t row_begin, int64_t row_end, int64_t* scratch) {
  const Geometry& g = p.g;
  if (g.multiplier == 1 && g.kh <= 64 && g.kw <= 64) {
    ForwardM1(p, row_begin, row_end);
    return;
  }
  const int64_t c_count = g.channels, m_count = g.multiplier;
  const int64_t lanes = p.reduce_multiplier ? c_count : c_count * m_count;
  const int64_t x_channels = c_count * (p.reduce_multiplier ? m_count : 1);
  const int64_t w_lanes = c_count * m_count;
  int64_t* __restrict s = scratch;
  float* __restrict acc = reinterpret_cast<float*>(scratch + lanes);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / g.out_h, oy = row % g.out_h;
    for (int64_t ox = 0; ox < g.out_w; ++ox) {
      for (int64_t q = 0; q < lanes; ++q) {
        s[q] = 0;
        acc[q] = 0.0f;
      }
      int64_t k = 0;  // K index: taps (forward) or (tap, m) (reduce_multiplier)
      int64_t pending = 0;  // K indices summed into s since the last flush
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t iy = SourceIndex(oy, i, g.sh, g.dh, g.lh, g.pad_top, g.height);
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t ix = iy < 0 ? -1 : SourceIndex(ox, j, g.sw, g.dw, g.lw, g.pad_left,
                                                       g.width);
          const int16_t* __restrict xr =
              ix < 0 ? nullptr : p.x + ((b * g.height + iy) * g.width + ix) * x_channels;
          const int16_t* __restrict wr = p.filters + (i * g.kw + j) * w_lanes;
          if (!p.reduce_multiplier) {
            if (xr != nullptr) {
              if (m_count == 1) {
                for (int64_t q = 0; q < lanes; ++q) {
                  s[q] += static_cast<int32_t>(xr[q]) * static_cast<int32_t>(wr[q]);
                }
              } else {
                for (int64_t c = 0; c < c_count; ++c) {
                  const int32_t xv = xr[c];
                  for (int64_t m = 0; m < m_count; ++m) {
                    s[c * m_count + m] += xv * static_cast<int32_t>(wr[c * m_count + m]);
                  }
                }
              }
            }
            ++k;
            if (++pending == p.chunk) {
              FlushChunk(s, acc, lanes);
              pending = 0;
            }
            continue;
          }
          for (int64_t m = 0; m < m_count; ++m) {  // K order (tap, m)
            if (xr != nullptr) {
              if (m_count == 1) {
                for (int64_t c = 0; c < lanes; ++c) {
                  s[c] += static_cast<int32_t>(xr[c]) * static_cast<int32_t>(wr[c]);
                }
              } else {
                for (int64_t c = 0; c < lanes; ++c) {
                  s[c] += static_cast<int32_t>(xr[c * m_count + m]) *
                          static_cast<int32_t>(wr[c * m_count + m]);
                }
              }
            }
            ++k;
            if (++pending == p.chunk) {
              FlushChunk(s, acc, lanes);
              pending = 0;
            }
          }
        }
      }
      if (pending != 0 || k == 0) FlushChunk(s, acc, lanes);
      float* __restrict yo = p.y + ((b * g.out_h + oy) * g.out_w + ox) * lanes;
      for (int64_t q = 0; q < lanes; ++q) {
        yo[q] = static_cast<float>((static_cast<double>(acc[q]) * p.scale_a) * p.scale_b);
      }
    }
  }
}

void FilterChunks(const FilterProblem& p, int64_t first_chunk, int64_t chunk_begin,
                  int64_t chunk_end, int64_t* scratch) {
  const Geometry& g = p.g;
  const int64_t c_count = g.channels, m_count = g.multiplier;
  const int64_t lanes = c_count * m_count, taps = g.kh * g.kw;
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  int64_t* __restrict s = scratch;  // [taps, lanes]
  for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
    for (int64_t e = 0; e < taps * lanes; ++e) s[e] = 0;
    const int64_t p0 = chunk * p.chunk;
    const int64_t p1 = p0 + p.chunk < pixels ? p0 + p.chunk : pixels;
    for (int64_t pixel = p0; pixel < p1; ++pixel) {
      const int64_t ox = pixel % g.out_w, rest = pixel / g.out_w;
      const int64_t oy = rest % g.out_h, b = rest / g.out_h;
      const int16_t* __restrict dyr = p.dy + pixel * lanes;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t iy = SourceIndex(oy, i, g.sh, g.dh, g.lh, g.pad_top, g.height);
        if (iy < 0) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t ix = SourceIndex(ox, j, g.sw, g.dw, g.lw, g.pad_left, g.width);
          if (ix < 0) continue;
          const int16_t* __restrict xr = p.x + ((b * g.height + iy) * g.width + ix) * c_count;
          int64_t* __restrict st = s + (i * g.kw + j) * lanes;
          if (m_count == 1) {
            for (int64_t q = 0; q < lanes; ++q) {
              st[q] += static_cast<int32_t>(xr[q]) * static_cast<int32_t>(dyr[q]);
            }
          } else {
            for (int64_t c = 0; c < c_count; ++c) {
              const int32_t xv = xr[c];
              for (int64_t m = 0; m < m_count; ++m) {
                st[c * m_count + m] += xv * static_cast<int32_t>(dyr[c * m_count + m]);
              }
            }
          }
        }
      }
    }
    float* __restrict out = p.partial + (chunk - first_chunk) * taps * lanes;
    for (int64_t e = 0; e < taps * lanes; ++e) out[e] = static_cast<float>(s[e]);
  }
}

}  // namespace

extern const Loops kLoops;
const Loops kLoops = {TF_LOWPREC_DEPTHWISE_ISA_NAME, &ToMantissas, &Forward,
                       &FilterChunks};

}  // namespace TF_LOWPREC_DEPTHWISE_ISA
}  // namespace dfp_depthwise
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_DEPTHWISE_IMPL_H_
