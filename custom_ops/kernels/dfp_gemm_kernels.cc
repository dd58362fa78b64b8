// CPU kernels of LowprecDfpMatmul, LowprecDfpMatmulFused and
// LowprecDfpGemmCounters (registered in ops/dfp_gemm_ops.cc), and the
// helpers the DFP convolution kernels share (dfp_gemm_op_common.h).  The arithmetic
// is in dfp_gemm_impl.h (one copy per tier); this file checks shapes and
// exponents, picks the tier and runs the GEMM on TensorFlow's intra-op
// thread pool.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "batched_gemm_common.h"
#include "dfp_gemm.h"
#include "dfp_gemm_op_common.h"
#include "float_environment.h"
#include "number_formats.h"
#include "rounding_loops.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"

namespace tf_lowprec {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

namespace {
std::atomic<int64_t> g_calls{0}, g_chains{0}, g_overflowed{0}, g_recomputed{0};
}  // namespace

void RunDfpGemm(OpKernelContext* ctx, const dfp_gemm::Kernels* kernels, dfp_gemm::Problem& p,
                int64_t chains_per_output, Tensor* overflow) {
  dfp_gemm::Stats stats;
  // Coarse blocks handed out as threads become free: the work items of one
  // GEMM differ in cost (tiles whose chunks run the tracked path take about
  // twice as long as proved ones), which the cost model's even split leaves
  // to one thread (a dfp16 MLP step used 1.44 of its 2 cores, FP32 1.7).
  kernels->gemm(p, IntraOpParallelFor(ctx, /*coarse_blocks=*/true), &stats);
  OP_REQUIRES(ctx, stats.invalid_inputs == 0,
              InvalidArgument(stats.invalid_inputs, " elements of a or b are not I * 2^E "
                              "with an integer |I| <= 32767 for their exponent: pass the "
                              "outputs of quantize_dfp (bits <= 16)"));
  overflow->scalar<int64_t>()() = stats.overflowed_chunks;
  g_calls.fetch_add(1, std::memory_order_relaxed);
  g_chains.fetch_add(p.batch * p.m * p.n * chains_per_output, std::memory_order_relaxed);
  g_overflowed.fetch_add(stats.overflowed_chunks, std::memory_order_relaxed);
  g_recomputed.fetch_add(stats.recomputed_tiles, std::memory_order_relaxed);
}

void AddDfpGemmCounters(int64_t calls, int64_t chains, int64_t overflowed) {
  g_calls.fetch_add(calls, std::memory_order_relaxed);
  g_chains.fetch_add(chains, std::memory_order_relaxed);
  g_overflowed.fetch_add(overflowed, std::memory_order_relaxed);
}

Status CheckChunkSizeAndSelectKernels(int64_t chunk_size, const std::string& isa,
                                      const dfp_gemm::Kernels** kernels) {
  if (chunk_size < 2 || chunk_size % 2 != 0 || chunk_size > (1 << 20)) {
    return InvalidArgument("chunk_size must be an even number in 2..2^20, got ", chunk_size);
  }
  *kernels = dfp_gemm::SelectKernels(isa.c_str());
  if (*kernels == nullptr) {
    return InvalidArgument("isa='", isa, "' is not supported by this CPU (avx2 needs "
                           "AVX2, FMA and F16C; avx512 needs AVX512_VNNI); use 'auto' "
                           "or 'portable'");
  }
  return Status();
}

void DfpSharedExponents(OpKernelContext* ctx, const RoundingLoops* loops, const DfpSpec& spec,
                        const float* x, int64_t nx, const float* y, int64_t ny, int32_t* ex,
                        int32_t* ey) {
  constexpr int64_t kUnit = 1 << 16;
  const int64_t ux = (nx + kUnit - 1) / kUnit, uy = (ny + kUnit - 1) / kUnit;
  std::vector<uint32_t> partial(ux + uy, 0);
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(ux + uy, kUnit, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const float* data = u < ux ? x + u * kUnit : y + (u - ux) * kUnit;
      const int64_t n = u < ux ? std::min(kUnit, nx - u * kUnit)
                               : std::min(kUnit, ny - (u - ux) * kUnit);
      partial[u] = loops->max_abs_bits_all(data, n);
    }
  });
  const uint32_t mx = ux == 0 ? 0 : *std::max_element(partial.begin(), partial.begin() + ux);
  const uint32_t my = uy == 0 ? 0 : *std::max_element(partial.begin() + ux, partial.end());
  *ex = DfpSharedExponent(mx, spec);
  *ey = DfpSharedExponent(my, spec);
}

namespace {

class DfpMatmulOp : public OpKernel {
 public:
  explicit DfpMatmulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_a", &transpose_a_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_b", &transpose_b_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("block_size", &block_size_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("chunk_size", &chunk_size_));
    std::string isa;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("isa", &isa));
    OP_REQUIRES(ctx, block_size_ >= 0,
                InvalidArgument("block_size must be 0 (one block) or positive, got ",
                                block_size_));
    OP_REQUIRES_OK(ctx, CheckChunkSizeAndSelectKernels(chunk_size_, isa, &kernels_));
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;  // float_environment.h: keep subnormals
    const Tensor& a = ctx->input(0);
    const Tensor& ea = ctx->input(1);
    const Tensor& b = ctx->input(2);
    const Tensor& eb = ctx->input(3);
    GemmShape shape;
    if (!CheckGemmShape(ctx, a, b, transpose_a_, transpose_b_, &shape)) return;
    const int64_t batch_a = shape.batch_a, batch_b = shape.batch_b, batch = shape.batch;
    const int64_t m = shape.m, n = shape.n, k = shape.k;
    const int64_t block = block_size_ == 0 ? (k > 0 ? k : 1) : block_size_;
    const int64_t blocks = k == 0 ? 0 : 1 + (k - 1) / block;  // no overflow near INT64_MAX
    // Exponents: [batch_a or 1, m or 1, blocks] and [batch_b or 1, blocks, n or 1].
    auto check_exponents = [&](const Tensor& e, int64_t d0, int64_t d1, int64_t d2,
                               const char* name) -> bool {
      bool ok = e.dims() == 3 && (e.dim_size(0) == d0 || e.dim_size(0) == 1) &&
                (e.dim_size(1) == d1 || e.dim_size(1) == 1) &&
                (e.dim_size(2) == d2 || e.dim_size(2) == 1) &&
                (e.NumElements() > 0 || d0 == 0 || d1 == 0 || d2 == 0);
      if (!ok) {
        ctx->CtxFailure(InvalidArgument(name, " must have shape [", d0, " or 1, ", d1,
                                        " or 1, ", d2, " or 1], got ",
                                        e.shape().DebugString()));
      }
      return ok;
    };
    if (!check_exponents(ea, batch_a, m, blocks, "a_exponents")) return;
    if (!check_exponents(eb, batch_b, blocks, n, "b_exponents")) return;
    OP_REQUIRES(ctx, block_size_ == 0 || (ea.dim_size(2) == blocks && eb.dim_size(1) == blocks),
                InvalidArgument("with block_size=", block_size_, " the exponents need ", blocks,
                                " blocks along k"));

    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batch, m, n}), &out));
    Tensor* overflow = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &overflow));
    overflow->scalar<int64_t>()() = 0;
    if (batch == 0 || m == 0 || n == 0) return;

    dfp_gemm::Problem p;
    SetGemmOperands(shape, a.flat<float>().data(), b.flat<float>().data(), transpose_a_,
                    transpose_b_, &p);
    auto stride = [](const Tensor& e, int dim) -> int64_t {
      if (e.dim_size(dim) == 1) return 0;
      int64_t s = 1;
      for (int d = dim + 1; d < e.dims(); ++d) s *= e.dim_size(d);
      return s;
    };
    static const int32_t kNoExponent = 0;  // k == 0: never read for data
    p.ea = ea.NumElements() > 0 ? ea.flat<int32_t>().data() : &kNoExponent;
    p.ea_batch_stride = ea.NumElements() > 0 ? stride(ea, 0) : 0;
    p.ea_row_stride = ea.NumElements() > 0 ? stride(ea, 1) : 0;
    p.ea_block_stride = ea.NumElements() > 0 ? stride(ea, 2) : 0;
    p.eb = eb.NumElements() > 0 ? eb.flat<int32_t>().data() : &kNoExponent;
    p.eb_batch_stride = eb.NumElements() > 0 ? stride(eb, 0) : 0;
    p.eb_block_stride = eb.NumElements() > 0 ? stride(eb, 1) : 0;
    p.eb_col_stride = eb.NumElements() > 0 ? stride(eb, 2) : 0;
    p.block_size = block;
    p.chunk_size = chunk_size_;
    p.out = out->flat<float>().data();

    int64_t chains_per_output = 0;
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t len = (blk + 1) * block <= k ? block : k - blk * block;
      chains_per_output += (len + chunk_size_ - 1) / chunk_size_;
    }
    RunDfpGemm(ctx, kernels_, p, chains_per_output, overflow);
  }

 private:
  bool transpose_a_ = false, transpose_b_ = false;
  int64_t block_size_ = 0, chunk_size_ = 64;
  const dfp_gemm::Kernels* kernels_ = nullptr;
};

// quantize_dfp (nearest_even, one exponent per tensor) of both operands fused
// into the GEMM: the exponents come from the operands' largest finite
// magnitudes, and the packing rounds the mantissas itself.
class DfpMatmulFusedOp : public OpKernel {
 public:
  explicit DfpMatmulFusedOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bits", &spec_.bits));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("extra_shift", &spec_.extra_shift));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_a", &transpose_a_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose_b", &transpose_b_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("chunk_size", &chunk_size_));
    std::string isa;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("isa", &isa));
    const std::string error = ValidateDfpSpec(spec_);
    OP_REQUIRES(ctx, error.empty(), InvalidArgument(error));
    OP_REQUIRES(ctx, spec_.bits <= 16,
                InvalidArgument("bits must be at most 16 for the INT16 GEMM, got ", spec_.bits));
    OP_REQUIRES_OK(ctx, CheckChunkSizeAndSelectKernels(chunk_size_, isa, &kernels_));
    loops_ = SelectRoundingLoops(isa.c_str());  // supported wherever kernels_ is
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;  // float_environment.h: keep subnormals
    const Tensor& a = ctx->input(0);
    const Tensor& b = ctx->input(1);
    GemmShape shape;
    if (!CheckGemmShape(ctx, a, b, transpose_a_, transpose_b_, &shape)) return;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({shape.batch, shape.m, shape.n}),
                                             &out));
    Tensor* overflow = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &overflow));
    overflow->scalar<int64_t>()() = 0;
    if (shape.batch == 0 || shape.m == 0 || shape.n == 0) return;

    const float* a_data = a.flat<float>().data();
    const float* b_data = b.flat<float>().data();
    int32_t ea, eb;
    SharedExponents(ctx, a_data, a.NumElements(), b_data, b.NumElements(), &ea, &eb);
    // Outside the exponent range where the fused rounding is exact, round
    // into temporaries with quantize_dfp's own loops (same results).
    Tensor a_rounded, b_rounded;
    const bool fused = dfp_gemm::FusedRoundingIsExact(ea) && dfp_gemm::FusedRoundingIsExact(eb);
    if (!fused) {
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT, a.shape(), &a_rounded));
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT, b.shape(), &b_rounded));
      RoundToExponent(a_data, a.NumElements(), &ea, a_rounded.flat<float>().data());
      RoundToExponent(b_data, b.NumElements(), &eb, b_rounded.flat<float>().data());
      a_data = a_rounded.flat<float>().data();
      b_data = b_rounded.flat<float>().data();
    }

    dfp_gemm::Problem p;
    SetGemmOperands(shape, a_data, b_data, transpose_a_, transpose_b_, &p);
    p.ea = &ea;  // strides 0: one exponent
    p.eb = &eb;
    p.block_size = shape.k > 0 ? shape.k : 1;
    p.chunk_size = chunk_size_;
    p.round_inputs = fused;
    p.out = out->flat<float>().data();
    RunDfpGemm(ctx, kernels_, p, (shape.k + chunk_size_ - 1) / chunk_size_, overflow);
  }

 private:
  // quantize_dfp's per-tensor exponents of x and y: from their largest
  // finite magnitudes (one parallel pass over both).
  void SharedExponents(OpKernelContext* ctx, const float* x, int64_t nx, const float* y,
                       int64_t ny, int32_t* ex, int32_t* ey) {
    DfpSharedExponents(ctx, loops_, spec_, x, nx, y, ny, ex, ey);
  }

  void RoundToExponent(const float* x, int64_t n, const int32_t* e, float* out) {
    loops_->round_dfp(x, out, n, 0, e, 0, Rounding::kNearestEven, RandomStream());
  }

  DfpSpec spec_;
  bool transpose_a_ = false, transpose_b_ = false;
  int64_t chunk_size_ = 64;
  const dfp_gemm::Kernels* kernels_ = nullptr;
  const RoundingLoops* loops_ = nullptr;
};

class DfpGemmCountersOp : public OpKernel {
 public:
  explicit DfpGemmCountersOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reset", &reset_));
  }

  void Compute(OpKernelContext* ctx) override {
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({4}), &out));
    auto v = out->flat<int64_t>();
    if (reset_) {
      v(0) = g_calls.exchange(0);
      v(1) = g_chains.exchange(0);
      v(2) = g_overflowed.exchange(0);
      v(3) = g_recomputed.exchange(0);
    } else {
      v(0) = g_calls.load();
      v(1) = g_chains.load();
      v(2) = g_overflowed.load();
      v(3) = g_recomputed.load();
    }
  }

 private:
  bool reset_ = false;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("LowprecDfpMatmul").Device(DEVICE_CPU), DfpMatmulOp);
REGISTER_KERNEL_BUILDER(Name("LowprecDfpMatmulFused").Device(DEVICE_CPU), DfpMatmulFusedOp);
REGISTER_KERNEL_BUILDER(Name("LowprecDfpGemmCounters").Device(DEVICE_CPU), DfpGemmCountersOp);

}  // namespace tf_lowprec
