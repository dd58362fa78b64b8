// Loops of the block-scaled conversion (OCP MX, NVFP4), one copy per
// instruction set: a part of rounding_loops_impl.h, included by it inside
// tf_lowprec::TF_LOWPREC_ISA's anonymous namespace (after its random-word
// helpers, which the stochastic rounding here shares), with every standard
// header it needs already included there.  The steps are block_scaling.h's
// scalar functions, which the portable and AVX-512 tiers run as they are;
// the AVX2 tier runs them on 8 lanes with intrinsics (the same steps, bit
// for bit: tests/test_block_scaled_kernels.py).
//
// Shape of the work (BlockScaledJob, rounding_loops.h): blocks along the
// last axis (inner == 1) lie in contiguous runs; blocks along another axis
// are handled kBlockColumns columns at a time, each column a block, so that
// a row of the block is a contiguous run of elements with per-column scales.
// Either way an element run is rounded with per-element grid parameters
// (arrays filled from the block parameters; the AVX2 loops of blocks along
// the last axis broadcast each block's instead) and random words drawn for
// aligned chunks of kBlockChunk global element indices.

// Elements per chunk of random words: aligned to this many global indices,
// a chunk lies inside one of the aligned runs that the vector fill
// functions above require (ChunkElements), for half and whole words.
constexpr int64_t kBlockChunk = 256;

// Masked random words (RandomWordOfElement, philox.h) of elements
// [first, first + n) of one aligned chunk, as uint32, whatever the tier.
class ChunkRandomWords {
 public:
  explicit ChunkRandomWords(const RandomStream& random)
      : random_(random)
#if defined(TF_LOWPREC_AVX512_INTRINSICS)
        , keys_(simd::MakePhiloxKeys16(random.philox))
#elif defined(TF_LOWPREC_AVX2_INTRINSICS)
        , keys_(simd_avx2::MakePhiloxKeys8(random.philox))
#endif
  {
  }

  void Fill(int64_t first, int64_t n, uint32_t* words) {
#if defined(TF_LOWPREC_AVX512_INTRINSICS) || defined(TF_LOWPREC_AVX2_INTRINSICS)
#if defined(TF_LOWPREC_AVX512_INTRINSICS)
    const uint8_t* filled = random_.half_words
                                ? FillRandomWords16<true>(random_, keys_, first, n, buffer_)
                                : FillRandomWords16<false>(random_, keys_, first, n, buffer_);
#else
    const uint8_t* filled = random_.half_words
                                ? FillRandomWords8<true>(random_, keys_, first, n, buffer_)
                                : FillRandomWords8<false>(random_, keys_, first, n, buffer_);
#endif
    if (random_.half_words) {
      for (int64_t i = 0; i < n; ++i) {
        uint16_t half;
        std::memcpy(&half, filled + 2 * i, 2);
        words[i] = static_cast<uint32_t>(half) << 16;
      }
    } else {
      std::memcpy(words, filled, 4 * n);
    }
#else
    FillRandomWords(random_, first, n, words);
#endif
  }

 private:
  RandomStream random_;
#if defined(TF_LOWPREC_AVX512_INTRINSICS)
  simd::PhiloxKeys16 keys_;
  alignas(64) uint32_t buffer_[kWordBuffer];
#elif defined(TF_LOWPREC_AVX2_INTRINSICS)
  simd_avx2::PhiloxKeys8 keys_;
  alignas(32) uint32_t buffer_[kWordBuffer];
#endif
};

// Largest finite magnitude (bits) and whether a NaN or Inf occurs, over a
// contiguous run.
struct RunStats {
  uint32_t amax_bits = 0;
  bool nonfinite = false;
};

inline RunStats StatsOfRun(const uint32_t* src, int64_t n) {
  uint32_t amax = 0, nonfinite = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t a = src[i] & kAbsMask;
    nonfinite |= a >= kInfBits ? 1u : 0u;
    const uint32_t finite = a < kInfBits ? a : 0u;
    amax = finite > amax ? finite : amax;
  }
  return {amax, nonfinite != 0};
}

// The same per column j < width over `rows` rows `stride` apart, into
// amax[j] and nonfinite[j] (both reset here).
inline void StatsOfColumns(const uint32_t* src, int64_t rows, int64_t width, int64_t stride,
                           uint32_t* amax, uint32_t* nonfinite) {
  for (int64_t j = 0; j < width; ++j) amax[j] = nonfinite[j] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* row = src + r * stride;
    for (int64_t j = 0; j < width; ++j) {
      const uint32_t a = row[j] & kAbsMask;
      nonfinite[j] |= a >= kInfBits ? 1u : 0u;
      const uint32_t finite = a < kInfBits ? a : 0u;
      amax[j] = finite > amax[j] ? finite : amax[j];
    }
  }
}

// Grid parameters of one block, in the form the element runs read them.
struct BlockParams {
  // E8M0 scales: the shifted element grid.
  int32_t k_min = 0;
  uint32_t limit_bits = 0;
  // Float scales.
  float element_encode = 1.0f;
  double scale = 0.0;
  // Whether the block's elements need the fix-up after the run: it becomes
  // NaN (a non-finite element with nonfinite_blocks "nan"), or it is zero
  // (no non-zero finite element, or a float scale that rounded to 0: every
  // finite element becomes a zero with its sign).
  bool nan_block = false;
  bool zero_block = false;
};

// Parameters and decoded scale (float32 bits) of a block with stats `stats`.
template <bool kFloatScale>
inline BlockParams MakeBlockParams(const BlockScaledSpec& spec, const RunStats& stats,
                                   double encode, uint32_t* scale_bits) {
  BlockParams p;
  p.nan_block = spec.nan_blocks && stats.nonfinite;
  if (kFloatScale) {
    const FloatBlockScale s = MakeFloatBlockScale(spec, stats.amax_bits, encode);
    p.element_encode = s.element_encode;
    p.scale = s.scale;
    p.zero_block = s.scale == 0.0;
    *scale_bits = FloatBits(s.decoded);
  } else {
    const int32_t s = MxSharedExponent(stats.amax_bits, spec.element_max_exponent);
    const ShiftedElementGrid g = MakeShiftedElementGrid(spec, s);
    p.k_min = g.k_min;
    p.limit_bits = g.limit_bits;
    p.zero_block = stats.amax_bits == 0;
    *scale_bits = PowerOfTwoBits(s);
  }
  if (p.nan_block) *scale_bits = kQuietNanBits;
  return p;
}

// Per-element parameter arrays of one run of at most kBlockChunk elements.
struct RunParams {
  alignas(64) int32_t k_min[kBlockChunk];
  alignas(64) uint32_t limit_bits[kBlockChunk];
  alignas(64) float element_encode[kBlockChunk];
  alignas(64) double scale[kBlockChunk];
};

template <bool kFloatScale>
inline void SetRunParams(const BlockParams& p, int64_t begin, int64_t end, RunParams* rp) {
  if (kFloatScale) {
    std::fill(rp->element_encode + begin, rp->element_encode + end, p.element_encode);
    std::fill(rp->scale + begin, rp->scale + end, p.scale);
  } else {
    std::fill(rp->k_min + begin, rp->k_min + end, p.k_min);
    std::fill(rp->limit_bits + begin, rp->limit_bits + end, p.limit_bits);
  }
}

// ---- Element runs: dst[i] from src[i] with element i's parameters ----
// Non-finite elements pass through here (nan blocks are fixed up after).

template <Rounding kRounding>
inline void RoundMxRunScalar(const uint32_t* src, uint32_t* dst, int64_t n,
                             const uint32_t* words, const int32_t* k_min,
                             const uint32_t* limit_bits, const FloatGrid& element) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = src[i];
    const uint32_t word = kRounding == Rounding::kStochastic ? words[i] : 0u;
    dst[i] = (u & kAbsMask) >= kInfBits
                 ? PassThroughNonFinite(u)
                 : RoundToShiftedElement<kRounding>(u, k_min[i], limit_bits[i], element, word);
  }
}

#if defined(TF_LOWPREC_AVX2_INTRINSICS)
// RoundToShiftedElement (block_scaling.h) and the non-finite pass-through
// on 8 lanes.  floor(log2 a) of a float32 subnormal a comes from the
// exponent of the exact integer-to-float conversion of its bits (a < 2^23),
// which flush-to-zero cannot change.
template <Rounding kRounding>
__attribute__((noinline)) __m256i RoundMxVector8Full(__m256i u, __m256i k_min, __m256i limit,
                                                    __m256i word, const FloatGrid& element) {
  using simd_avx2::Select8;
  using simd_avx2::Splat;
  using simd_avx2::SplatInt;
  const __m256i a = _mm256_and_si256(u, Splat(kAbsMask));
  const __m256i sign = _mm256_and_si256(u, Splat(kSignMask));
  const __m256i biased = _mm256_srli_epi32(a, 23);
  const __m256i normal_log2 = _mm256_sub_epi32(biased, SplatInt(127));
  const __m256i subnormal_log2 = _mm256_sub_epi32(
      _mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(a)), 23), SplatInt(127 + 149));
  const __m256i log2 =
      Select8(_mm256_cmpeq_epi32(biased, _mm256_setzero_si256()), subnormal_log2, normal_log2);
  // a == 0 gives log2 = -276 and so k = k_min.
  const __m256i k =
      _mm256_max_epi32(_mm256_sub_epi32(log2, SplatInt(element.mantissa_bits)), k_min);
  __m256i r = simd_avx2::RoundMagnitudeToGrid8<kRounding>(a, k, word);
  r = _mm256_min_epi32(r, limit);
  if (!element.subnormals) {
    // Below 2^(k_min + m) (>= -149): flushed.
    const __m256i e = _mm256_add_epi32(k_min, SplatInt(element.mantissa_bits));
    const __m256i normal_bits =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_max_epi32(e, SplatInt(-126)), SplatInt(127)),
                          23);
    const __m256i subnormal_bits =
        _mm256_sllv_epi32(SplatInt(1), simd_avx2::ClampInt8(_mm256_add_epi32(e, SplatInt(149)),
                                                            0, 31));
    const __m256i min_normal =
        Select8(_mm256_cmpgt_epi32(e, SplatInt(-127)), normal_bits, subnormal_bits);
    r = _mm256_andnot_si256(_mm256_cmpgt_epi32(min_normal, r), r);
  }
  __m256i out = _mm256_or_si256(sign, r);
  if (!element.negative_zero) {
    out = _mm256_andnot_si256(_mm256_cmpeq_epi32(r, _mm256_setzero_si256()), out);
  }
  const __m256i nonfinite = _mm256_cmpgt_epi32(a, Splat(kInfBits - 1u));
  const __m256i nan = _mm256_cmpgt_epi32(a, Splat(kInfBits));
  const __m256i special = Select8(nan, _mm256_or_si256(sign, Splat(kQuietNanBits)), u);
  return Select8(nonfinite, special, out);
}

// The common vectors by shorter forms, else RoundMxVector8Full.  Both need
// every lane finite.  Nearest-even adds and subtracts M = 2^(k + 23) in
// float32 (rounding to nearest even at M's ulp 2^k, tiny lanes included), so
// it needs k <= 103 (no overflow of a + M), k_min >= -125 (every result a
// float32 normal or 0, and a float32 subnormal input, which
// denormals-are-zero would read as 0, is below half a grid step and rounds
// to 0 anyway), and mantissa_bits <= 22 (a < 2^(k + 23)).  Stochastic
// rounding and toward-zero take rounding.h's bias-and-clear of the dropped
// d = k - (floor(log2 a) - 23) bits for normal lanes with d <= 23, and its
// "0 or one step" case for normal lanes below one grid step; zeros give 0.
// Float32 subnormal inputs take the full form.
template <Rounding kRounding>
inline __m256i RoundMxVector8(__m256i u, __m256i k_min, __m256i limit, __m256i word,
                              const FloatGrid& element) {
  using simd_avx2::SplatInt;
  const __m256i a = _mm256_and_si256(u, simd_avx2::Splat(kAbsMask));
  const __m256i biased = _mm256_srli_epi32(a, 23);
  const __m256i log2 = _mm256_sub_epi32(biased, SplatInt(127));  // -127 for 0 and subnormals
  const __m256i k =
      _mm256_max_epi32(_mm256_sub_epi32(log2, SplatInt(element.mantissa_bits)), k_min);
  const __m256i nonfinite = _mm256_cmpgt_epi32(biased, SplatInt(254));
  __m256i r;
  if (kRounding == Rounding::kNearestEven) {
    const __m256i bad = _mm256_or_si256(
        _mm256_or_si256(nonfinite, _mm256_cmpgt_epi32(k, SplatInt(103))),
        _mm256_cmpgt_epi32(SplatInt(-125), k_min));
    if (element.mantissa_bits > 22 || !_mm256_testz_si256(bad, bad)) {
      return RoundMxVector8Full<kRounding>(u, k_min, limit, word, element);
    }
    r = simd_avx2::AddSubtractMagic8(
        a, _mm256_slli_epi32(_mm256_add_epi32(k, SplatInt(150)), 23));
  } else {
    const __m256i d = _mm256_sub_epi32(k, _mm256_sub_epi32(log2, SplatInt(23)));
    const __m256i zero = _mm256_cmpeq_epi32(a, _mm256_setzero_si256());
    const __m256i subnormal =
        _mm256_andnot_si256(zero, _mm256_cmpeq_epi32(biased, _mm256_setzero_si256()));
    const __m256i bad = _mm256_or_si256(nonfinite, subnormal);
    if (!_mm256_testz_si256(bad, bad)) {
      return RoundMxVector8Full<kRounding>(u, k_min, limit, word, element);
    }
    // Zero lanes: d >= 24, and shifts by 32 or more give 0 (keep and term).
    const __m256i keep = _mm256_sllv_epi32(SplatInt(-1), d);
    // Tiny lanes, normal and below one grid step 2^k_min (d >= 24): 0, or
    // 2^k_min when stochastic rounding carries the fraction of a step
    // (rounding.h's "dropped >= 24" case).
    const __m256i tiny = _mm256_andnot_si256(zero, _mm256_cmpgt_epi32(d, SplatInt(23)));
    if (kRounding == Rounding::kStochastic) {
      const __m256i term = _mm256_srlv_epi32(word, _mm256_sub_epi32(SplatInt(32), d));
      r = _mm256_and_si256(_mm256_add_epi32(a, term), keep);
      if (!_mm256_testz_si256(tiny, tiny)) {
        const __m256i significand = _mm256_or_si256(
            _mm256_and_si256(a, simd_avx2::Splat(0x7FFFFFu)), simd_avx2::Splat(0x800000u));
        const __m256i fraction = _mm256_srlv_epi32(
            _mm256_sllv_epi32(significand,
                              simd_avx2::ClampInt8(_mm256_sub_epi32(SplatInt(32), d), 0, 8)),
            simd_avx2::ClampInt8(_mm256_sub_epi32(d, SplatInt(32)), 0, 31));
        const __m256i up = simd_avx2::GreaterUnsigned8(word, _mm256_add_epi32(word, fraction));
        const __m256i step = simd_avx2::Select8(
            _mm256_cmpgt_epi32(k_min, SplatInt(-127)),
            _mm256_slli_epi32(_mm256_add_epi32(_mm256_max_epi32(k_min, SplatInt(-126)),
                                               SplatInt(127)), 23),
            _mm256_sllv_epi32(SplatInt(1), simd_avx2::ClampInt8(
                                               _mm256_add_epi32(k_min, SplatInt(149)), 0, 31)));
        r = simd_avx2::Select8(tiny, _mm256_and_si256(up, step), r);
      }
    } else {
      r = _mm256_andnot_si256(tiny, _mm256_and_si256(a, keep));
    }
  }
  r = _mm256_min_epi32(r, limit);
  if (!element.subnormals) {
    const __m256i e = _mm256_add_epi32(k_min, SplatInt(element.mantissa_bits));
    const __m256i normal_bits =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_max_epi32(e, SplatInt(-126)), SplatInt(127)),
                          23);
    const __m256i subnormal_bits =
        _mm256_sllv_epi32(SplatInt(1), simd_avx2::ClampInt8(_mm256_add_epi32(e, SplatInt(149)),
                                                            0, 31));
    const __m256i min_normal =
        simd_avx2::Select8(_mm256_cmpgt_epi32(e, SplatInt(-127)), normal_bits, subnormal_bits);
    r = _mm256_andnot_si256(_mm256_cmpgt_epi32(min_normal, r), r);
  }
  __m256i out = _mm256_or_si256(_mm256_and_si256(u, simd_avx2::Splat(kSignMask)), r);
  if (!element.negative_zero) {
    out = _mm256_andnot_si256(_mm256_cmpeq_epi32(r, _mm256_setzero_si256()), out);
  }
  return out;
}

template <Rounding kRounding>
inline void RoundMxRun(const uint32_t* src, uint32_t* dst, int64_t n, const uint32_t* words,
                       const int32_t* k_min, const uint32_t* limit_bits,
                       const FloatGrid& element) {
  const auto load = [](const void* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  };
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i word =
        kRounding == Rounding::kStochastic ? load(words + i) : _mm256_setzero_si256();
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        RoundMxVector8<kRounding>(load(src + i), load(k_min + i),
                                                  load(limit_bits + i), word, element));
  }
  RoundMxRunScalar<kRounding>(src + i, dst + i, n - i, words == nullptr ? nullptr : words + i,
                              k_min + i, limit_bits + i, element);
}
#else
template <Rounding kRounding>
inline void RoundMxRun(const uint32_t* src, uint32_t* dst, int64_t n, const uint32_t* words,
                       const int32_t* k_min, const uint32_t* limit_bits,
                       const FloatGrid& element) {
  RoundMxRunScalar<kRounding>(src, dst, n, words, k_min, limit_bits, element);
}
#endif

template <Rounding kRounding>
inline void RoundFloatScaledRunScalar(const uint32_t* src, uint32_t* dst, int64_t n,
                                      const uint32_t* words, const float* element_encode,
                                      const double* scale, double encode,
                                      const FloatGrid& element) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = src[i];
    const uint32_t word = kRounding == Rounding::kStochastic ? words[i] : 0u;
    dst[i] = (u & kAbsMask) >= kInfBits
                 ? PassThroughNonFinite(u)
                 : RoundFloatScaledElement<kRounding>(u, element_encode[i], scale[i], encode,
                                                      element, word);
  }
}

#if defined(TF_LOWPREC_AVX2_INTRINSICS)
// RoundFloatScaledElement (block_scaling.h) and the non-finite pass-through
// on 8 lanes, inside ScopedIeeeFloatEnvironment: the float32 product x * e_b,
// the element rounding of rounding_avx2.h, then (P * s_b) / enc in float64
// rounded to float32.
template <Rounding kRounding>
inline __m256i RoundFloatScaledVector8(__m256i u, __m256 element_encode, __m256d scale_low,
                                       __m256d scale_high, __m256d encode,
                                       const simd_avx2::FloatGrid8& c, __m256i word) {
  const __m256 scaled = _mm256_mul_ps(_mm256_castsi256_ps(u), element_encode);
  // The element rounding of round_to_format's AVX2 loops (their per-lane
  // forms where the format allows, else the full one).
  const __m256i scaled_bits = _mm256_castps_si256(scaled);
  const __m256 p = _mm256_castsi256_ps(
      c.plain ? RoundFloatVectorPerLane<kRounding, true, simd_avx2::RandomForm::kWord>(
                    scaled_bits, _mm256_and_si256(scaled_bits, simd_avx2::Splat(kAbsMask)), c,
                    word)
              : simd_avx2::RoundToFloatFormat8<kRounding>(scaled_bits, c, word));
  const __m128 low = _mm256_cvtpd_ps(
      _mm256_div_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(p)), scale_low),
                    encode));
  const __m128 high = _mm256_cvtpd_ps(
      _mm256_div_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)), scale_high),
                    encode));
  const __m256i out = _mm256_castps_si256(_mm256_set_m128(high, low));
  const __m256i a = _mm256_and_si256(u, simd_avx2::Splat(kAbsMask));
  const __m256i nonfinite = _mm256_cmpgt_epi32(a, simd_avx2::Splat(kInfBits - 1u));
  const __m256i nan = _mm256_cmpgt_epi32(a, simd_avx2::Splat(kInfBits));
  const __m256i special = simd_avx2::Select8(
      nan, _mm256_or_si256(_mm256_and_si256(u, simd_avx2::Splat(kSignMask)),
                           simd_avx2::Splat(kQuietNanBits)),
      u);
  return simd_avx2::Select8(nonfinite, special, out);
}

template <Rounding kRounding>
inline void RoundFloatScaledRun(const uint32_t* src, uint32_t* dst, int64_t n,
                                const uint32_t* words, const float* element_encode,
                                const double* scale, double encode, const FloatGrid& element) {
  const simd_avx2::FloatGrid8 c = simd_avx2::MakeFloatGrid8(element);
  const __m256d enc = _mm256_set1_pd(encode);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i word =
        kRounding == Rounding::kStochastic
            ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + i))
            : _mm256_setzero_si256();
    _mm256_storeu_si256(
        reinterpret_cast<__m256i*>(dst + i),
        RoundFloatScaledVector8<kRounding>(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)),
            _mm256_loadu_ps(element_encode + i), _mm256_loadu_pd(scale + i),
            _mm256_loadu_pd(scale + i + 4), enc, c, word));
  }
  RoundFloatScaledRunScalar<kRounding>(src + i, dst + i, n - i,
                                       words == nullptr ? nullptr : words + i,
                                       element_encode + i, scale + i, encode, element);
}
#else
template <Rounding kRounding>
inline void RoundFloatScaledRun(const uint32_t* src, uint32_t* dst, int64_t n,
                                const uint32_t* words, const float* element_encode,
                                const double* scale, double encode, const FloatGrid& element) {
  RoundFloatScaledRunScalar<kRounding>(src, dst, n, words, element_encode, scale, encode,
                                       element);
}
#endif

// Rounds elements [begin, end) of x (global indices, one contiguous run)
// whose parameters are params(i) for i in the run: chunk by chunk, filling
// the per-element arrays with `fill(chunk_begin, chunk_end, run_params)`.
template <Rounding kRounding, bool kFloatScale, typename Fill>
inline void RoundRun(const BlockScaledJob& job, int64_t begin, int64_t end,
                     ChunkRandomWords* random, RunParams* rp, const Fill& fill) {
  alignas(64) uint32_t words[kBlockChunk];
  const uint32_t* src = reinterpret_cast<const uint32_t*>(job.in);
  uint32_t* dst = reinterpret_cast<uint32_t*>(job.out);
  for (int64_t start = begin, stop; start < end; start = stop) {
    stop = std::min(end, (start / kBlockChunk + 1) * kBlockChunk);
    const int64_t m = stop - start;
    if (kRounding == Rounding::kStochastic) random->Fill(start, m, words);
    fill(start, stop, rp);
    if (kFloatScale) {
      RoundFloatScaledRun<kRounding>(src + start, dst + start, m, words, rp->element_encode,
                                     rp->scale, job.encode, job.spec->element);
    } else {
      RoundMxRun<kRounding>(src + start, dst + start, m, words, rp->k_min, rp->limit_bits,
                            job.spec->element);
    }
  }
}

// Rounds elements [begin, end) of x (one contiguous run) whose parameters
// lie in `rp` from index first_param on, piece by piece between multiples
// of kBlockChunk (the random words' chunks).
template <Rounding kRounding, bool kFloatScale>
inline void RoundPieces(const BlockScaledJob& job, int64_t begin, int64_t end,
                        ChunkRandomWords* random, const RunParams& rp, int64_t first_param) {
  alignas(64) uint32_t words[kBlockChunk];
  const uint32_t* src = reinterpret_cast<const uint32_t*>(job.in);
  uint32_t* dst = reinterpret_cast<uint32_t*>(job.out);
  for (int64_t start = begin, stop; start < end; start = stop) {
    stop = std::min(end, (start / kBlockChunk + 1) * kBlockChunk);
    const int64_t m = stop - start;
    if (kRounding == Rounding::kStochastic) random->Fill(start, m, words);
    const int64_t p = first_param + (start - begin);
    if (kFloatScale) {
      RoundFloatScaledRun<kRounding>(src + start, dst + start, m, words, rp.element_encode + p,
                                     rp.scale + p, job.encode, job.spec->element);
    } else {
      RoundMxRun<kRounding>(src + start, dst + start, m, words, rp.k_min + p,
                            rp.limit_bits + p, job.spec->element);
    }
  }
}

// The fix-up of a NaN or zero block's elements (run of n, `stride` apart);
// non-finite elements of a zero block pass through.
inline void FixUpBlock(const BlockParams& p, const uint32_t* src, uint32_t* dst, int64_t n,
                       int64_t stride) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = src[i * stride];
    const uint32_t zero = (u & kAbsMask) >= kInfBits ? PassThroughNonFinite(u) : (u & kSignMask);
    dst[i * stride] = p.nan_block ? NanBlockElement(u) : zero;
  }
}

// Blocks along the last axis: units [first, last) are blocks.
template <Rounding kRounding, bool kFloatScale>
void QuantizeContiguousBlocks(const BlockScaledJob& job, int64_t first, int64_t last) {
  const BlockScaledSpec& spec = *job.spec;
  const int64_t bs = spec.block_size;
  // Blocks handled per group: their parameters are computed first, then
  // their elements are rounded while still in cache.
  const int64_t group = std::max<int64_t>(1, 8192 / bs);
  std::vector<BlockParams> params(static_cast<size_t>(std::min(group, last - first)));
  ChunkRandomWords random(job.random);
  RunParams rp;
  const uint32_t* src = reinterpret_cast<const uint32_t*>(job.in);
  uint32_t* dst = reinterpret_cast<uint32_t*>(job.out);
  uint32_t* scales = reinterpret_cast<uint32_t*>(job.scales);
  for (int64_t ob = first; ob < last;) {
    const int64_t o = ob / job.blocks;
    const int64_t b0 = ob % job.blocks;
    const int64_t b1 = std::min({job.blocks, b0 + (last - ob), b0 + group});
    const int64_t row = o * job.length;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = row + b * bs;
      const int64_t count = std::min(bs, job.length - b * bs);
      params[b - b0] = MakeBlockParams<kFloatScale>(spec, StatsOfRun(src + begin, count),
                                                    job.encode, &scales[o * job.blocks + b]);
    }
    const int64_t run_begin = row + b0 * bs;
    const int64_t run_end = row + std::min(b1 * bs, job.length);
    RoundRun<kRounding, kFloatScale>(
        job, run_begin, run_end, &random, &rp,
        [&](int64_t start, int64_t stop, RunParams* out) {
          for (int64_t i = start; i < stop;) {
            const int64_t b = (i - row) / bs;
            const int64_t block_end = std::min(stop, row + (b + 1) * bs);
            SetRunParams<kFloatScale>(params[b - b0], i - start, block_end - start, out);
            i = block_end;
          }
        });
    for (int64_t b = b0; b < b1; ++b) {
      const BlockParams& p = params[b - b0];
      if (p.nan_block || p.zero_block) {
        const int64_t begin = row + b * bs;
        FixUpBlock(p, src + begin, dst + begin, std::min(bs, job.length - b * bs), 1);
      }
    }
    ob += b1 - b0;
  }
}

// Blocks along another axis: units [first, last) are column chunks of blocks.
template <Rounding kRounding, bool kFloatScale>
void QuantizeStridedBlocks(const BlockScaledJob& job, int64_t first, int64_t last) {
  const BlockScaledSpec& spec = *job.spec;
  const int64_t bs = spec.block_size;
  ChunkRandomWords random(job.random);
  RunParams rp;
  BlockParams params[kBlockColumns];
  uint32_t amax[kBlockColumns], nonfinite[kBlockColumns];
  const uint32_t* src = reinterpret_cast<const uint32_t*>(job.in);
  uint32_t* dst = reinterpret_cast<uint32_t*>(job.out);
  uint32_t* scales = reinterpret_cast<uint32_t*>(job.scales);
  for (int64_t unit = first; unit < last; ++unit) {
    const int64_t ob = unit / job.column_chunks;
    const int64_t j0 = (unit % job.column_chunks) * kBlockColumns;
    const int64_t width = std::min(kBlockColumns, job.inner - j0);
    const int64_t o = ob / job.blocks, b = ob % job.blocks;
    const int64_t r0 = b * bs;
    const int64_t rows = std::min(bs, job.length - r0);
    const int64_t top = (o * job.length + r0) * job.inner + j0;  // element (r0, j0)
    StatsOfColumns(src + top, rows, width, job.inner, amax, nonfinite);
    bool any_fix_up = false;
    for (int64_t j = 0; j < width; ++j) {
      params[j] = MakeBlockParams<kFloatScale>(spec, {amax[j], nonfinite[j] != 0}, job.encode,
                                               &scales[ob * job.inner + j0 + j]);
      any_fix_up |= params[j].nan_block || params[j].zero_block;
    }
    for (int64_t j = 0; j < width; ++j) SetRunParams<kFloatScale>(params[j], j, j + 1, &rp);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t begin = top + r * job.inner;
      RoundPieces<kRounding, kFloatScale>(job, begin, begin + width, &random, rp, 0);
    }
    if (any_fix_up) {
      for (int64_t j = 0; j < width; ++j) {
        if (params[j].nan_block || params[j].zero_block) {
          FixUpBlock(params[j], src + top + j, dst + top + j, rows, job.inner);
        }
      }
    }
  }
}

#if defined(TF_LOWPREC_AVX2_INTRINSICS)
// StatsOfRun of n elements, n a multiple of 8.
inline RunStats StatsOfRun8(const uint32_t* src, int64_t n) {
  __m256i amax = _mm256_setzero_si256(), nonfinite = _mm256_setzero_si256();
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i a = _mm256_and_si256(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)),
        simd_avx2::Splat(kAbsMask));
    const __m256i finite = _mm256_cmpgt_epi32(simd_avx2::Splat(kInfBits), a);
    amax = _mm256_max_epi32(amax, _mm256_and_si256(finite, a));  // magnitudes: signed max
    nonfinite = _mm256_or_si256(nonfinite, _mm256_andnot_si256(finite, a));
  }
  __m128i h = _mm_max_epi32(_mm256_castsi256_si128(amax), _mm256_extracti128_si256(amax, 1));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
  return {static_cast<uint32_t>(_mm_cvtsi128_si32(h)), !_mm256_testz_si256(nonfinite, nonfinite)};
}

// Blocks along the last axis with block_size a multiple of 8 (every
// preset): one pass per block, its scale from 8-lane maxima and its elements
// rounded with the block's parameters broadcast, while in L1.
template <Rounding kRounding, bool kFloatScale>
void QuantizeContiguous8(const BlockScaledJob& job, int64_t first, int64_t last) {
  const BlockScaledSpec& spec = *job.spec;
  const FloatGrid& element = spec.element;
  const int64_t bs = spec.block_size;
  const int64_t group = std::max<int64_t>(1, 8192 / bs);
  std::vector<uint32_t> words(kRounding == Rounding::kStochastic ? group * bs : 0);
  ChunkRandomWords random(job.random);
  // Float scales: the element grid's vector constants, built once per call.
  std::unique_ptr<simd_avx2::FloatGrid8> grid8;
  if (kFloatScale) grid8.reset(new simd_avx2::FloatGrid8(simd_avx2::MakeFloatGrid8(element)));
  const __m256d encode = _mm256_set1_pd(job.encode);
  std::unique_ptr<RunParams> tail_params(new RunParams);
  const uint32_t* src = reinterpret_cast<const uint32_t*>(job.in);
  uint32_t* dst = reinterpret_cast<uint32_t*>(job.out);
  uint32_t* scales = reinterpret_cast<uint32_t*>(job.scales);
  for (int64_t ob = first; ob < last;) {
    const int64_t o = ob / job.blocks;
    const int64_t b0 = ob % job.blocks;
    const int64_t b1 = std::min({job.blocks, b0 + (last - ob), b0 + group});
    const int64_t row = o * job.length;
    const int64_t run_begin = row + b0 * bs;
    if (kRounding == Rounding::kStochastic) {
      const int64_t run_end = row + std::min(b1 * bs, job.length);
      for (int64_t start = run_begin, stop; start < run_end; start = stop) {
        stop = std::min(run_end, (start / kBlockChunk + 1) * kBlockChunk);
        random.Fill(start, stop - start, words.data() + (start - run_begin));
      }
    }
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = row + b * bs;
      const int64_t count = std::min(bs, job.length - b * bs);
      const int64_t whole = count - count % 8;
      RunStats stats = StatsOfRun8(src + begin, whole);
      if (whole < count) {
        const RunStats tail = StatsOfRun(src + begin + whole, count - whole);
        stats.amax_bits = std::max(stats.amax_bits, tail.amax_bits);
        stats.nonfinite |= tail.nonfinite;
      }
      const BlockParams p =
          MakeBlockParams<kFloatScale>(spec, stats, job.encode, &scales[o * job.blocks + b]);
      if (p.nan_block || p.zero_block) {
        FixUpBlock(p, src + begin, dst + begin, count, 1);
        continue;
      }
      const __m256i k_min = simd_avx2::SplatInt(p.k_min);
      const __m256i limit = simd_avx2::Splat(p.limit_bits);
      const __m256 element_encode = _mm256_set1_ps(p.element_encode);
      const __m256d scale = _mm256_set1_pd(p.scale);
      const uint32_t* w = words.data() + (begin - run_begin);
      for (int64_t i = 0; i < whole; i += 8) {
        const __m256i word =
            kRounding == Rounding::kStochastic
                ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i))
                : _mm256_setzero_si256();
        const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + begin + i));
        _mm256_storeu_si256(
            reinterpret_cast<__m256i*>(dst + begin + i),
            kFloatScale ? RoundFloatScaledVector8<kRounding>(u, element_encode, scale, scale,
                                                             encode, *grid8, word)
                        : RoundMxVector8<kRounding>(u, k_min, limit, word, element));
      }
      if (whole < count) {
        RunParams& rp = *tail_params;
        SetRunParams<kFloatScale>(p, 0, 8, &rp);
        const uint32_t* tail_words = kRounding == Rounding::kStochastic ? w + whole : nullptr;
        if (kFloatScale) {
          RoundFloatScaledRunScalar<kRounding>(src + begin + whole, dst + begin + whole,
                                               count - whole, tail_words, rp.element_encode,
                                               rp.scale, job.encode, element);
        } else {
          RoundMxRunScalar<kRounding>(src + begin + whole, dst + begin + whole, count - whole,
                                      tail_words, rp.k_min, rp.limit_bits, element);
        }
      }
    }
    ob += b1 - b0;
  }
}
#endif

template <Rounding kRounding, bool kFloatScale>
void QuantizeBlockScaledWith(const BlockScaledJob& job, int64_t first, int64_t last) {
#if defined(TF_LOWPREC_AVX2_INTRINSICS)
  if (job.inner == 1 && job.spec->block_size % 8 == 0 && job.spec->block_size <= 8192) {
    return QuantizeContiguous8<kRounding, kFloatScale>(job, first, last);
  }
#endif
  if (job.inner == 1) return QuantizeContiguousBlocks<kRounding, kFloatScale>(job, first, last);
  QuantizeStridedBlocks<kRounding, kFloatScale>(job, first, last);
}

template <Rounding kRounding>
void QuantizeBlockScaledImpl(const BlockScaledJob& job, int64_t first, int64_t last) {
  if (job.spec->float_scale) {
    // float64 steps and float32 conversions that must keep subnormals
    // (block_scaling.h): IEEE mode in this thread for the call.
    const ScopedIeeeFloatEnvironment ieee;  // float_environment.h
    return QuantizeBlockScaledWith<kRounding, true>(job, first, last);
  }
  // The AVX2 loops' nearest-even adds in float32 (RoundMxVector8).
  const ScopedRoundToNearest round_to_nearest;  // float_environment.h
  QuantizeBlockScaledWith<kRounding, false>(job, first, last);
}

void QuantizeBlockScaled(const BlockScaledJob& job, int64_t first_unit, int64_t last_unit) {
  switch (job.rounding) {
    case Rounding::kNearestEven:
      return QuantizeBlockScaledImpl<Rounding::kNearestEven>(job, first_unit, last_unit);
    case Rounding::kStochastic:
      return QuantizeBlockScaledImpl<Rounding::kStochastic>(job, first_unit, last_unit);
    case Rounding::kTowardZero:
      return QuantizeBlockScaledImpl<Rounding::kTowardZero>(job, first_unit, last_unit);
  }
}
