// CPU kernels of LowprecDfpConv2d / LowprecDfpConv3d and their
// BackpropFilter ops (registered in ops/dfp_conv_ops.cc): NHWC / NDHWC
// convolutions as implicit INT16 GEMMs, one kernel per op and spatial rank
// over one patch gather (a 2-D convolution is a 3-D one of depth 1).  The
// patch matrix is never materialized: the GEMM's packing gathers it from
// the input (dfp_gemm_conv_pack.h, ConvGather in dfp_gemm.h) while rounding
// it to the input's shared exponent, exactly as LowprecDfpMatmulFused packs
// a materialized patch matrix.
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

namespace tf_lowprec {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

namespace {

// Output size of one spatial axis: the dilated input (size - 1) * l + 1,
// padded, covered by windows of (k - 1) * d + 1 every s.  0 if none fits.
int64_t OutputSize(int64_t size, int64_t k, int64_t s, int64_t d, int64_t l, int64_t before,
                   int64_t after) {
  const int64_t extent = size == 0 ? 0 : (size - 1) * l + 1;
  const int64_t room = extent + before + after - ((k - 1) * d + 1);
  return room < 0 ? 0 : room / s + 1;
}

// The spatial axes' names, for messages: "(height, width)" or "(depth,
// height, width)".
const char* AxisNames(int rank) {
  return rank == 3 ? "(depth, height, width)" : "(height, width)";
}

// The attributes both convolution ops of one spatial rank share, checked.
class ConvAttrs {
 public:
  ConvAttrs(OpKernelConstruction* ctx, int rank) : rank_(rank) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dilations", &dilations_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_dilations", &input_dilations_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pads", &pads_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bits", &spec_.bits));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("extra_shift", &spec_.extra_shift));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("chunk_size", &chunk_size_));
    std::string isa;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("isa", &isa));
    auto positive = [&](const std::vector<int64_t>& v, const char* name) {
      bool ok = v.size() == static_cast<size_t>(rank);
      for (int64_t e : v) ok = ok && e >= 1;
      OP_REQUIRES(ctx, ok,
                  InvalidArgument(name, " must be ", rank, " positive ints ", AxisNames(rank),
                                  ", got ", v.size(), " values"));
    };
    positive(strides_, "strides");
    positive(dilations_, "dilations");
    positive(input_dilations_, "input_dilations");
    bool pads_ok = pads_.size() == 2 * static_cast<size_t>(rank);
    for (int64_t e : pads_) pads_ok = pads_ok && e >= 0;
    OP_REQUIRES(ctx, pads_ok,
                InvalidArgument("pads must be ", 2 * rank, " ints >= 0 (before, after per axis ",
                                AxisNames(rank), "), got ", pads_.size(), " values"));
    const std::string error = ValidateDfpSpec(spec_);
    OP_REQUIRES(ctx, error.empty(), InvalidArgument(error));
    OP_REQUIRES(ctx, spec_.bits <= 16,
                InvalidArgument("bits must be at most 16 for the INT16 GEMM, got ", spec_.bits));
    OP_REQUIRES_OK(ctx, CheckChunkSizeAndSelectKernels(chunk_size_, isa, &kernels_));
    loops_ = SelectRoundingLoops(isa.c_str());  // supported wherever kernels_ is
  }

  // The gather of x's patches for filters of spatial sizes k (rank_ of
  // them).  A 2-D convolution is the 3-D one of depth 1: the gather's
  // leading axes that x lacks keep size, kernel, stride and dilation 1.
  dfp_gemm::ConvGather Gather(const Tensor& x, const int64_t* k) const {
    int64_t size[3] = {1, 1, 1}, ks[3] = {1, 1, 1}, s[3] = {1, 1, 1}, d[3] = {1, 1, 1};
    int64_t l[3] = {1, 1, 1}, before[3] = {0, 0, 0}, after[3] = {0, 0, 0}, out[3];
    const int skip = 3 - rank_;
    for (int a = 0; a < rank_; ++a) {
      size[skip + a] = x.dim_size(1 + a);
      ks[skip + a] = k[a];
      s[skip + a] = strides_[a];
      d[skip + a] = dilations_[a];
      l[skip + a] = input_dilations_[a];
      before[skip + a] = pads_[2 * a];
      after[skip + a] = pads_[2 * a + 1];
    }
    for (int a = 0; a < 3; ++a) {
      out[a] = OutputSize(size[a], ks[a], s[a], d[a], l[a], before[a], after[a]);
    }
    dfp_gemm::ConvGather g;
    g.batch = x.dim_size(0);
    g.depth = size[0];
    g.height = size[1];
    g.width = size[2];
    g.channels = x.dim_size(rank_ + 1);
    g.kd = ks[0];
    g.kh = ks[1];
    g.kw = ks[2];
    g.sd = s[0];
    g.sh = s[1];
    g.sw = s[2];
    g.dd = d[0];
    g.dh = d[1];
    g.dw = d[2];
    g.ld = l[0];
    g.lh = l[1];
    g.lw = l[2];
    g.pad_front = before[0];
    g.pad_top = before[1];
    g.pad_left = before[2];
    g.out_d = out[0];
    g.out_h = out[1];
    g.out_w = out[2];
    return g;
  }

  // The output grid [N, *out] of g (rank_ spatial sizes) followed by last.
  TensorShape OutputShape(const dfp_gemm::ConvGather& g, int64_t last) const {
    TensorShape shape({g.batch});
    if (rank_ == 3) shape.AddDim(g.out_d);
    shape.AddDim(g.out_h);
    shape.AddDim(g.out_w);
    shape.AddDim(last);
    return shape;
  }

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

  int rank() const { return rank_; }
  int64_t chunk_size() const { return chunk_size_; }
  const dfp_gemm::Kernels* kernels() const { return kernels_; }

 private:
  int rank_;
  std::vector<int64_t> strides_, dilations_, input_dilations_, pads_;
  DfpSpec spec_;
  int64_t chunk_size_ = 64;
  const dfp_gemm::Kernels* kernels_ = nullptr;
  const RoundingLoops* loops_ = nullptr;
};

bool CheckRank(OpKernelContext* ctx, const Tensor& t, int rank, const char* name,
               const char* layout) {
  if (t.dims() == rank) return true;
  ctx->CtxFailure(InvalidArgument(name, " must have rank ", rank, " ", layout, ", got shape ",
                                  t.shape().DebugString()));
  return false;
}

// Layouts of x and the filters for messages, by spatial rank.
const char* InputLayout(int rank) {
  return rank == 3 ? "[batch, depth, height, width, channels]"
                   : "[batch, height, width, channels]";
}

// y = conv(x, filters) with kRank (2 or 3) spatial axes: the GEMM
// patches(x) [N*out pixels, prod(k)*C] @ filters [prod(k)*C, O], patches
// gathered while packing.
template <int kRank>
class DfpConvOp : public OpKernel {
 public:
  explicit DfpConvOp(OpKernelConstruction* ctx) : OpKernel(ctx), attrs_(ctx, kRank) {}

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;  // float_environment.h: keep subnormals
    const Tensor& x = ctx->input(0);
    const Tensor& filters = ctx->input(1);
    if (!CheckRank(ctx, x, kRank + 2, "x", InputLayout(kRank))) return;
    if (!CheckRank(ctx, filters, kRank + 2, "filters",
                   kRank == 3 ? "[kd, kh, kw, channels, out_channels]"
                              : "[kh, kw, channels, out_channels]")) {
      return;
    }
    OP_REQUIRES(ctx, filters.dim_size(kRank) == x.dim_size(kRank + 1),
                InvalidArgument("x has ", x.dim_size(kRank + 1), " channels but filters expect ",
                                filters.dim_size(kRank)));
    int64_t k[kRank];
    for (int a = 0; a < kRank; ++a) {
      k[a] = filters.dim_size(a);
      OP_REQUIRES(ctx, k[a] >= 1,
                  InvalidArgument("filters must have spatial sizes >= 1, got ",
                                  filters.shape().DebugString()));
    }
    dfp_gemm::ConvGather g = attrs_.Gather(x, k);
    const int64_t channels_out = filters.dim_size(kRank + 1);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, attrs_.OutputShape(g, channels_out), &out));
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
};

// d(filters) = patches(x)^T @ dy, computed as (dy^T @ patches(x))^T: the
// same products summed in the same (pixel) order, so the same bits, with
// the patch matrix as the GEMM's b, gathered one patch row per K step.
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
                                AxisNames(kRank)));
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;
    const Tensor& x = ctx->input(0);
    const Tensor& dy = ctx->input(1);
    if (!CheckRank(ctx, x, kRank + 2, "x", InputLayout(kRank))) return;
    if (!CheckRank(ctx, dy, kRank + 2, "dy", "[batch, *output spatial sizes, out_channels]")) {
      return;
    }
    dfp_gemm::ConvGather g = attrs_.Gather(x, filter_size_.data());
    const int64_t channels_out = dy.dim_size(kRank + 1);
    const TensorShape want = attrs_.OutputShape(g, channels_out);
    OP_REQUIRES(ctx, dy.shape() == want,
                InvalidArgument("dy must have shape ", want.DebugString(),
                                " for this x and geometry, got ", dy.shape().DebugString()));
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
    Tensor transposed;  // [O, prod(k)*C]
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT,
                                           TensorShape({channels_out, columns}), &transposed));
    dfp_gemm::Problem p;
    p.batch = 1;
    p.m = channels_out;
    p.k = g.Rows();
    p.n = columns;
    p.a = dy_data;  // [pixels, O]: a^T
    p.transpose_a = true;
    p.b = x_data;  // (not read: b_patches)
    p.b_patches = &g;
    p.ea = &edy;
    p.eb = &ex;
    p.block_size = p.k > 0 ? p.k : 1;
    p.chunk_size = attrs_.chunk_size();
    p.round_inputs = round;
    p.out = transposed.flat<float>().data();
    RunDfpGemm(ctx, attrs_.kernels(), p, (p.k + p.chunk_size - 1) / p.chunk_size, overflow);
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
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("LowprecDfpConv2d").Device(DEVICE_CPU), DfpConvOp<2>);
REGISTER_KERNEL_BUILDER(Name("LowprecDfpConv2dBackpropFilter").Device(DEVICE_CPU),
                        DfpConvBackpropFilterOp<2>);
REGISTER_KERNEL_BUILDER(Name("LowprecDfpConv3d").Device(DEVICE_CPU), DfpConvOp<3>);
REGISTER_KERNEL_BUILDER(Name("LowprecDfpConv3dBackpropFilter").Device(DEVICE_CPU),
                        DfpConvBackpropFilterOp<3>);

}  // namespace tf_lowprec
