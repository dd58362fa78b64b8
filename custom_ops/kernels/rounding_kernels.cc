// CPU kernels of LowprecRoundToFloatFormat and LowprecQuantizeDfp.
//
// Attribute validation happens once, in the constructors; the element loops
// are in rounding_loops_impl.h (one copy per instruction set) and are sharded
// over TensorFlow's intra-op thread pool.  Stochastic rounding draws the bits
// of element i from (seed, i) only, so the result does not depend on the
// sharding or the thread count.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "float_format_attrs.h"
#include "number_formats.h"
#include "philox.h"
#include "rounding_loops.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/lib/core/threadpool.h"

namespace tf_lowprec {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

namespace {

// Elements per work unit handed to the thread pool (a multiple of the loops'
// chunk of 512 elements keeps their Philox blocks whole, which only matters
// for speed: the bits of an element never depend on the sharding).
constexpr int64_t kUnit = 4096;

Rounding ParseRounding(const std::string& s) {
  if (s == "stochastic") return Rounding::kStochastic;
  if (s == "toward_zero") return Rounding::kTowardZero;
  return Rounding::kNearestEven;  // the attr's allowed values are checked by TF
}

// Reads the attrs shared by both ops.
void GetCommonAttrs(OpKernelConstruction* ctx, Rounding* rounding, int32_t* random_bits,
                    const RoundingLoops** loops) {
  std::string rounding_name, isa;
  OP_REQUIRES_OK(ctx, ctx->GetAttr("rounding", &rounding_name));
  OP_REQUIRES_OK(ctx, ctx->GetAttr("random_bits", random_bits));
  OP_REQUIRES_OK(ctx, ctx->GetAttr("isa", &isa));
  *rounding = ParseRounding(rounding_name);
  OP_REQUIRES(ctx, *random_bits >= 1 && *random_bits <= 32,
              InvalidArgument("random_bits must be in 1..32, got ", *random_bits));
  *loops = SelectRoundingLoops(isa.c_str());
  OP_REQUIRES(ctx, *loops != nullptr,
              InvalidArgument("isa='", isa, "' is not supported by this CPU; use 'auto' or "
                              "'portable'"));
}

void GetRandomStream(OpKernelContext* ctx, int32_t random_bits, RandomStream* stream) {
  const Tensor& seed = ctx->input(1);
  OP_REQUIRES(ctx, seed.dims() == 1 && seed.dim_size(0) == 2,
              InvalidArgument("seed must be an int64 tensor of shape [2], got shape ",
                              seed.shape().DebugString()));
  auto s = seed.flat<int64_t>();
  stream->philox = PhiloxFromSeed(static_cast<uint64_t>(s(0)), static_cast<uint64_t>(s(1)));
  stream->mask = random_bits >= 32 ? 0xFFFFFFFFu : ~(0xFFFFFFFFu >> random_bits);
  stream->half_words = random_bits <= kMaxHalfWordRandomBits;
}

// Cost of one element in CPU cycles, for the thread pool's cost model, which
// splits a job only when it amortises waking threads (Eigen: about 10^5
// cycles per extra thread), so small tensors run inline on the calling
// thread and large ones on every core.  Measured on Zen 4 with 16 MB
// tensors, memory traffic included: the AVX-512 loops take 0.6 (bf16
// nearest_even) to 3 (DFP stochastic) cycles per element, the portable
// loops about 25.
int64_t CyclesPerElement(const RoundingLoops* loops, Rounding rounding, bool dfp) {
  if (std::strcmp(loops->isa, "portable") == 0) return 25;
  const int64_t cycles = rounding == Rounding::kStochastic ? 2 : 1;
  return dfp ? cycles + 1 : cycles;
}

// Runs fn(begin, end) over [0, n) on the intra-op thread pool.
template <typename Fn>
void ParallelOverElements(OpKernelContext* ctx, int64_t n, int64_t cycles_per_element,
                          const Fn& fn) {
  const int64_t units = (n + kUnit - 1) / kUnit;
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(units, kUnit * cycles_per_element, [&](int64_t first, int64_t last) {
    fn(first * kUnit, std::min(n, last * kUnit));
  });
}

class RoundToFloatFormatOp : public OpKernel {
 public:
  explicit RoundToFloatFormatOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    FloatFormatSpec spec;
    OP_REQUIRES_OK(ctx, GetFloatFormatAttrs(ctx, &spec));
    const std::string error = DeriveFloatGrid(spec, &grid_);
    OP_REQUIRES(ctx, error.empty(), InvalidArgument(error));
    GetCommonAttrs(ctx, &rounding_, &random_bits_, &loops_);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    RandomStream random;
    GetRandomStream(ctx, random_bits_, &random);
    if (!ctx->status().ok()) return;
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    const int64_t n = x.NumElements();
    if (n == 0) return;
    const float* in = x.flat<float>().data();
    float* out = y->flat<float>().data();
    const int64_t cost = CyclesPerElement(loops_, rounding_, /*dfp=*/false);
    ParallelOverElements(ctx, n, cost, [&](int64_t begin, int64_t end) {
      loops_->round_float(in + begin, out + begin, end - begin, begin, grid_, rounding_, random);
    });
  }

 private:
  FloatGrid grid_;
  Rounding rounding_;
  int32_t random_bits_;
  const RoundingLoops* loops_;
};

class QuantizeDfpOp : public OpKernel {
 public:
  explicit QuantizeDfpOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bits", &spec_.bits));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("extra_shift", &spec_.extra_shift));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("block_size", &block_size_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("axis", &axis_));
    const std::string error = ValidateDfpSpec(spec_);
    OP_REQUIRES(ctx, error.empty(), InvalidArgument(error));
    OP_REQUIRES(ctx, block_size_ >= 0,
                InvalidArgument("block_size must be 0 (one exponent per tensor) or positive, "
                                "got ", block_size_));
    GetCommonAttrs(ctx, &rounding_, &random_bits_, &loops_);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    RandomStream random;
    GetRandomStream(ctx, random_bits_, &random);
    if (!ctx->status().ok()) return;
    const int rank = x.dims();
    // View x as [outer, length, inner] with `length` the blocked axis.
    int64_t outer = 1, length = x.NumElements(), inner = 1, block = length;
    TensorShape exponent_shape;
    if (block_size_ == 0) {
      for (int i = 0; i < rank; ++i) exponent_shape.AddDim(1);
      block = std::max<int64_t>(length, 1);
    } else {
      OP_REQUIRES(ctx, rank >= 1,
                  InvalidArgument("block_size > 0 needs x of rank >= 1 (blocks run along "
                                  "axis); use block_size 0 for scalars"));
      OP_REQUIRES(ctx, axis_ >= -rank && axis_ < rank,
                  InvalidArgument("axis must be in [", -rank, ", ", rank, "), got ", axis_));
      const int axis = axis_ < 0 ? axis_ + rank : axis_;
      outer = 1;
      inner = 1;
      length = x.dim_size(axis);
      block = block_size_;
      // The products of dimensions are at most NumElements() when x holds
      // elements; a tensor without elements may have dimensions whose
      // product overflows, and needs no [outer, length, inner] view.
      if (x.NumElements() > 0) {
        for (int i = 0; i < axis; ++i) outer *= x.dim_size(i);
        for (int i = axis + 1; i < rank; ++i) inner *= x.dim_size(i);
      }
      for (int i = 0; i < rank; ++i) {
        // Blocks along the axis, written so that a block_size near INT64_MAX
        // cannot overflow.
        const int64_t dim = i == axis ? (length == 0 ? 0 : 1 + (length - 1) / block)
                                      : x.dim_size(i);
        OP_REQUIRES_OK(ctx, exponent_shape.AddDimWithStatus(dim));
      }
    }
    Tensor* y = nullptr;
    Tensor* exponents = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, exponent_shape, &exponents));
    const int64_t n = x.NumElements();
    int32_t* exps = exponents->flat<int32_t>().data();
    if (n == 0) {
      std::fill(exps, exps + exponents->NumElements(), kDfpNoScale);
      return;
    }
    const float* in = x.flat<float>().data();
    float* out = y->flat<float>().data();
    const int64_t cost = CyclesPerElement(loops_, rounding_, /*dfp=*/true);

    if (block_size_ == 0) {
      // One exponent: per-shard maxima, then their maximum.
      const int64_t units = (n + kUnit - 1) / kUnit;
      std::vector<uint32_t> partial(units, 0);
      ParallelOverElements(ctx, n, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; b += kUnit) {
          partial[b / kUnit] = loops_->max_abs_bits_all(in + b, std::min(kUnit, end - b));
        }
      });
      const uint32_t max_bits = *std::max_element(partial.begin(), partial.end());
      exps[0] = DfpSharedExponent(max_bits, spec_);
      for (int64_t i = 1; i < exponents->NumElements(); ++i) exps[i] = exps[0];
      ParallelOverElements(ctx, n, cost, [&](int64_t begin, int64_t end) {
        loops_->round_dfp(in + begin, out + begin, end - begin, begin, exps, 0, rounding_,
                          random);
      });
      return;
    }

    const int64_t blocks = (length + block - 1) / block;
    // Phase 1: shared exponent of every (outer, block, inner) block.
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(outer * blocks, block * inner * 2, [&](int64_t first, int64_t last) {
      std::vector<uint32_t> max_bits(inner);
      for (int64_t ob = first; ob < last; ++ob) {
        const int64_t o = ob / blocks, b = ob % blocks;
        const int64_t rows = std::min(block, length - b * block);
        std::fill(max_bits.begin(), max_bits.end(), 0u);
        loops_->max_abs_bits(in + (o * length + b * block) * inner, rows, inner, inner,
                             max_bits.data());
        for (int64_t j = 0; j < inner; ++j) {
          exps[ob * inner + j] = DfpSharedExponent(max_bits[j], spec_);
        }
      }
    });
    // Phase 2: round.  With inner == 1 each block is one contiguous run with
    // one exponent; otherwise each row of `inner` elements takes a row of
    // exponents.
    if (inner == 1) {
      pool->ParallelFor(outer * blocks, block * cost, [&](int64_t first, int64_t last) {
        for (int64_t ob = first; ob < last; ++ob) {
          const int64_t o = ob / blocks, b = ob % blocks;
          const int64_t start = o * length + b * block;
          const int64_t count = std::min(block, length - b * block);
          loops_->round_dfp(in + start, out + start, count, start, exps + ob, 0, rounding_,
                            random);
        }
      });
    } else {
      pool->ParallelFor(outer * length, inner * cost, [&](int64_t first, int64_t last) {
        for (int64_t row = first; row < last; ++row) {
          const int64_t o = row / length, t = row % length;
          const int64_t start = row * inner;
          loops_->round_dfp(in + start, out + start, inner, start,
                            exps + (o * blocks + t / block) * inner, 1, rounding_, random);
        }
      });
    }
  }

 private:
  DfpSpec spec_;
  int32_t block_size_;
  int32_t axis_;
  Rounding rounding_;
  int32_t random_bits_;
  const RoundingLoops* loops_;
};

REGISTER_KERNEL_BUILDER(Name("LowprecRoundToFloatFormat").Device(DEVICE_CPU),
                        RoundToFloatFormatOp);
REGISTER_KERNEL_BUILDER(Name("LowprecQuantizeDfp").Device(DEVICE_CPU), QuantizeDfpOp);

}  // namespace
}  // namespace tf_lowprec
