// CPU kernel of LowprecQuantizeBlockScaled (OCP MX, NVFP4).
//
// Attribute validation happens once, in the constructor; the numerics are
// block_scaling.h's steps, run by the rounding loops' table
// (RoundingLoops::quantize_block_scaled, one copy per instruction set,
// chosen by SelectRoundingLoops) over TensorFlow's intra-op thread pool.
// Stochastic rounding draws the bits of element i from (seed, i) only, so the
// result does not depend on the sharding or the thread count.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "block_scaling.h"
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

// Elements per work unit of the tensor-amax pass.
constexpr int64_t kAmaxUnit = 1 << 16;

NanEncoding ParseNanEncoding(const std::string& s) {
  return s == "all_ones"        ? NanEncoding::kAllOnes
         : s == "negative_zero" ? NanEncoding::kNegativeZero
         : s == "none"          ? NanEncoding::kNone
                                : NanEncoding::kIeee;  // the op restricts the values
}

class QuantizeBlockScaledOp : public OpKernel {
 public:
  explicit QuantizeBlockScaledOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    FloatFormatSpec element;
    OP_REQUIRES_OK(ctx, GetFloatFormatAttrs(ctx, &element));
    int64_t block_size;
    int32_t block_size_attr;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("block_size", &block_size_attr));
    block_size = block_size_attr;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("axis", &axis_));
    std::string scale_kind, scale_nan, nonfinite_blocks, rounding, isa;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale_kind", &scale_kind));
    FloatFormatSpec scale;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale_exponent_bits", &scale.exponent_bits));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale_mantissa_bits", &scale.mantissa_bits));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale_exponent_bias", &scale.exponent_bias));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale_subnormals", &scale.subnormals));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale_nan_encoding", &scale_nan));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale_flush_input_denormals",
                                     &scale.flush_input_denormals));
    scale.nan_encoding = ParseNanEncoding(scale_nan);
    scale.overflow = Overflow::kSaturate;  // block scales saturate (BlockFormat)
    bool tensor_scale;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("tensor_scale", &tensor_scale));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("nonfinite_blocks", &nonfinite_blocks));
    const bool float_scale = scale_kind == "float";
    if (!float_scale) {
      // E8M0 is fixed: the scale attributes must keep their defaults, so
      // that a caller who meant a float scale is told.
      OP_REQUIRES(ctx, scale.exponent_bits == 8 && scale.mantissa_bits == 0 &&
                           scale.exponent_bias == 127,
                  InvalidArgument("scale_kind='e8m0' takes no scale format: leave "
                                  "scale_exponent_bits=8, scale_mantissa_bits=0, "
                                  "scale_exponent_bias=127, or use scale_kind='float'"));
    }
    const std::string error = DeriveBlockScaledSpec(
        element, float_scale ? &scale : nullptr, block_size, tensor_scale,
        nonfinite_blocks == "nan", &spec_);
    OP_REQUIRES(ctx, error.empty(), InvalidArgument(error));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rounding", &rounding));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("random_bits", &random_bits_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("isa", &isa));
    rounding_ = rounding == "stochastic"    ? Rounding::kStochastic
                : rounding == "toward_zero" ? Rounding::kTowardZero
                                            : Rounding::kNearestEven;
    OP_REQUIRES(ctx, random_bits_ >= 1 && random_bits_ <= 32,
                InvalidArgument("random_bits must be in 1..32, got ", random_bits_));
    loops_ = SelectRoundingLoops(isa.c_str());
    OP_REQUIRES(ctx, loops_ != nullptr,
                InvalidArgument("isa='", isa, "' is not supported by this CPU; use 'auto' or "
                                "'portable'"));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& seed = ctx->input(1);
    OP_REQUIRES(ctx, seed.dims() == 1 && seed.dim_size(0) == 2,
                InvalidArgument("seed must be an int64 tensor of shape [2], got shape ",
                                seed.shape().DebugString()));
    const int rank = x.dims();
    OP_REQUIRES(ctx, rank >= 1,
                InvalidArgument("x must have rank >= 1 (blocks run along axis), got a scalar"));
    OP_REQUIRES(ctx, axis_ >= -rank && axis_ < rank,
                InvalidArgument("axis must be in [", -rank, ", ", rank, "), got ", axis_));
    const int axis = axis_ < 0 ? axis_ + rank : axis_;
    const int64_t block = spec_.block_size;
    const int64_t length = x.dim_size(axis);
    const int64_t blocks = length == 0 ? 0 : 1 + (length - 1) / block;
    TensorShape scale_shape;
    for (int i = 0; i < rank; ++i) {
      OP_REQUIRES_OK(ctx, scale_shape.AddDimWithStatus(i == axis ? blocks : x.dim_size(i)));
    }
    Tensor* y = nullptr;
    Tensor* scales = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, scale_shape, &scales));
    const int64_t n = x.NumElements();
    if (n == 0) return;

    BlockScaledJob job;
    job.in = x.flat<float>().data();
    job.out = y->flat<float>().data();
    job.scales = scales->flat<float>().data();
    // The products of dimensions are at most NumElements() (> 0 here).
    for (int i = 0; i < axis; ++i) job.outer *= x.dim_size(i);
    for (int i = axis + 1; i < rank; ++i) job.inner *= x.dim_size(i);
    job.length = length;
    job.blocks = blocks;
    job.column_chunks = (job.inner + kBlockColumns - 1) / kBlockColumns;
    job.spec = &spec_;
    job.rounding = rounding_;
    auto s = seed.flat<int64_t>();
    job.random.philox = PhiloxFromSeed(static_cast<uint64_t>(s(0)), static_cast<uint64_t>(s(1)));
    job.random.mask = RandomMask(random_bits_);
    job.random.half_words = random_bits_ <= kMaxHalfWordRandomBits;

    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    if (spec_.float_scale && spec_.tensor_scale) {
      // The tensor's amax: per-shard maxima, then their maximum.
      const int64_t units = (n + kAmaxUnit - 1) / kAmaxUnit;
      std::vector<uint32_t> partial(units, 0);
      pool->ParallelFor(units, kAmaxUnit, [&](int64_t first, int64_t last) {
        for (int64_t u = first; u < last; ++u) {
          const int64_t begin = u * kAmaxUnit;
          partial[u] = loops_->max_abs_bits_all(job.in + begin, std::min(kAmaxUnit, n - begin));
        }
      });
      job.encode = TensorEncodeScale(spec_, *std::max_element(partial.begin(), partial.end()));
    }
    // Cycles per element for the pool's cost model (which splits a job only
    // when that amortises waking threads): about 3 for E8M0 scales on the
    // vector tiers, more for stochastic rounding, float scales and the
    // portable loops.
    const bool portable = std::strcmp(loops_->isa, "portable") == 0;
    int64_t cycles = portable || spec_.float_scale ? 20 : 3;
    if (rounding_ == Rounding::kStochastic) cycles += 3;
    const int64_t units = job.inner == 1 ? job.outer * blocks
                                         : job.outer * blocks * job.column_chunks;
    const int64_t elements_per_unit =
        job.inner == 1 ? block : block * std::min(job.inner, kBlockColumns);
    const RoundingLoops* loops = loops_;
    pool->ParallelFor(units, elements_per_unit * cycles, [&](int64_t first, int64_t last) {
      loops->quantize_block_scaled(job, first, last);
    });
  }

 private:
  BlockScaledSpec spec_;
  int32_t axis_;
  Rounding rounding_;
  int32_t random_bits_;
  const RoundingLoops* loops_;
};

REGISTER_KERNEL_BUILDER(Name("LowprecQuantizeBlockScaled").Device(DEVICE_CPU),
                        QuantizeBlockScaledOp);

}  // namespace
}  // namespace tf_lowprec
