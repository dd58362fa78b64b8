// AVX-512 rounding loops.  setup.py compiles this file alone with
// -mavx512f -mavx512bw -mavx512dq -mavx512vl; it runs only where
// CpuSupportsAvx512() says so.  The loops use explicit intrinsics
// (rounding_avx512.h, philox_avx512.h), bit-identical to the portable ones.
#define TF_LOWPREC_ISA avx512
#define TF_LOWPREC_ISA_NAME "avx512"
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__)
#define TF_LOWPREC_AVX512_INTRINSICS 1
#endif
// GCC 12 flags the _mm512_undefined_epi32() inside some intrinsics
// (_mm512_max_epu32, _mm512_reduce_max_epu32) as used uninitialized: a
// false positive (the value is a "don't care" by design).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "rounding_loops_impl.h"
