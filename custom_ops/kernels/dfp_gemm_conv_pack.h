// INT16 DFP GEMM: packing a convolution's patch matrix (ConvGather,
// conv_gather.h) straight from its NHWC / NDHWC input: the implicit-GEMM
// convolution.
// No im2col matrix is written: each panel's values are gathered into a
// small buffer (zeros for padding and for an input dilation's holes) and
// converted with dfp_gemm_pack.h's own conversion, so the mantissas, pair
// words, NaN lanes and invalid counts are those of PackPanels on the
// materialized patch matrix, bit for bit.  Few channels (a CNN's first
// layers): the spans of kw * C floats are gathered whole
// (GatherShortSpanRows), and on AVX-512 six pixels of one output row may be
// converted once per input value and permuted into pair words
// (PackRowWindows), with the same results.  One exponent block (the
// convolution ops quantize every tensor with one shared exponent).
// Part of dfp_gemm_impl.h (compiled once per tier, inside the tier's
// namespace TF_LOWPREC_DFP_ISA; see there).
#ifndef TF_LOWPREC_KERNELS_DFP_GEMM_CONV_PACK_H_
#define TF_LOWPREC_KERNELS_DFP_GEMM_CONV_PACK_H_

#include <cstdint>
#include <cstring>

#include "conv_gather.h"  // ConvGather, GatherPatchRow
#include "dfp_gemm.h"
#include "dfp_gemm_layout.h"
#include "dfp_gemm_pack.h"

namespace tf_lowprec {
namespace dfp_gemm {
namespace TF_LOWPREC_DFP_ISA {
namespace {

#if TF_LOWPREC_DFP_VNNI
// ConvertContiguous (one scale) 32 values at a time, the same values and
// counts: the two vectors' int32 mantissas are narrowed by one word permute
// (their low halves, as vpmovdw) and stored as one vector.  GCC folds
// ConvertContiguous's narrowing and masked store into vpmovdw to memory,
// which Zen 4 runs slowly: it was most of the packing time of the CNN's
// patch rows.
inline int32_t ConvertOneScale(const float* x, int64_t n, float s1, float s2, float bound,
                               bool round, int16_t* out, int32_t* nonfinite) {
  const MantissaScale sc(s1, s2, bound, round);
  const __m512i low_words = _mm512_set_epi16(
      62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32,
      30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  __mmask16 nf = 0;
  // Mantissas of the live lanes of y; *wrong: the invalid live lanes.
  auto convert = [&](__m512 y, __mmask16 live, __mmask16* wrong) {
    __mmask16 bad;
    const __m512i m = Mantissas(y, live, sc, &bad, wrong);
    nf |= bad;
    return m;
  };
  int32_t invalid = 0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __mmask16 w0, w1;
    const __m512i m0 = convert(_mm512_loadu_ps(x + i), 0xFFFF, &w0);
    const __m512i m1 = convert(_mm512_loadu_ps(x + i + 16), 0xFFFF, &w1);
    _mm512_storeu_si512(out + i, _mm512_permutex2var_epi16(m0, low_words, m1));
    invalid += __builtin_popcount(static_cast<unsigned>(w0) | (static_cast<unsigned>(w1) << 16));
  }
  if (i < n) {
    const int64_t rest = n - i;  // 1 .. 31
    const __mmask16 live0 = rest >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << rest) - 1);
    const __mmask16 live1 = rest > 16 ? static_cast<__mmask16>((1u << (rest - 16)) - 1) : 0;
    __mmask16 w0, w1;
    const __m512i m0 = convert(_mm512_maskz_loadu_ps(live0, x + i), live0, &w0);
    const __m512i m1 = convert(_mm512_maskz_loadu_ps(live1, x + i + 16), live1, &w1);
    _mm512_mask_storeu_epi16(out + i, static_cast<__mmask32>((uint64_t{1} << rest) - 1),
                             _mm512_permutex2var_epi16(m0, low_words, m1));
    invalid += __builtin_popcount(static_cast<unsigned>(w0) | (static_cast<unsigned>(w1) << 16));
  }
  *nonfinite |= nf ? 1 : 0;
  return invalid;
}
#endif

// Values of a patch row converted at a time by PackPatchRows; rows of 6
// lanes up to this many values in all take its short-K path.
constexpr int64_t kPatchRunValues = 1024;

// Mantissas of n contiguous values with one exponent (ConvertOneScale /
// ConvertContiguous where the tier has them, else ConvertRun: the same
// results).
inline int32_t ConvertValues(const float* x, int64_t n, const float* s1, const float* s2,
                             const float* bound, bool round, int16_t* out, int32_t* nonfinite) {
#if TF_LOWPREC_DFP_VNNI
  return ConvertOneScale(x, n, *s1, *s2, *bound, round, out, nonfinite);
#elif TF_LOWPREC_DFP_AVX2
  return ConvertContiguous(x, n, s1, s2, bound, 0, round, out, nonfinite);
#else
  return ConvertRun(x, 1, n, s1, s2, bound, 0, round, out, nonfinite);
#endif
}

inline bool NonFinite(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return (bits & 0x7F800000u) == 0x7F800000u;
}

// Pair words of n mantissas v (n odd: the last pair's high half is zero)
// into o[q * kWidth], q = 0 .. ceil(n / 2) - 1: an int16 run read as int32
// words is exactly the pairs (little-endian), one load and one store a word.
template <int kWidth>
inline void ScatterPairs(const int16_t* v, int64_t n, int32_t* o) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  for (int64_t q = 0; q < n / 2; ++q) std::memcpy(o + q * kWidth, v + 2 * q, 4);
#else
  for (int64_t q = 0; q < n / 2; ++q) o[q * kWidth] = PairWord(v[2 * q], v[2 * q + 1]);
#endif
  if (n % 2 != 0) o[(n / 2) * kWidth] = PairWord(v[n - 1], 0);  // zero padding
}

#if TF_LOWPREC_DFP_VNNI
// Pair words q0 .. q0 + 15 of 6 lanes (lane l's int16 mantissas at runs + l
// * stride) into out[q * 6 + l] (96 consecutive words, a panel's layout):
// the lanes are paired into 64-bit units (lanes 0-1, 2-3, 4-5 of one pair
// word), then the units are laid out three by three, 18 permutes in all.
inline void InterleaveSixLanes(const int16_t* runs, int64_t stride, int64_t q0, int32_t* out) {
  __m512i w[6];
  for (int l = 0; l < 6; ++l) w[l] = _mm512_loadu_si512(runs + l * stride + 2 * q0);
  // u[2 * p + h]: pairs 8h .. 8h + 7 of lanes 2p, 2p + 1, as (lane 2p, lane
  // 2p + 1) units.
  const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                      24, 8);
  __m512i u[6];
  for (int p = 0; p < 3; ++p) {
    u[2 * p] = _mm512_permutex2var_epi32(w[2 * p], lo, w[2 * p + 1]);
    u[2 * p + 1] = _mm512_permutex2var_epi32(w[2 * p], hi, w[2 * p + 1]);
  }
  // Output vector v of a half (units 8v .. 8v + 7 of the stream A0 B0 C0 A1
  // B1 C1 ..., A = u[h], B = u[2 + h], C = u[4 + h]): unit e is A, B or C of
  // pair (8v + e) / 3.  A and B first (indices 0-7 A, 8-15 B), then C.
  for (int h = 0; h < 2; ++h) {
    const __m512i a = u[h], b = u[2 + h], c = u[4 + h];
    for (int v = 0; v < 3; ++v) {
      alignas(64) int64_t ab_index[8], c_index[8];
      __mmask8 c_lanes = 0;
      for (int e = 0; e < 8; ++e) {
        const int unit = 8 * v + e, pair = unit / 3, which = unit % 3;
        ab_index[e] = which == 0 ? pair : 8 + pair;
        c_index[e] = pair;
        if (which == 2) c_lanes |= static_cast<__mmask8>(1u << e);
      }
      const __m512i ab = _mm512_permutex2var_epi64(a, _mm512_load_si512(ab_index), b);
      const __m512i abc = _mm512_mask_permutexvar_epi64(ab, c_lanes, _mm512_load_si512(c_index), c);
      _mm512_storeu_si512(out + (h * 3 + v) * 16, abc);
    }
  }
}
#endif

// Short spans (a CNN's first layers: C = 1 .. 3 channels, kw = 3 .. 5): with
// no dilation along the width (dw = 1, lw = 1) the kw * C columns of a kernel
// row (t, i) of a patch row are one contiguous span of the input row, at most
// kMaxSpan floats here.  Gathered one span at a time (one or two masked loads
// on AVX-512) instead of ForEachPatchRun's kw runs of C floats, and the
// pixels counted by Advance instead of divided out per row: with C = 1 the
// per-run work and PixelOfRow / ColumnOf's divisions were most of the
// packing time of the CNN's first layer.
constexpr int64_t kMaxSpan = 32;

inline bool HasShortSpans(const ConvGather& g) {
  return g.dw == 1 && g.lw == 1 && g.kw * g.channels <= kMaxSpan;
}

// n (1 .. kMaxSpan) contiguous floats from src into out.  AVX-512 writes
// whole vectors (the buffers have kMaxSpan floats of slack, and the spans are
// written in order, so the next one overwrites what lies past n), and reads
// whole vectors where they end before `end` (the end of the input): masked
// loads were most of the gather's time on Zen 4, and masked stores a third.
inline void CopySpan(const float* src, int64_t n, const float* end, float* out) {
#if TF_LOWPREC_DFP_VNNI
  if (end - src >= 32) {
    _mm512_storeu_ps(out, _mm512_loadu_ps(src));
    if (n > 16) _mm512_storeu_ps(out + 16, _mm512_loadu_ps(src + 16));
    return;
  }
  const __mmask16 m0 = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
  _mm512_storeu_ps(out, _mm512_maskz_loadu_ps(m0, src));
  if (n > 16) {
    const __mmask16 m1 = static_cast<__mmask16>((1u << (n - 16)) - 1);
    _mm512_storeu_ps(out + 16, _mm512_maskz_loadu_ps(m1, src + 16));
  }
#else
  (void)end;
  for (int64_t e = 0; e < n; ++e) out[e] = src[e];
#endif
}

// The patch rows of `lanes` consecutive pixels from px (HasShortSpans(g)),
// lane l's K columns into values + l * stride: GatherPatchRow's values
// (zeros for padding and for the holes of an input dilated along the height
// or depth).
inline void GatherShortSpanRows(const ConvGather& g, PatchPixel px, int64_t lanes,
                                int64_t stride, float* values) {
  const int64_t c = g.channels, span = g.kw * c;
  const int64_t row_floats = g.width * c, plane_floats = g.height * row_floats;
  const float* end = g.input + g.batch * g.depth * plane_floats;
#if TF_LOWPREC_DFP_VNNI
  // Six pixels of one output row, stride 1, away from the padding, with
  // their windows (5 + kw) * C within two vectors and spans within one (C =
  // 1: kw <= 16; C = 2: kw <= 8; C = 3: kw <= 5; C = 4: kw <= 3): the windows
  // overlap, so one or two loads of each input row give all six spans,
  // shifted by permutes (six unaligned loads of the same lines were most of
  // the gather's time).
  const int64_t x0 = px.x - g.pad_left;
  if (lanes == 6 && g.sw == 1 && px.x + 6 <= g.out_w && (5 + g.kw) * c <= 32 && span <= 16 &&
      x0 >= 0 && x0 + 5 + g.kw <= g.width) {
    const int64_t z0 = px.z * g.sd - g.pad_front, y0 = px.y * g.sh - g.pad_top;
    const int64_t n = (5 + g.kw) * c;
    const float* image = g.input + px.b * g.depth * plane_floats;
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // Lane l's span: window elements l * C .. l * C + span - 1 (< n <= 32;
    // the indices past the span, taken mod 32, fill the slack).
    __m512i shift[6];
    for (int l = 0; l < 6; ++l) shift[l] = _mm512_add_epi32(iota, _mm512_set1_epi32(l * c));
    const __mmask16 span_mask = static_cast<__mmask16>((1u << span) - 1);  // span <= 16
    const __mmask16 live0 = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
    const __mmask16 live1 = n > 16 ? static_cast<__mmask16>((1u << (n - 16)) - 1) : 0;
    float* o = values;
    for (int64_t t = 0; t < g.kd; ++t) {
      int64_t zz = z0 + t * g.dd;
      const bool plane_in = zz >= 0 && OnInputGrid(&zz, g.ld) && zz < g.depth;
      for (int64_t i = 0; i < g.kh; ++i, o += span) {
        int64_t yy = y0 + i * g.dh;
        __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();  // (padding rows: zeros)
        if (plane_in && yy >= 0 && OnInputGrid(&yy, g.lh) && yy < g.height) {
          const float* src = image + zz * plane_floats + yy * row_floats + x0 * c;
          if (end - src >= 32) {
            lo = _mm512_loadu_ps(src);
            if (n > 16) hi = _mm512_loadu_ps(src + 16);
          } else {
            lo = _mm512_maskz_loadu_ps(live0, src);
            hi = _mm512_maskz_loadu_ps(live1, src + 16);
          }
        }
        // Whole vectors where they end inside the lane (the next tap rows
        // overwrite the rest), else masked: the next lane is written.
        if ((o - values) + 16 <= stride) {
          for (int l = 0; l < 6; ++l) {
            _mm512_storeu_ps(o + l * stride, _mm512_permutex2var_ps(lo, shift[l], hi));
          }
        } else {
          for (int l = 0; l < 6; ++l) {
            _mm512_mask_storeu_ps(o + l * stride, span_mask,
                                  _mm512_permutex2var_ps(lo, shift[l], hi));
          }
        }
      }
    }
    return;
  }
#endif
  for (int64_t l = 0; l < lanes; ++l, Advance(g, &px)) {
    const int64_t z0 = px.z * g.sd - g.pad_front;
    const int64_t y0 = px.y * g.sh - g.pad_top;
    const int64_t x0 = px.x * g.sw - g.pad_left;
    // Taps j in [j_lo, j_hi) read the input; the others are padding.
    const int64_t j_lo = x0 < 0 ? Min64(-x0, g.kw) : 0;
    const int64_t j_hi = Max64(j_lo, Min64(g.kw, g.width - x0));
    const bool interior = j_lo == 0 && j_hi == g.kw;
    const float* image = g.input + px.b * g.depth * plane_floats;
    float* o = values + l * stride;
    for (int64_t t = 0; t < g.kd; ++t) {
      int64_t zz = z0 + t * g.dd;
      const bool plane_in = zz >= 0 && OnInputGrid(&zz, g.ld) && zz < g.depth;
      for (int64_t i = 0; i < g.kh; ++i, o += span) {
        int64_t yy = y0 + i * g.dh;
        if (!plane_in || yy < 0 || !OnInputGrid(&yy, g.lh) || yy >= g.height) {
          for (int64_t e = 0; e < span; ++e) o[e] = 0.0f;
          continue;
        }
        const float* row = image + zz * plane_floats + yy * row_floats;
        if (interior) {
          CopySpan(row + x0 * c, span, end, o);
          continue;
        }
        for (int64_t e = 0; e < j_lo * c; ++e) o[e] = 0.0f;
        if (j_hi > j_lo) CopySpan(row + (x0 + j_lo) * c, (j_hi - j_lo) * c, end, o + j_lo * c);
        for (int64_t e = j_hi * c; e < span; ++e) o[e] = 0.0f;  // (after CopySpan's slack)
      }
    }
  }
}

#if TF_LOWPREC_DFP_VNNI
// Where each int16 of a panel of six pixels of one output row comes from in
// PackRowWindows: (K column r of lane l) = (window r / span, element l * C +
// r % span), windows 16 int16 apart in two vectors; 0 (mask bit clear) for
// the zero high half of an odd K's last pair.  Built once per shape and
// thread (the shape rarely changes between panels).
struct RowWindowIndex {
  static constexpr int kMaxVectors = 9;  // 12 * ceil(K / 2) int16, K <= 4 * 11
  int64_t c = -1, span = -1, k = -1, vectors = 0, last = 0;  // last: int16 in the last vector
  alignas(64) int16_t index[kMaxVectors][32];
  __mmask32 nonzero[kMaxVectors];
};

inline const RowWindowIndex& RowWindowIndexFor(int64_t c, int64_t span, int64_t k) {
  static thread_local RowWindowIndex cache;
  if (cache.c == c && cache.span == span && cache.k == k) return cache;
  const int64_t halves = 12 * ((k + 1) / 2);
  cache.c = c;
  cache.span = span;
  cache.k = k;
  cache.vectors = CeilDiv(halves, 32);
  cache.last = halves - 32 * (cache.vectors - 1);
  for (int64_t v = 0; v < cache.vectors; ++v) {
    cache.nonzero[v] = 0;
    for (int64_t e = 0; e < 32; ++e) {
      const int64_t j = 32 * v + e, word = j / 2, q = word / 6, l = word % 6, r = 2 * q + j % 2;
      const bool live = j < halves && r < k;
      cache.index[v][e] = live ? static_cast<int16_t>(16 * (r / span) + l * c + r % span) : 0;
      if (live) cache.nonzero[v] |= static_cast<__mmask32>(1u << e);
    }
  }
  return cache;
}

// Whether PackRowWindows can apply to g's panels: stride 1 and no dilation
// along the width, six pixels' windows (6 + kw - 1) * C within one vector,
// at most 4 kernel rows (C = 1 3x3: 3 windows of 8 floats).
inline bool RowWindowsFit(const ConvGather& g) {
  return g.sw == 1 && g.dw == 1 && g.lw == 1 && (5 + g.kw) * g.channels <= 16 &&
         g.kd * g.kh <= 4;
}

// PackPatchRows of six pixels of one output row from px (RowWindowsFit(g)),
// away from the padding along the width: each input value is converted once,
// in its window, and the pair words are permutes of the windows' mantissas
// (no float buffer, no scatter of words).  Returns false, having written
// nothing, where the pixels do not fit or a window holds a NaN, an Inf or an
// invalid value (those take the buffered path, which counts and marks them
// per patch value).

inline bool PackRowWindows(const ConvGather& g, const PatchPixel& px, float s1, float s2,
                           float bound, bool round, int64_t k, int32_t* panel) {
  const int64_t c = g.channels, n = (5 + g.kw) * c;  // (RowWindowsFit(g))
  const int64_t x0 = px.x - g.pad_left;
  if (px.x + 6 > g.out_w || x0 < 0 || x0 + 5 + g.kw > g.width) return false;
  const int64_t row_floats = g.width * c, plane_floats = g.height * row_floats;
  const float* end = g.input + g.batch * g.depth * plane_floats;
  const float* image = g.input + px.b * g.depth * plane_floats;
  const int64_t z0 = px.z * g.sd - g.pad_front, y0 = px.y * g.sh - g.pad_top;
  const __mmask16 live = static_cast<__mmask16>((1u << n) - 1);
  const __m512 a = _mm512_set1_ps(s1), b = _mm512_set1_ps(s2);
  const __m512 hi_clamp = _mm512_set1_ps(bound);
  const __m512 lo_clamp = _mm512_sub_ps(_mm512_setzero_ps(), hi_clamp);
  __m512i m[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                  _mm512_setzero_si512()};
  __mmask16 wrong = 0;
  int w = 0;
  for (int64_t t = 0; t < g.kd; ++t) {
    int64_t zz = z0 + t * g.dd;
    const bool plane_in = zz >= 0 && OnInputGrid(&zz, g.ld) && zz < g.depth;
    for (int64_t i = 0; i < g.kh; ++i, ++w) {
      int64_t yy = y0 + i * g.dh;
      if (!plane_in || yy < 0 || !OnInputGrid(&yy, g.lh) || yy >= g.height) continue;  // zeros
      const float* src = image + zz * plane_floats + yy * row_floats + x0 * c;
      const __m512 y = end - src >= 16 ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(live, src);
      // ConvertOneScale's conversion (the same mantissas).
      wrong |= _mm512_fpclass_ps_mask(y, 0x99);  // NaN or Inf
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(y, a), b);
      const __m512 clamped = _mm512_min_ps(_mm512_max_ps(v, lo_clamp), hi_clamp);
      m[w] = round ? _mm512_cvt_roundps_epi32(clamped,
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
                   : _mm512_cvttps_epi32(clamped);
      if (!round) wrong |= _mm512_cmp_ps_mask(_mm512_cvtepi32_ps(m[w]), v, _CMP_NEQ_UQ);
      wrong |= _mm512_cmpgt_epi32_mask(_mm512_abs_epi32(m[w]), _mm512_set1_epi32(kMaxMantissa));
    }
  }
  if ((wrong & live) != 0) return false;
  const __m512i low_words = _mm512_set_epi16(
      62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32,
      30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  // Window w's int16 mantissas at 16 * w of (lo, hi).
  const __m512i lo = _mm512_permutex2var_epi16(m[0], low_words, m[1]);
  const __m512i hi = _mm512_permutex2var_epi16(m[2], low_words, m[3]);
  const RowWindowIndex& index = RowWindowIndexFor(c, g.kw * c, k);
  int16_t* out = reinterpret_cast<int16_t*>(panel);
  for (int64_t v = 0; v < index.vectors; ++v) {
    const __m512i words = _mm512_maskz_permutex2var_epi16(
        index.nonzero[v], lo, _mm512_load_si512(index.index[v]), hi);
    if (v + 1 < index.vectors) {
      _mm512_storeu_si512(out + 32 * v, words);
    } else {
      _mm512_mask_storeu_epi16(out + 32 * v,
                               static_cast<__mmask32>((uint64_t{1} << index.last) - 1), words);
    }
  }
  return true;
}
#endif

// PackPanel<kWidth> of rows [lane0, lane0 + lanes) of the patch matrix g
// (the operand a of a forward convolution: lanes are output pixels, K is
// (t, i, j, c)).  src gives the exponent and the rounding only.
template <int kWidth>
int64_t PackPatchRows(const ConvGather& g, const OperandView& src, const BlockLayout& layout,
                      int64_t lane0, int64_t lanes, int32_t* panel, uint8_t* nonfinite,
                      const int16_t* image = nullptr) {
  if (lanes % kWidth != 0) {
    std::memset(panel, 0, sizeof(int32_t) * layout.total_pairs * kWidth);
  }
  if (layout.blocks == 0) return 0;
  int32_t scale_invalid = 0;
  float s1, s2, bound;
  ScaleFactors(src.exponents[0], &s1, &s2, &bound, &scale_invalid);
  const int64_t k = layout.k;
  int64_t invalid = 0;
  constexpr int64_t kRun = kPatchRunValues;  // values converted at a time (even)
  alignas(64) int16_t run[kRun + 2];
#if TF_LOWPREC_DFP_VNNI
  if (kWidth == 6 && lanes == 6 && layout.blocks == 1 && RowWindowsFit(g) &&
      PackRowWindows(g, PixelOfRow(g, lane0), s1, s2, bound, src.round, k, panel)) {
    return scale_invalid;
  }
#endif
  const int64_t k_even = k + k % 2;  // a lane's values in the short-K buffer
  if (lanes * k_even <= kRun) {
    // Short K (a CNN's first layers: K = 9 .. 170, runs of 1 .. 3
    // channels): all lanes gathered, then converted in one run.  Each lane
    // takes an even number of values (odd K: one zero after the row, whose
    // mantissa 0 is the last pair's zero high half), so that its mantissas
    // read as int32 are its pair words.
    alignas(64) float values[kRun + kMaxSpan];  // (CopySpan's slack)
    if (HasShortSpans(g)) {
      GatherShortSpanRows(g, PixelOfRow(g, lane0), lanes, k_even, values);
    } else {
      PatchPixel px = PixelOfRow(g, lane0);
      for (int64_t l = 0; l < lanes; ++l, Advance(g, &px)) {
        GatherPatchColumns(g, px, PatchColumn(), k, values + l * k_even);
      }
    }
    if (k_even != k) {
      for (int64_t l = 0; l < lanes; ++l) values[l * k_even + k] = 0.0f;
    }
    int32_t nf = 0;
    invalid += ConvertValues(values, lanes * k_even, &s1, &s2, &bound, src.round, run, &nf);
    for (int64_t l = 0; l < lanes; ++l) {
      ScatterPairs<kWidth>(run + l * k_even, k_even, panel + l);
      if (nf) {  // rare: find which lanes
        for (int64_t i = 0; i < k; ++i) nonfinite[l] |= NonFinite(values[l * k_even + i]) ? 1 : 0;
      }
    }
    return invalid + scale_invalid;
  }
  // Long K: each run of contiguous channels converted straight from x into
  // the lane's mantissas (no float copy of the patch row), padding as zero
  // mantissas, or copied from the image of x's mantissas where the driver
  // made one (dfp_gemm_driver.h, WantsInputImage).  Runs shorter than a
  // vector take the scalar conversion (the same values).
  auto convert_lane = [&](const PatchPixel& px, int64_t r0, int64_t n, int16_t* out,
                          int32_t* nf) {
    ForEachPatchRun(g, px, ColumnOf(g, r0), n, [&](int64_t offset, const float* x, int64_t len) {
      if (x == nullptr) {
        std::memset(out + offset, 0, sizeof(int16_t) * len);
      } else if (image != nullptr) {
        std::memcpy(out + offset, image + (x - g.input), sizeof(int16_t) * len);
      } else if (len < 8) {
        invalid += ConvertRun(x, 1, len, &s1, &s2, &bound, 0, src.round, out + offset, nf);
      } else {
        invalid += ConvertValues(x, len, &s1, &s2, &bound, src.round, out + offset, nf);
      }
    });
    out[n] = 0;  // odd n: the last pair's high half is zero padding
  };
#if TF_LOWPREC_DFP_VNNI
  if (kWidth == 6) {
    // All lanes' mantissas first, then the pair words written 16 pairs of
    // the 6 lanes (96 consecutive words) at a time through registers
    // (InterleaveSixLanes) instead of one 4-byte store per word, which was
    // a third of the packing time.
    constexpr int64_t kStride = kRun + 32;  // int16 per lane (whole vectors)
    alignas(64) int16_t lane_runs[6 * kStride];
    int32_t nf[6] = {};
    for (int64_t r0 = 0; r0 < k; r0 += kRun) {
      const int64_t n = Min64(kRun, k - r0), pairs = (n + 1) / 2;
      PatchPixel px = PixelOfRow(g, lane0);
      for (int64_t l = 0; l < 6; ++l) {
        if (l < lanes) {
          convert_lane(px, r0, n, lane_runs + l * kStride, &nf[l]);
          Advance(g, &px);
        } else {
          std::memset(lane_runs + l * kStride, 0, sizeof(int16_t) * (n + 1));
        }
      }
      int32_t* o = panel + (r0 / 2) * 6;
      int64_t q = 0;
      for (; q + 16 <= pairs; q += 16) InterleaveSixLanes(lane_runs, kStride, q, o + q * 6);
      for (; q < pairs; ++q) {
        for (int64_t l = 0; l < 6; ++l) std::memcpy(o + q * 6 + l, lane_runs + l * kStride + 2 * q, 4);
      }
    }
    for (int64_t l = 0; l < lanes; ++l) nonfinite[l] |= nf[l] ? 1 : 0;
    return invalid + scale_invalid;
  }
#endif
  PatchPixel px = PixelOfRow(g, lane0);
  for (int64_t l = 0; l < lanes; ++l, Advance(g, &px)) {
    int32_t nf = 0;
    for (int64_t r0 = 0; r0 < k; r0 += kRun) {
      const int64_t n = Min64(kRun, k - r0);
      convert_lane(px, r0, n, run, &nf);
      ScatterPairs<kWidth>(run, n, panel + (r0 / 2) * kWidth + l);
    }
    nonfinite[l] |= nf ? 1 : 0;
  }
  return invalid + scale_invalid;
}

// PackPanels<kWidth, kGroup> of columns [lane0, lane0 + lanes) of the patch
// matrix g (the operand b of a filter gradient, or, 6 lanes a panel, its
// transpose as a: lanes are (t, i, j, c), K the output pixels from pixel0
// on): two patch rows gathered, converted and interleaved into pair words
// per K pair.
template <int kWidth, int kGroup>
int64_t PackPatchColumns(const ConvGather& g, const OperandView& src, const BlockLayout& layout,
                         int64_t lane0, int64_t lanes, int32_t* panel, int64_t panel_words,
                         uint8_t* nonfinite, int64_t pixel0 = 0) {
  constexpr int kLanes = kWidth * kGroup;
  const int64_t panels = CeilDiv(lanes, kWidth);
  if (lanes % kWidth != 0) {
    std::memset(panel + (panels - 1) * panel_words, 0,
                sizeof(int32_t) * layout.total_pairs * kWidth);
  }
  if (layout.blocks == 0) return 0;
  int32_t scale_invalid = 0;
  float s1, s2, bound;
  ScaleFactors(src.exponents[0], &s1, &s2, &bound, &scale_invalid);
  const int64_t k = layout.k;
  int64_t invalid = 0;
  // Each patch row's runs of channels are converted straight from x (no
  // float copy); a row with a NaN or Inf is gathered again to find its lanes.
  alignas(64) int16_t lo[kLanes + 32], hi[kLanes + 32];
  const PatchColumn col0 = ColumnOf(g, lane0);
  auto convert_row = [&](const PatchPixel& px, int16_t* out, int32_t* nf) {
    ForEachPatchRun(g, px, col0, lanes, [&](int64_t offset, const float* x, int64_t len) {
      if (x == nullptr) {
        std::memset(out + offset, 0, sizeof(int16_t) * len);
      } else if (len < 8) {
        invalid += ConvertRun(x, 1, len, &s1, &s2, &bound, 0, src.round, out + offset, nf);
      } else {
        invalid += ConvertValues(x, len, &s1, &s2, &bound, src.round, out + offset, nf);
      }
    });
  };
  PatchPixel px = k > 0 ? PixelOfRow(g, pixel0) : PatchPixel();
  for (int64_t kk = 0; kk < k; kk += 2) {
    int32_t nf = 0;
    const PatchPixel px0 = px;
    convert_row(px0, lo, &nf);
    Advance(g, &px);
    const bool second = kk + 1 < k;
    if (second) {
      convert_row(px, hi, &nf);
      Advance(g, &px);
    } else {
      for (int64_t l = 0; l < lanes; ++l) hi[l] = 0;  // odd K: zero high halves
    }
    for (int64_t p = 0; p < panels; ++p) {
      int32_t* o = panel + p * panel_words + (kk / 2) * kWidth;
      const int16_t* plo = lo + p * kWidth;
      const int16_t* phi = hi + p * kWidth;
      const int64_t plane = Min64(kWidth, lanes - p * kWidth);
      JoinPairWords(plo, phi, plane, o);
    }
    if (nf) {  // rare: find which lanes
      alignas(64) float f[kLanes];
      GatherPatchColumns(g, px0, col0, lanes, f);
      for (int64_t l = 0; l < lanes; ++l) nonfinite[l] |= NonFinite(f[l]) ? 1 : 0;
      if (second) {
        PatchPixel px1 = px0;
        Advance(g, &px1);
        GatherPatchColumns(g, px1, col0, lanes, f);
        for (int64_t l = 0; l < lanes; ++l) nonfinite[l] |= NonFinite(f[l]) ? 1 : 0;
      }
    }
  }
  return invalid + scale_invalid;
}

// Column `col` of the patch matrix g over n consecutive patch rows (output
// pixels) from `px` on, into out: one output row (b, z, y) at a time, whose
// pixels read one input row at x * sw + j * dw - pad_left, i.e. a strided
// run of the input (contiguous for C = 1 and stride 1), zeros outside it
// (+0, as im2col pads) and in an input dilation's holes.
inline void GatherPatchColumnAlongPixels(const ConvGather& g, const PatchPixel& px,
                                         const PatchColumn& col, int64_t n, float* out) {
  PatchPixel p = px;
  const int64_t off = col.j * g.dw - g.pad_left;  // input column of pixel x: x * sw + off
  const int64_t step = g.sw * g.channels;
  for (int64_t done = 0; done < n;) {
    const int64_t len = Min64(g.out_w - p.x, n - done);
    float* o = out + done;
    int64_t zz = p.z * g.sd + col.t * g.dd - g.pad_front;
    int64_t yy = p.y * g.sh + col.i * g.dh - g.pad_top;
    const bool row_inside = zz >= 0 && yy >= 0 && OnInputGrid(&zz, g.ld) &&
                            OnInputGrid(&yy, g.lh) && zz < g.depth && yy < g.height;
    if (!row_inside) {
      for (int64_t e = 0; e < len; ++e) o[e] = 0.0f;
    } else {
      const float* row =
          g.input + ((((p.b * g.depth + zz) * g.height + yy) * g.width) * g.channels) + col.c;
      if (g.lw == 1) {
        // Pixels [lo, hi) of the row read inside the input (clamped to the
        // segment [p.x, p.x + len)).
        const int64_t first = off >= 0 ? 0 : CeilDiv(-off, g.sw);
        const int64_t past = g.width - off <= 0 ? 0 : CeilDiv(g.width - off, g.sw);
        const int64_t lo = Min64(Max64(first, p.x), p.x + len) - p.x;
        const int64_t hi = Max64(Min64(past, p.x + len), p.x + lo) - p.x;
        for (int64_t e = 0; e < lo; ++e) o[e] = 0.0f;
        const float* src = row + ((p.x + lo) * g.sw + off) * g.channels;
        if (step == 1) {
          std::memcpy(o + lo, src, sizeof(float) * (hi - lo));
        } else {
          for (int64_t e = lo; e < hi; ++e) o[e] = src[(e - lo) * step];
        }
        for (int64_t e = hi; e < len; ++e) o[e] = 0.0f;
      } else {
        for (int64_t e = 0; e < len; ++e) {
          int64_t xx = (p.x + e) * g.sw + off;
          const bool inside = xx >= 0 && OnInputGrid(&xx, g.lw) && xx < g.width;
          o[e] = inside ? row[xx * g.channels] : 0.0f;
        }
      }
    }
    done += len;
    p.x += len - 1;  // the row's last pixel, then on to the next row
    Advance(g, &p);
  }
}

// PackPanels<kWidth> of rows [lane0, lane0 + lanes) of the TRANSPOSED patch
// matrix g^T [columns, pixels] (the operand a of a filter gradient computed
// as patches^T @ dy: lanes are patch columns (t, i, j, c), K the output
// pixels), for few input channels: each lane's K run gathered along the
// pixels (GatherPatchColumnAlongPixels: a strided copy per output row), then
// converted as one contiguous run, instead of one run of C channels per
// pixel (PackPatchColumns, which took 4 scalar conversions of one channel
// per pixel pair for the CNN's first layer).  The same mantissas, pair
// words, NaN lanes and invalid counts as PackPanels on g^T written out.
// K starts at pixel pixel0 (a slice of K; layout is the slice's).
template <int kWidth>
int64_t PackPatchColumnsAlongPixels(const ConvGather& g, const OperandView& src,
                                    const BlockLayout& layout, int64_t lane0, int64_t lanes,
                                    int32_t* panel, uint8_t* nonfinite, int64_t pixel0 = 0) {
  if (lanes % kWidth != 0) {
    std::memset(panel, 0, sizeof(int32_t) * layout.total_pairs * kWidth);
  }
  if (layout.blocks == 0) return 0;
  int32_t scale_invalid = 0;
  float s1, s2, bound;
  ScaleFactors(src.exponents[0], &s1, &s2, &bound, &scale_invalid);
  const int64_t k = layout.k;
  int64_t invalid = 0;
  constexpr int64_t kRun = 1024;           // pixels converted at a time (even)
  constexpr int64_t kStride = kRun + 32;   // int16 per lane (whole vectors)
  alignas(64) float values[kRun];
  alignas(64) int16_t lane_runs[kWidth * kStride];
  PatchColumn cols[kWidth];
  for (int64_t l = 0; l < lanes; ++l) cols[l] = ColumnOf(g, lane0 + l);
  int32_t nf[kWidth] = {};
  for (int64_t r0 = 0; r0 < k; r0 += kRun) {
    const int64_t n = Min64(kRun, k - r0), pairs = (n + 1) / 2;
    const PatchPixel px = PixelOfRow(g, pixel0 + r0);
    for (int64_t l = 0; l < kWidth; ++l) {
      int16_t* run = lane_runs + l * kStride;
      if (l < lanes) {
        GatherPatchColumnAlongPixels(g, px, cols[l], n, values);
        invalid += ConvertValues(values, n, &s1, &s2, &bound, src.round, run, &nf[l]);
      } else {
        std::memset(run, 0, sizeof(int16_t) * n);
      }
      run[n] = 0;  // odd n: the last pair's high half is zero padding
    }
    int32_t* o = panel + (r0 / 2) * kWidth;
    int64_t q = 0;
#if TF_LOWPREC_DFP_VNNI
    if (kWidth == 6) {
      for (; q + 16 <= pairs; q += 16) InterleaveSixLanes(lane_runs, kStride, q, o + q * 6);
    }
#endif
    for (; q < pairs; ++q) {
      for (int64_t l = 0; l < lanes; ++l) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        std::memcpy(o + q * kWidth + l, lane_runs + l * kStride + 2 * q, 4);
#else
        o[q * kWidth + l] = PairWord(lane_runs[l * kStride + 2 * q],
                                     lane_runs[l * kStride + 2 * q + 1]);
#endif
      }
    }
  }
  for (int64_t l = 0; l < lanes; ++l) nonfinite[l] |= nf[l] ? 1 : 0;
  return invalid + scale_invalid;
}

#if TF_LOWPREC_DFP_VNNI
// PackPatchColumns<kWidth, kGroup> for the VNNI tier, 6-lane panels of the
// transposed patch matrix (many input channels): per pixel pair, each run
// of channels of the two patch rows converted 16 columns at a time straight
// from x into int32 mantissas (ConvertOneScale's conversion: the same
// values and counts), joined into pair words in registers, then 6 words
// copied to each panel.  PackPatchColumns' int16 rows, stored, reloaded and
// widened per panel, made the 48-column groups of the CNN's second layer
// cost twice the 96-column B groups of the other orientation.
template <int kWidth, int kGroup>
int64_t PackPatchColumnsDirect(const ConvGather& g, const OperandView& src,
                               const BlockLayout& layout, int64_t lane0, int64_t lanes,
                               int32_t* panel, int64_t panel_words, uint8_t* nonfinite,
                               int64_t pixel0, const int16_t* image = nullptr) {
  constexpr int kLanes = kWidth * kGroup;
  static_assert(kWidth <= 16, "a panel's words are copied with one masked vector");
  const int64_t panels = CeilDiv(lanes, kWidth);
  if (layout.blocks == 0) {
    if (lanes % kWidth != 0) {
      std::memset(panel + (panels - 1) * panel_words, 0,
                  sizeof(int32_t) * layout.total_pairs * kWidth);
    }
    return 0;
  }
  int32_t scale_invalid = 0;
  float s1, s2, bound;
  ScaleFactors(src.exponents[0], &s1, &s2, &bound, &scale_invalid);
  const MantissaScale sc(s1, s2, bound, src.round);
  const __m512i low_half = _mm512_set1_epi32(0xFFFF);
  int64_t invalid = 0;
  alignas(64) uint8_t lane_nf[kLanes + 16] = {};
  // Mantissas of the live lanes of y (columns at..at + 15).
  auto convert = [&](__m512 y, __mmask16 live, int64_t at) {
    __mmask16 bad, wrong;
    const __m512i m = Mantissas(y, live, sc, &bad, &wrong);
    if (bad) {  // rare
      for (int e = 0; e < 16; ++e) lane_nf[at + e] |= (bad >> e) & 1;
    }
    invalid += __builtin_popcount(static_cast<unsigned>(wrong));
    return m;
  };
  // The pair words of one K pair, zero past `lanes` (a partial last panel).
  alignas(64) int32_t words[kLanes + 16] = {};
  constexpr int kMaxRuns = kLanes + 1;  // (runs of at least one channel)
  const float* even_src[kMaxRuns];
  const float* odd_src[kMaxRuns];
  int64_t run_at[kMaxRuns], run_len[kMaxRuns];
  const PatchColumn col0 = ColumnOf(g, lane0);
  const int64_t k = layout.k;
  PatchPixel px = PixelOfRow(g, pixel0);
  for (int64_t kk = 0; kk < k; kk += 2) {
    int runs = 0;
    ForEachPatchRun(g, px, col0, lanes, [&](int64_t offset, const float* x, int64_t len) {
      run_at[runs] = offset;
      run_len[runs] = len;
      even_src[runs++] = x;
    });
    Advance(g, &px);
    const bool second = kk + 1 < k;
    if (second) {
      int r = 0;
      ForEachPatchRun(g, px, col0, lanes,
                      [&](int64_t, const float* x, int64_t) { odd_src[r++] = x; });
      Advance(g, &px);
    }
    for (int r = 0; r < runs; ++r) {
      const float* e = even_src[r];
      const float* o = second ? odd_src[r] : nullptr;
      for (int64_t v = 0; v < run_len[r]; v += 16) {
        const int64_t at = run_at[r] + v, n = run_len[r] - v;
        const __mmask16 live = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
        // From the int16 image of x's mantissas where the driver made one
        // (WantsInputImage: the same values), else converted here.
        auto mantissas = [&](const float* x) {
          if (x == nullptr) return _mm512_setzero_si512();
          if (image != nullptr) {
            return _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(live, image + (x - g.input) + v));
          }
          return convert(_mm512_maskz_loadu_ps(live, x + v), live, at);
        };
        const __m512i lo_m = mantissas(e);
        const __m512i hi_m = mantissas(o);
        _mm512_mask_storeu_epi32(words + at, live,
                                 _mm512_or_si512(_mm512_and_si512(lo_m, low_half),
                                                 _mm512_slli_epi32(hi_m, 16)));
      }
    }
    constexpr __mmask16 kPanelLanes = static_cast<__mmask16>((1u << kWidth) - 1);
    for (int64_t p = 0; p < panels; ++p) {
      _mm512_mask_storeu_epi32(panel + p * panel_words + (kk / 2) * kWidth, kPanelLanes,
                               _mm512_maskz_loadu_epi32(kPanelLanes, words + p * kWidth));
    }
  }
  for (int64_t l = 0; l < lanes; ++l) nonfinite[l] |= lane_nf[l];
  return invalid + scale_invalid;
}
#endif

}  // namespace
}  // namespace TF_LOWPREC_DFP_ISA
}  // namespace dfp_gemm
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_DFP_GEMM_CONV_PACK_H_
