// What does VDPBF16PS compute, bit for bit?  Compares the instruction on this
// CPU with candidate scalar models of one lane:
//   acc' = dot(acc, a[2i], a[2i+1], b[2i], b[2i+1])
// on random and adversarial inputs, and reports mismatches per model.
//
// Build and run (needs AVX512_BF16):
//   g++ -O2 -std=c++17 -mavx512f -mavx512bf16 -mfma \
//       benchmarks/vdpbf16ps_probe/probe.cc -o /tmp/probe
//   /tmp/probe 100000000          # lanes, default MXCSR
//   /tmp/probe 100000000 mxcsr    # the instruction under RZ + FTZ + DAZ
// Results: docs/bf16_gemm.md ("What VDPBF16PS computes").
#include <immintrin.h>
#include <xmmintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

float F(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
uint32_t U(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
float Bf16(uint16_t h) { return F(uint32_t(h) << 16); }
bool IsNan(uint32_t u) { return (u & 0x7FFFFFFFu) > 0x7F800000u; }
bool IsSubnormal(uint32_t u) { return (u & 0x7F800000u) == 0 && (u & 0x007FFFFFu) != 0; }
uint32_t Daz(uint32_t u) { return IsSubnormal(u) ? (u & 0x80000000u) : u; }

// How a tiny (below 2^-126) result is recognised before it is flushed.
enum class Tiny {
  kNone,          // gradual underflow kept (no FTZ)
  kAfterIeee,     // the IEEE (gradual-underflow) result is subnormal
  kBeforeRound,   // the exact value is below 2^-126 in magnitude
  kAfterUnbounded,  // the value rounded to 24 bits (exponent unbounded) is below 2^-126
};

// fl(acc + x * y): one rounding to nearest even, DAZ on x, y (and on acc
// when daz_acc), FTZ by `tiny`.  NaN results are returned as computed by
// the host's fmaf; the NaN rule is compared separately.
uint32_t FmaStep(uint32_t acc, uint32_t x, uint32_t y, bool daz_acc, Tiny tiny) {
  x = Daz(x);
  y = Daz(y);
  if (daz_acc) acc = Daz(acc);
  const float r = std::fmaf(F(x), F(y), F(acc));
  uint32_t ur = U(r);
  if (tiny == Tiny::kNone || IsNan(ur)) return ur;
  const uint32_t mag = ur & 0x7FFFFFFFu;
  if ((tiny == Tiny::kBeforeRound || tiny == Tiny::kAfterUnbounded) && mag <= 0x00800001u) {
    // The IEEE result is 2^-126 or its neighbour: is the exact value (or
    // its rounding to 24 bits with an unbounded exponent) below 2^-126?
    // acc + x*y exactly as s + e (TwoSum in binary128: x*y is exact there).
    const __float128 a = F(acc), p = (__float128)F(x) * (__float128)F(y);
    const __float128 s = a + p, bb = s - a;
    const __float128 e = (a - (s - bb)) + (p - bb);
    const __float128 tiny_limit = (__float128)F(0x00800000u);
    const __float128 mag_s = s < 0 ? -s : s;
    bool tiny_value;
    if (tiny == Tiny::kBeforeRound) {
      tiny_value = mag_s < tiny_limit ||
                   (mag_s == tiny_limit && ((e > 0 && s < 0) || (e < 0 && s > 0)));
    } else {
      // Round |s| (+e) to 24 bits in the binade below 2^-126: spacing 2^-150.
      // Below 2^-126 - 2^-151 it stays below; at the midpoint ties go to
      // even, which is 2^-126 itself.
      const __float128 half_step = tiny_limit / 16777216 / 2;  // 2^-151
      const __float128 gap = tiny_limit - mag_s;                 // > 0 when below
      const __float128 signed_e = s < 0 ? -e : e;               // e along |s|
      tiny_value = gap - signed_e > half_step;
    }
    if (tiny_value) return ur & 0x80000000u;
    if (mag < 0x00800000u) return U(F(0x00800000u)) | (ur & 0x80000000u);
  }
  if (mag < 0x00800000u) return ur & 0x80000000u;  // subnormal (or zero) result
  return ur;
}

struct Lane { uint32_t acc; uint16_t a0, a1, b0, b1; };

// The definition as portable code (no FMA, no host NaN rules): the product
// of two BF16 values is exact in binary64, and rounding acc + p to binary64
// and then to FP32 equals rounding it once (both have at most 24 bits and
// 53 >= 2 * 24 + 2: double rounding is innocuous for a sum).
uint32_t Quiet(uint32_t u) { return u | 0x00400000u; }
uint32_t PortableStep(uint32_t acc, uint32_t x, uint32_t y) {
  acc = Daz(acc);
  x = Daz(x);
  y = Daz(y);
  // NaN rule: x's NaN, else y's, else the accumulator's (made quiet); an
  // invalid operation (Inf * 0, Inf - Inf) gives the default NaN 0xFFC00000.
  if (IsNan(x)) return Quiet(x);
  if (IsNan(y)) return Quiet(y);
  if (IsNan(acc)) return Quiet(acc);
  const double p = double(F(x)) * double(F(y));
  const double v = double(F(acc)) + p;
  if (v != v) return 0xFFC00000u;
  // FTZ when v rounded to 24 bits with an unbounded exponent is below
  // 2^-126: in binary64 that is |v| < 2^-126 - 2^-151 (the midpoint between
  // 2^-126 and its 24-bit predecessor; the tie rounds up to the even 2^-126).
  // v is exact here, or rounded in binary64 far from that threshold.
  const double kFlushBelow = 0x1p-126 - 0x1p-151;
  if (std::fabs(v) < kFlushBelow) return std::signbit(v) ? 0x80000000u : 0u;
  return U(float(v));
}
uint32_t Portable(const Lane& l) {
  const uint32_t a0 = uint32_t(l.a0) << 16, a1 = uint32_t(l.a1) << 16;
  const uint32_t b0 = uint32_t(l.b0) << 16, b1 = uint32_t(l.b1) << 16;
  return PortableStep(PortableStep(l.acc, a1, b1), a0, b0);
}

// The candidate models of one lane.
struct Model {
  std::string name;
  uint32_t (*fn)(const Lane&);
};

template <bool kOddFirst, bool kDazAcc, Tiny kTiny>
uint32_t Sequential(const Lane& l) {
  const uint32_t a0 = uint32_t(l.a0) << 16, a1 = uint32_t(l.a1) << 16;
  const uint32_t b0 = uint32_t(l.b0) << 16, b1 = uint32_t(l.b1) << 16;
  if (kOddFirst) {
    return FmaStep(FmaStep(l.acc, a1, b1, kDazAcc, kTiny), a0, b0, kDazAcc, kTiny);
  }
  return FmaStep(FmaStep(l.acc, a0, b0, kDazAcc, kTiny), a1, b1, kDazAcc, kTiny);
}

// fl(acc + fl(p0 + p1)): the pair summed first (products are exact in FP32
// unless they under- or overflow; computed here in binary128).
template <Tiny kTiny>
uint32_t PairFirst(const Lane& l) {
  const uint32_t a0 = Daz(uint32_t(l.a0) << 16), a1 = Daz(uint32_t(l.a1) << 16);
  const uint32_t b0 = Daz(uint32_t(l.b0) << 16), b1 = Daz(uint32_t(l.b1) << 16);
  const float pair = float(double(F(a0)) * F(b0) + double(F(a1)) * F(b1));
  return FmaStep(Daz(l.acc), U(pair), 0x3F800000u, true, kTiny);
}

// One rounding of acc + p0 + p1 (binary128 sum, then to FP32; exact enough
// for the sums that are not on a huge exponent spread).
uint32_t Fused(const Lane& l) {
  const uint32_t a0 = Daz(uint32_t(l.a0) << 16), a1 = Daz(uint32_t(l.a1) << 16);
  const uint32_t b0 = Daz(uint32_t(l.b0) << 16), b1 = Daz(uint32_t(l.b1) << 16);
  const __float128 s = (__float128)F(Daz(l.acc)) + (__float128)F(a0) * F(b0) +
                       (__float128)F(a1) * F(b1);
  uint32_t u = U((float)s);
  if (!IsNan(u) && (u & 0x7FFFFFFFu) < 0x00800000u) u &= 0x80000000u;
  return u;
}

const Model kModels[] = {
    {"DEFINITION: portable (binary64 product and sum, explicit NaN/DAZ/FTZ)", Portable},
    {"SDM: odd pair first, DAZ in (acc too), FTZ (IEEE-subnormal result)",
     Sequential<true, true, Tiny::kAfterIeee>},
    {"odd first, DAZ in (acc too), FTZ (exact value < 2^-126)",
     Sequential<true, true, Tiny::kBeforeRound>},
    {"odd first, DAZ in (acc too), FTZ (24-bit rounding, unbounded exponent, < 2^-126)",
     Sequential<true, true, Tiny::kAfterUnbounded>},
    {"odd first, DAZ on bf16 only, FTZ (IEEE-subnormal result)",
     Sequential<true, false, Tiny::kAfterIeee>},
    {"odd first, DAZ in, no FTZ", Sequential<true, true, Tiny::kNone>},
    {"even pair first, DAZ in, FTZ", Sequential<false, true, Tiny::kAfterIeee>},
    {"pair summed first then added, DAZ, FTZ", PairFirst<Tiny::kAfterIeee>},
    {"fused (one rounding of acc + p0 + p1), DAZ, FTZ", Fused},
};
constexpr int kNumModels = sizeof(kModels) / sizeof(kModels[0]);

// 16 lanes at a time through the instruction.  With g_odd_mxcsr the
// instruction runs under round-toward-zero with FTZ and DAZ set in MXCSR
// (the models do not: the SDM says the instruction ignores MXCSR).
bool g_odd_mxcsr = false;
void Hardware(const Lane* lanes, uint32_t* out) {
  alignas(64) uint32_t acc[16], a[16], b[16];
  for (int i = 0; i < 16; ++i) {
    acc[i] = lanes[i].acc;
    a[i] = uint32_t(lanes[i].a0) | (uint32_t(lanes[i].a1) << 16);
    b[i] = uint32_t(lanes[i].b0) | (uint32_t(lanes[i].b1) << 16);
  }
  const unsigned saved = _mm_getcsr();
  if (g_odd_mxcsr) _mm_setcsr(saved | 0x6000u | 0x8000u | 0x0040u);  // RZ, FTZ, DAZ
  __m512 r = _mm512_dpbf16_ps(_mm512_load_ps(reinterpret_cast<const float*>(acc)),
                              (__m512bh)_mm512_load_si512(a), (__m512bh)_mm512_load_si512(b));
  _mm512_storeu_ps(reinterpret_cast<float*>(out), r);
  if (g_odd_mxcsr) _mm_setcsr(saved);
}

// Input generators.
struct Gen {
  std::mt19937_64 rng;
  explicit Gen(uint64_t seed) : rng(seed) {}
  uint32_t Bits() { return uint32_t(rng()); }
  // A bf16 with the given unbiased exponent (clamped to the normal range or
  // beyond for subnormal/Inf when `raw`), random sign and mantissa.
  uint16_t Bf16WithExp(int e) {
    int be = e + 127;
    if (be < 0) be = 0;
    if (be > 255) be = 255;
    return uint16_t(((Bits() & 1) << 15) | (uint32_t(be) << 7) | (Bits() & 0x7F));
  }
  uint32_t F32WithExp(int e) {
    int be = e + 127;
    if (be < 0) be = 0;
    if (be > 255) be = 255;
    return ((Bits() & 1) << 31) | (uint32_t(be) << 23) | (Bits() & 0x7FFFFF);
  }
  int Jitter(int w) { return int(rng() % (2 * w + 1)) - w; }

  Lane Next(int kind) {
    Lane l;
    switch (kind) {
      case 0: {  // all bits random: every class, huge exponent spread
        l.acc = Bits();
        l.a0 = Bits(); l.a1 = Bits(); l.b0 = Bits(); l.b1 = Bits();
        break;
      }
      case 1: {  // exponents in a narrow window: cancellation and ties
        const int c = Jitter(100);
        const int ea = Jitter(60);
        l.a0 = Bf16WithExp(ea + Jitter(2));
        l.a1 = Bf16WithExp(ea + Jitter(2));
        l.b0 = Bf16WithExp(c - ea + Jitter(2));
        l.b1 = Bf16WithExp(c - ea + Jitter(2));
        l.acc = F32WithExp(c + Jitter(12));
        if (rng() % 4 == 0) l.acc = 0;
        if (rng() % 8 == 0) l.acc = 0x80000000u;
        break;
      }
      case 2: {  // near the bottom of the normal range: subnormal products/sums
        const int c = -126 + Jitter(6);
        const int ea = -63 + Jitter(20);
        l.a0 = Bf16WithExp(ea + Jitter(2));
        l.a1 = Bf16WithExp(ea + Jitter(2));
        l.b0 = Bf16WithExp(c - ea + Jitter(3));
        l.b1 = Bf16WithExp(c - ea + Jitter(3));
        l.acc = rng() % 3 == 0 ? (Bits() & 0x80FFFFFFu) : F32WithExp(c + Jitter(3));
        break;
      }
      case 3: {  // near the top: overflow to Inf, Inf - Inf
        const int c = 127 + Jitter(3);
        const int ea = 63 + Jitter(20);
        l.a0 = Bf16WithExp(ea + Jitter(1));
        l.a1 = Bf16WithExp(ea + Jitter(1));
        l.b0 = Bf16WithExp(c - ea + Jitter(1));
        l.b1 = Bf16WithExp(c - ea + Jitter(1));
        l.acc = F32WithExp(c + Jitter(2));
        break;
      }
      case 4: {  // the tininess boundary: results just below/above 2^-126
        static const uint32_t edge[] = {0x00800000u, 0x00800001u, 0x00800002u, 0x00FFFFFFu,
                                        0x01000000u, 0x01000001u};
        l.acc = edge[rng() % 6] | ((Bits() & 1) << 31);
        // product = -(sign of acc) * 2^e * (1 + m), e in -155..-125
        const int e = -155 + int(rng() % 31);
        const int ea = -70 + Jitter(8);
        const bool flip = rng() % 4 != 0;
        const uint16_t sa = uint16_t(((l.acc >> 31) ^ (flip ? 1 : 0)) << 15);
        l.a1 = uint16_t(Bf16WithExp(ea) & 0x7FFF) | sa;
        l.b1 = uint16_t(((rng() % 4) ? uint16_t(Bf16WithExp(e - ea) & 0x7F80) : Bf16WithExp(e - ea)) & 0x7FFF);
        if (rng() % 2) { l.a0 = 0; l.b0 = Bf16WithExp(Jitter(5)); }
        else { l.a0 = uint16_t(Bf16WithExp(ea) ^ 0); l.b0 = Bf16WithExp(-150 + int(rng() % 30) - ea); }
        break;
      }
      default: {  // specials mixed with ordinary values
        static const uint16_t sp[] = {0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0,
                                      0x7F81, 0x0001, 0x8001, 0x007F, 0x0080, 0x3F80,
                                      0xBF80, 0x7F7F, 0xFF7F, 0x7FFF};
        static const uint32_t spa[] = {0, 0x80000000u, 0x7F800000u, 0xFF800000u,
                                       0x7FC00000u, 0xFFC00000u, 0x7FA00001u,
                                       0x00000001u, 0x807FFFFFu, 0x00800000u,
                                       0x3F800000u, 0xBF800000u, 0x7F7FFFFFu};
        auto pick = [&]() -> uint16_t {
          return rng() % 2 ? sp[rng() % 16] : Bf16WithExp(Jitter(4));
        };
        l.a0 = pick(); l.a1 = pick(); l.b0 = pick(); l.b1 = pick();
        l.acc = rng() % 2 ? spa[rng() % 13] : F32WithExp(Jitter(4));
        break;
      }
    }
    return l;
  }
};

const char* kKindNames[] = {"random bits", "narrow exponent window", "bottom of range",
                            "top of range", "tininess boundary", "specials"};

}  // namespace

int main(int argc, char** argv) {
  const long long total = argc > 1 ? std::atoll(argv[1]) : 10000000;
  const bool set_mxcsr = argc > 2 && std::strcmp(argv[2], "mxcsr") == 0;
  g_odd_mxcsr = set_mxcsr;
  const int kinds = 6;
  long long count[kinds] = {0};
  long long mismatch[kNumModels][kinds] = {{0}};
  long long nan_only[kNumModels] = {0};
  long long zero_sign[kNumModels] = {0};
  std::map<std::pair<uint32_t, uint32_t>, long long> nan_pairs;  // (model0, hw)
  long long nan_results = 0, neg_zero_results = 0, inf_results = 0, flushed_examples = 0;
  Gen gen(12345);
  std::vector<Lane> lanes(16);
  uint32_t hw[16];
  long long printed = 0;
  for (long long done = 0; done < total; done += 16) {
    const int kind = int((done / 16) % kinds);
    for (int i = 0; i < 16; ++i) lanes[i] = gen.Next(kind);
    Hardware(lanes.data(), hw);
    for (int i = 0; i < 16; ++i) {
      ++count[kind];
      if (IsNan(hw[i])) ++nan_results;
      if (hw[i] == 0x80000000u) ++neg_zero_results;
      if ((hw[i] & 0x7FFFFFFFu) == 0x7F800000u) ++inf_results;
      for (int m = 0; m < kNumModels; ++m) {
        const uint32_t want = kModels[m].fn(lanes[i]);
        if (want == hw[i]) continue;
        if (IsNan(want) && IsNan(hw[i])) {
          ++nan_only[m];
          if (m == 0) ++nan_pairs[{want, hw[i]}];
          continue;
        }
        if ((want & 0x7FFFFFFFu) == 0 && (hw[i] & 0x7FFFFFFFu) == 0) ++zero_sign[m];
        ++mismatch[m][kind];
        if (m == 0 && printed < 10) {
          ++printed;
          const Lane& l = lanes[i];
          std::printf("model0 mismatch: acc=%08x a=(%04x,%04x) b=(%04x,%04x) model=%08x hw=%08x\n",
                      l.acc, l.a0, l.a1, l.b0, l.b1, want, hw[i]);
        }
      }
    }
  }
  (void)flushed_examples;
  std::printf("lanes: %lld (%s)\n", total, set_mxcsr ? "MXCSR: round toward zero, FTZ, DAZ" : "default MXCSR");
  for (int k = 0; k < kinds; ++k) std::printf("  %-24s %lld\n", kKindNames[k], count[k]);
  std::printf("hardware results: NaN %lld, -0 %lld, +-Inf %lld\n", nan_results,
              neg_zero_results, inf_results);
  for (int m = 0; m < kNumModels; ++m) {
    long long all = 0;
    for (int k = 0; k < kinds; ++k) all += mismatch[m][k];
    std::printf("%-70s mismatches %lld [", kModels[m].name.c_str(), all);
    for (int k = 0; k < kinds; ++k) std::printf("%s%lld", k ? " " : "", mismatch[m][k]);
    std::printf("]; of which zero sign only %lld; NaN bits only %lld\n", zero_sign[m],
                nan_only[m]);
  }
  std::printf("NaN bit patterns (model 0 -> hardware), up to 20:\n");
  int shown = 0;
  for (auto& kv : nan_pairs) {
    if (shown++ == 20) break;
    std::printf("  %08x -> %08x: %lld\n", kv.first.first, kv.first.second, kv.second);
  }
  return 0;
}
