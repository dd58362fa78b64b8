// Single-kernel timing of the float rounding loops, without TensorFlow: the
// per-core figures behind docs/formats.md's notes on where the time of
// stochastic rounding goes (thread CPU time of one thread, best of `reps`).
// Data: Gaussian values of standard deviation `scale` (a few percent of them
// fall in E4M3's subnormal range with the default 1.0).  The buffer is
// rounded `passes` times per repetition so that small sizes measure the
// kernel on cached data.
//
// Built (with every kernel tier, which cpu_dispatch.cc links) and run by
// benchmarks/rounding_kernel_timing.sh; by hand:
//   timing [format=e4m3] [rounding=stochastic] [mbytes=1] [isa=auto] [reps=7] [sigma=1]
// format: bf16, fp16, e4m3, e5m2; rounding: nearest_even, stochastic,
// toward_zero, or copy (a plain copy loop: the baseline).  Prints ns per
// element and a checksum of the output (equal across ISAs and code
// versions: the results are defined bit for bit).
#include <time.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "number_formats.h"
#include "philox.h"
#include "rounding_loops.h"

namespace {

using tf_lowprec::FloatFormatSpec;
using tf_lowprec::FloatGrid;
using tf_lowprec::NanEncoding;
using tf_lowprec::Overflow;
using tf_lowprec::Rounding;

double ThreadSeconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

bool SpecOf(const std::string& name, FloatFormatSpec* spec) {
  if (name == "bf16") {
    *spec = {8, 7, 127, true, NanEncoding::kIeee, Overflow::kInfinity, false};
  } else if (name == "fp16") {
    *spec = {5, 10, 15, true, NanEncoding::kIeee, Overflow::kInfinity, false};
  } else if (name == "e4m3") {
    *spec = {4, 3, 7, true, NanEncoding::kAllOnes, Overflow::kSaturate, false};
  } else if (name == "e5m2") {
    *spec = {5, 2, 15, true, NanEncoding::kIeee, Overflow::kSaturate, false};
  } else {
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string format = argc > 1 ? argv[1] : "e4m3";
  const std::string rounding_name = argc > 2 ? argv[2] : "stochastic";
  const double mbytes = argc > 3 ? std::atof(argv[3]) : 1.0;
  const std::string isa = argc > 4 ? argv[4] : "auto";
  const int reps = argc > 5 ? std::atoi(argv[5]) : 7;
  const float scale = argc > 6 ? std::atof(argv[6]) : 1.0f;

  FloatFormatSpec spec;
  if (!SpecOf(format, &spec)) {
    std::fprintf(stderr, "format must be bf16, fp16, e4m3 or e5m2, got %s\n", format.c_str());
    return 2;
  }
  FloatGrid grid;
  const std::string error = tf_lowprec::DeriveFloatGrid(spec, &grid);
  if (!error.empty()) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  const bool copy = rounding_name == "copy";
  Rounding rounding = Rounding::kNearestEven;
  if (rounding_name == "stochastic") {
    rounding = Rounding::kStochastic;
  } else if (rounding_name == "toward_zero") {
    rounding = Rounding::kTowardZero;
  } else if (rounding_name != "nearest_even" && !copy) {
    std::fprintf(stderr, "rounding must be nearest_even, stochastic, toward_zero or copy\n");
    return 2;
  }
  const tf_lowprec::RoundingLoops* loops = tf_lowprec::SelectRoundingLoops(isa.c_str());
  if (loops == nullptr) {
    std::fprintf(stderr, "isa must be portable, avx2, avx512 or auto (and supported), got %s\n",
                 isa.c_str());
    return 2;
  }

  const int64_t n = static_cast<int64_t>(mbytes * (1 << 20) / 4);
  std::vector<float> in(n), out(n);
  std::mt19937 engine(42);
  std::normal_distribution<float> normal(0.0f, scale);
  for (auto& v : in) v = normal(engine);

  tf_lowprec::RandomStream random;
  random.philox = tf_lowprec::PhiloxFromSeed(1, 2);
  random.mask = 0xFFFF0000u;  // random_bits = 16, the default
  random.half_words = true;

  // Enough passes per repetition for about 64 MB of input.
  const int passes = std::max<int64_t>(1, (int64_t{16} << 20) / std::max<int64_t>(n, 1));
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double start = ThreadSeconds();
    for (int p = 0; p < passes; ++p) {
      if (copy) {
        std::memcpy(out.data(), in.data(), n * sizeof(float));
      } else {
        loops->round_float(in.data(), out.data(), n, 0, grid, rounding, random);
      }
    }
    best = std::min(best, (ThreadSeconds() - start) / passes);
  }
  uint64_t checksum = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &out[i], 4);
    checksum = (checksum ^ bits) * 0x100000001B3ull;  // FNV-1a style
  }
  std::printf("%s %s %s %.2f MB: %.4f ns/element, checksum %016llx\n", loops->isa,
              format.c_str(), rounding_name.c_str(), mbytes, 1e9 * best / n,
              static_cast<unsigned long long>(checksum));
  return 0;
}
