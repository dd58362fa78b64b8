// CPU kernels of LowprecDfpConv2d / LowprecDfpConv3d and their
// BackpropFilter ops (registered in ops/dfp_conv_ops.cc): NHWC / NDHWC
// convolutions as implicit INT16 GEMMs, one kernel per op and spatial rank
// over one patch gather (conv_gather.h; a 2-D convolution is a 3-D one of
// depth 1).  The patch matrix is never materialized: the GEMM's packing
// gathers it from the input (dfp_gemm_conv_pack.h) while rounding it to the
// input's shared exponent, exactly as LowprecDfpMatmulFused packs a
// materialized patch matrix.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#ifdef __SSE__
#include <xmmintrin.h>
#endif

#include "batched_gemm_common.h"
#include "conv_gather_attrs.h"
#include "dfp_gemm.h"
#include "dfp_gemm_op_common.h"
#include "float_environment.h"
#include "number_formats.h"
#include "rounding_loops.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_lowprec {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

namespace {

// out [cols, rows] = in [rows, cols]^T, in blocks of kRows rows (one
// block's rows stay in L1 while its columns are written out, each a
// contiguous run of kRows floats), blocks split over the op's threads.
void TransposeRows(OpKernelContext* ctx, const float* in, int64_t rows, int64_t cols,
                   float* out) {
  constexpr int64_t kRows = 64;
  const int64_t blocks = (rows + kRows - 1) / kRows;
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(blocks, 2 * kRows * cols, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t r0 = blk * kRows, r1 = r0 + kRows < rows ? r0 + kRows : rows;
      int64_t c0 = 0;
#ifdef __SSE__
      // 4 x 4 tiles through registers (SSE is in every x86-64 build): a
      // scalar element-by-element copy took 1.8 ns an element (the CNN's
      // 36864 x 64 error: 4 ms of CPU time).
      if (r1 - r0 == kRows) {
        for (; c0 + 4 <= cols; c0 += 4) {
          for (int64_t r = r0; r < r1; r += 4) {
            __m128 v0 = _mm_loadu_ps(in + r * cols + c0);
            __m128 v1 = _mm_loadu_ps(in + (r + 1) * cols + c0);
            __m128 v2 = _mm_loadu_ps(in + (r + 2) * cols + c0);
            __m128 v3 = _mm_loadu_ps(in + (r + 3) * cols + c0);
            _MM_TRANSPOSE4_PS(v0, v1, v2, v3);
            _mm_storeu_ps(out + c0 * rows + r, v0);
            _mm_storeu_ps(out + (c0 + 1) * rows + r, v1);
            _mm_storeu_ps(out + (c0 + 2) * rows + r, v2);
            _mm_storeu_ps(out + (c0 + 3) * rows + r, v3);
          }
        }
      }
#endif
      for (int64_t c = c0; c < cols; ++c) {
        float* o = out + c * rows;
        for (int64_t r = r0; r < r1; ++r) o[r] = in[r * cols + c];
      }
    }
  });
}

// The attributes both convolution ops of one spatial rank share, checked.
class ConvAttrs {
 public:
  ConvAttrs(OpKernelConstruction* ctx, int rank) : geometry_(ctx, rank) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bits", &spec_.bits));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("extra_shift", &spec_.extra_shift));
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

  // The gather of x's patches for filters of spatial sizes k (rank of
  // them).
  ConvGather Gather(const Tensor& x, const int64_t* k) const { return geometry_.Gather(x, k); }

  const ConvGatherAttrs& geometry() const { return geometry_; }

  // Per-tensor exponents of a and b; where the fused rounding is not exact
  // for them, a and b are rounded into temporaries here (quantize_dfp's own
  // loops, the same values) and *round is false.
  bool Quantize(OpKernelContext* ctx, const Tensor& a, const Tensor& b, const float** a_data,
                const float** b_data, int32_t* ea, int32_t* eb, Tensor* a_tmp, Tensor* b_tmp,
                bool* round) const {
    *a_data = a.flat<float>().data();
    *b_data = b.flat<float>().data();
    DfpSharedExponents(ctx, loops_, spec_, *a_data, a.NumElements(), *b_data, b.NumElements(),
                       ea, eb);
    *round = dfp_gemm::FusedRoundingIsExact(*ea) && dfp_gemm::FusedRoundingIsExact(*eb);
    if (*round) return true;
    for (int t = 0; t < 2; ++t) {
      const Tensor& src = t == 0 ? a : b;
      Tensor* tmp = t == 0 ? a_tmp : b_tmp;
      const float** data = t == 0 ? a_data : b_data;
      const int32_t* e = t == 0 ? ea : eb;
      auto status = ctx->allocate_temp(::tensorflow::DT_FLOAT, src.shape(), tmp);
      if (!status.ok()) {
        ctx->CtxFailure(status);
        return false;
      }
      loops_->round_dfp(*data, tmp->flat<float>().data(), src.NumElements(), 0, e, 0,
                        Rounding::kNearestEven, RandomStream());
      *data = tmp->flat<float>().data();
    }
    return true;
  }

  int64_t chunk_size() const { return chunk_size_; }
  const dfp_gemm::Kernels* kernels() const { return kernels_; }

 private:
  ConvGatherAttrs geometry_;  // strides, dilations, input_dilations, pads
  DfpSpec spec_;
  int64_t chunk_size_ = 64;
  const dfp_gemm::Kernels* kernels_ = nullptr;
  const RoundingLoops* loops_ = nullptr;
};

// y = conv(x, filters) with kRank (2 or 3) spatial axes: the GEMM
// patches(x) [N*out pixels, prod(k)*C] @ filters [prod(k)*C, O], patches
// gathered while packing.  With flip_filters, the GEMM's filters are
// flip(filters)^T (FlipFilters: the input gradient's filters), written into
// a temporary (a few KiB) instead of by ReverseV2 and Transpose ops; the
// per-tensor exponent is that of the same values, so the bits are those of
// passing the flipped filters.
template <int kRank>
class DfpConvOp : public OpKernel {
 public:
  explicit DfpConvOp(OpKernelConstruction* ctx) : OpKernel(ctx), attrs_(ctx, kRank) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("flip_filters", &flip_filters_));
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;  // float_environment.h: keep subnormals
    const Tensor& x = ctx->input(0);
    Tensor flipped;
    if (flip_filters_) {
      if (!FlipFilters<kRank>(ctx, x, ctx->input(1), &flipped)) return;
    } else if (!CheckConvForwardOperands(ctx, x, ctx->input(1), kRank)) {
      return;
    }
    const Tensor& filters = flip_filters_ ? flipped : ctx->input(1);
    int64_t k[kRank];
    for (int a = 0; a < kRank; ++a) k[a] = filters.dim_size(a);
    ConvGather g = attrs_.Gather(x, k);
    const int64_t channels_out = filters.dim_size(kRank + 1);
    Tensor* out = nullptr;
    const TensorShape y_shape = attrs_.geometry().OutputShape(g, channels_out);
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, y_shape, &out));
    Tensor* overflow = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &overflow));
    overflow->scalar<int64_t>()() = 0;
    if (out->NumElements() == 0) return;

    const float *x_data, *w_data;
    int32_t ex, ew;
    Tensor x_tmp, w_tmp;
    bool round;
    if (!attrs_.Quantize(ctx, x, filters, &x_data, &w_data, &ex, &ew, &x_tmp, &w_tmp, &round)) {
      return;
    }
    g.input = x_data;
    dfp_gemm::Problem p;
    p.batch = 1;
    p.m = g.Rows();
    p.k = g.Columns();
    p.n = channels_out;
    p.a = x_data;  // (not read: a_patches)
    p.a_patches = &g;
    p.b = w_data;  // [prod(k)*C, O] row-major
    p.ea = &ex;    // strides 0: one exponent
    p.eb = &ew;
    p.block_size = p.k > 0 ? p.k : 1;
    p.chunk_size = attrs_.chunk_size();
    p.round_inputs = round;
    p.out = out->flat<float>().data();
    RunDfpGemm(ctx, attrs_.kernels(), p, (p.k + p.chunk_size - 1) / p.chunk_size, overflow);
  }

 private:
  ConvAttrs attrs_;
  bool flip_filters_ = false;
};

// Columns of the DFP GEMM's B tiles for n columns (dfp_gemm_driver.h's Gemm:
// 32, 48 or 64 wide, the narrowest padding; 48 past 256 columns).
int64_t PaddedTileColumns(int64_t n) {
  auto up = [n](int64_t w) { return (n + w - 1) / w * w; };
  if (n > 256) return up(48);
  return std::min(up(32), std::min(up(48), up(64)));
}

// Which orientation the filter gradient's GEMM takes for gemm_a 'auto':
// patches^T @ dy (no copies of dy or of the result, no padded 32-column B
// panels for a handful of patch columns) unless dy^T @ patches does fewer
// than half its padded multiply-adds (rows padded to the micro-tile's 6,
// columns to the B tile width).  Measured on the Zen 4 (avx512 tier,
// benchmarks/results/dfp16_conv_dfilters_orientation.md; ratio = dy's
// padded multiply-adds / patches'): patches^T @ dy about 3.4x faster for 9
// columns x 32 channels (ratio 3.0), 1.8x for 27 x 16 (ratio 0.6: the
// copies outweigh the padding), even for 288 x 64 (ratio 1.03); dy^T @
// patches about 1.7x faster for 2304 x 8 (ratio 0.375) and 1.8x for 576 x 4
// (ratio 0.19).
bool PatchesAsA(int64_t columns, int64_t channels_out) {
  auto rows = [](int64_t m) { return (m + 5) / 6 * 6; };
  const double patches_macs =
      static_cast<double>(rows(columns)) * PaddedTileColumns(channels_out);
  const double dy_macs = static_cast<double>(rows(channels_out)) * PaddedTileColumns(columns);
  return !(2 * dy_macs < patches_macs);
}

// d(filters) = patches(x)^T @ dy [prod(k)*C, O] over the output pixels, as
// one INT16 GEMM in either orientation (gemm_a):
// - 'patches': a = patches(x)^T [columns, pixels], gathered transposed while
//   packing the A panels (dfp_gemm_conv_pack.h), b = dy [pixels, O]
//   row-major: the result is the filter layout;
// - 'dy': (dy^T @ patches(x))^T, the patch matrix as the GEMM's b, gathered
//   one patch row per K step, dy^T copied out (TransposeRows) so that the
//   GEMM's a is row-major, and the [O, columns] result transposed.
// The same products summed in the same (pixel) order, chunk by chunk: the
// same bits and the same overflow count.
template <int kRank>
class DfpConvBackpropFilterOp : public OpKernel {
 public:
  explicit DfpConvBackpropFilterOp(OpKernelConstruction* ctx)
      : OpKernel(ctx), attrs_(ctx, kRank) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("filter_size", &filter_size_));
    bool ok = filter_size_.size() == static_cast<size_t>(kRank);
    for (int64_t v : filter_size_) ok = ok && v >= 1;
    OP_REQUIRES(ctx, ok,
                InvalidArgument("filter_size must be ", kRank, " positive ints ",
                                ConvAxisNames(kRank)));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("gemm_a", &gemm_a_));
    OP_REQUIRES(ctx, gemm_a_ == "auto" || gemm_a_ == "patches" || gemm_a_ == "dy",
                InvalidArgument("gemm_a must be 'auto', 'patches' or 'dy', got '", gemm_a_,
                                "'"));
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;
    const Tensor& x = ctx->input(0);
    const Tensor& dy = ctx->input(1);
    if (!CheckConvRank(ctx, x, kRank + 2, "x", ConvInputLayout(kRank))) return;
    ConvGather g = attrs_.Gather(x, filter_size_.data());
    if (!CheckConvErrorShape(ctx, attrs_.geometry(), g, dy)) return;
    const int64_t channels_out = dy.dim_size(kRank + 1);
    TensorShape filter_shape;
    for (int64_t v : filter_size_) filter_shape.AddDim(v);
    filter_shape.AddDim(g.channels);
    filter_shape.AddDim(channels_out);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, filter_shape, &out));
    Tensor* overflow = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &overflow));
    overflow->scalar<int64_t>()() = 0;
    if (out->NumElements() == 0) return;

    const float *dy_data, *x_data;
    int32_t edy, ex;
    Tensor dy_tmp, x_tmp;
    bool round;
    if (!attrs_.Quantize(ctx, dy, x, &dy_data, &x_data, &edy, &ex, &dy_tmp, &x_tmp, &round)) {
      return;
    }
    g.input = x_data;
    const int64_t columns = g.Columns();
    const int64_t pixels = g.Rows();
    dfp_gemm::Problem p;
    p.batch = 1;
    p.k = pixels;
    p.block_size = p.k > 0 ? p.k : 1;
    p.chunk_size = attrs_.chunk_size();
    p.round_inputs = round;
    const int64_t chains = (p.k + p.chunk_size - 1) / p.chunk_size;
    if (gemm_a_ == "patches" || (gemm_a_ == "auto" && PatchesAsA(columns, channels_out))) {
      p.m = columns;
      p.n = channels_out;
      p.a = x_data;  // (not read: a_patches)
      p.a_patches = &g;
      p.transpose_a = true;  // a = patches^T [columns, pixels]
      p.b = dy_data;  // [pixels, O] row-major
      p.ea = &ex;
      p.eb = &edy;
      p.out = out->flat<float>().data();  // [columns, O]: the filter layout
      RunDfpGemm(ctx, attrs_.kernels(), p, chains, overflow);
      return;
    }
    Tensor transposed;  // [O, prod(k)*C]
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT,
                                           TensorShape({channels_out, columns}), &transposed));
    // a = dy^T [O, pixels], written out: packed as a transposed a, each A
    // panel (6 of the O channels) read 24 bytes of every 256-byte row of dy
    // and converted 6 lanes at a time, 36864 rows per panel: more time than
    // the whole GEMM of the CNN's second layer.  The copy costs one pass
    // over dy, and the GEMM then packs K-contiguous rows.
    Tensor dy_transposed;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT,
                                           TensorShape({channels_out, pixels}), &dy_transposed));
    TransposeRows(ctx, dy_data, pixels, channels_out, dy_transposed.flat<float>().data());
    p.m = channels_out;
    p.n = columns;
    p.a = dy_transposed.flat<float>().data();  // [O, pixels]
    p.b = x_data;  // (not read: b_patches)
    p.b_patches = &g;
    p.ea = &edy;
    p.eb = &ex;
    p.out = transposed.flat<float>().data();
    RunDfpGemm(ctx, attrs_.kernels(), p, chains, overflow);
    if (!ctx->status().ok()) return;
    const float* t = transposed.flat<float>().data();
    float* o = out->flat<float>().data();
    for (int64_t r = 0; r < columns; ++r) {
      for (int64_t c = 0; c < channels_out; ++c) o[r * channels_out + c] = t[c * columns + r];
    }
  }

 private:
  ConvAttrs attrs_;
  std::vector<int64_t> filter_size_;
  std::string gemm_a_;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("LowprecDfpConv2d").Device(DEVICE_CPU), DfpConvOp<2>);
REGISTER_KERNEL_BUILDER(Name("LowprecDfpConv2dBackpropFilter").Device(DEVICE_CPU),
                        DfpConvBackpropFilterOp<2>);
REGISTER_KERNEL_BUILDER(Name("LowprecDfpConv3d").Device(DEVICE_CPU), DfpConvOp<3>);
REGISTER_KERNEL_BUILDER(Name("LowprecDfpConv3dBackpropFilter").Device(DEVICE_CPU),
                        DfpConvBackpropFilterOp<3>);

}  // namespace tf_lowprec
