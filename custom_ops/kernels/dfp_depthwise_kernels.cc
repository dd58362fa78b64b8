// CPU kernels of LowprecDfpDepthwiseConv2d and
// LowprecDfpDepthwiseConv2dBackpropFilter (registered in
// ops/dfp_depthwise_ops.cc): NHWC depthwise convolutions on INT16 mantissas,
// computed directly by the tier loops of dfp_depthwise_impl.h (no GEMM, no
// patch matrix).  This file checks the operands, quantizes them to INT16
// mantissas with quantize_dfp's per-tensor exponents and rounding (the
// rounding loops' own round_dfp, so the mantissas are quantize_dfp's bit for
// bit), runs the loops on TensorFlow's intra-op thread pool, marks the
// outputs that NaN / Inf reach and adds to the DFP GEMM counters (one call
// per op run: each replaces one GEMM of the grouped-GEMM path).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "conv_gather_attrs.h"
#include "dfp_depthwise.h"
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
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

namespace {

inline bool IsFinite(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return (bits & 0x7F800000u) != 0x7F800000u;
}

void ParallelRun(OpKernelContext* ctx, int64_t n, int64_t cost_per_unit,
                 const std::function<void(int64_t, int64_t)>& fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(n, cost_per_unit, fn);
}

// The attributes both ops share, checked; and the operands' quantization.
class DepthwiseAttrs {
 public:
  explicit DepthwiseAttrs(OpKernelConstruction* ctx) : geometry_(ctx, 2) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bits", &spec_.bits));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("extra_shift", &spec_.extra_shift));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("chunk_size", &chunk_size_));
    std::string isa;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("isa", &isa));
    const std::string error = ValidateDfpSpec(spec_);
    OP_REQUIRES(ctx, error.empty(), InvalidArgument(error));
    OP_REQUIRES(ctx, spec_.bits <= 16,
                InvalidArgument("bits must be at most 16 for INT16 mantissas, got ", spec_.bits));
    OP_REQUIRES(ctx, chunk_size_ >= 2 && chunk_size_ % 2 == 0 && chunk_size_ <= (1 << 20),
                InvalidArgument("chunk_size must be an even number in 2..2^20, got ",
                                chunk_size_));
    loops_ = dfp_depthwise::SelectLoops(isa.c_str());
    rounding_ = SelectRoundingLoops(isa.c_str());
    OP_REQUIRES(ctx, loops_ != nullptr && rounding_ != nullptr,
                InvalidArgument("isa='", isa, "' is not supported by this CPU (avx2 needs AVX2, "
                                "FMA and F16C; avx512 needs AVX-512 F/BW/DQ/VL); use 'auto' "
                                "or 'portable'"));
  }

  // The geometry of the convolution of x with kh x kw filters, C channels
  // and multiplier M.
  dfp_depthwise::Geometry Geometry(const Tensor& x, int64_t kh, int64_t kw, int64_t channels,
                                   int64_t multiplier) const {
    const ConvGather gather = geometry_.Gather(x, kh, kw);
    dfp_depthwise::Geometry g;
    g.batch = gather.batch;
    g.height = gather.height;
    g.width = gather.width;
    g.kh = gather.kh;
    g.kw = gather.kw;
    g.sh = gather.sh;
    g.sw = gather.sw;
    g.dh = gather.dh;
    g.dw = gather.dw;
    g.lh = gather.lh;
    g.lw = gather.lw;
    g.pad_top = gather.pad_top;
    g.pad_left = gather.pad_left;
    g.out_h = gather.out_h;
    g.out_w = gather.out_w;
    g.channels = channels;
    g.multiplier = multiplier;
    return g;
  }

  // quantize_dfp's per-tensor exponents of a and b (nearest_even).
  void Exponents(OpKernelContext* ctx, const Tensor& a, const Tensor& b, int32_t* ea,
                 int32_t* eb) const {
    DfpSharedExponents(ctx, rounding_, spec_, a.flat<float>().data(), a.NumElements(),
                       b.flat<float>().data(), b.NumElements(), ea, eb);
  }

  // The INT16 mantissas of t for exponent e, into *out (allocated here):
  // quantize_dfp's values (round_dfp, nearest_even) times 2^-e, exact.
  // Non-finite values give mantissa 0; returns whether t has any (the op
  // then marks the outputs they reach).
  bool Mantissas(OpKernelContext* ctx, const Tensor& t, int32_t e, Tensor* out) const {
    auto status = ctx->allocate_temp(::tensorflow::DT_INT16, t.shape(), out);
    if (!status.ok()) {
      ctx->CtxFailure(status);
      return false;
    }
    const float* src = t.flat<float>().data();
    int16_t* dst = out->flat<int16_t>().data();
    const int64_t n = t.NumElements();
    constexpr int64_t kBlock = 2048;  // rounded into a stack buffer, then converted
    // 2^-e is a normal float for |e| <= 126, and then rounded * 2^-e = I is
    // exact in FP32 (the tier loop); beyond, the product is formed in double.
    const bool float_scale = e == kDfpNoScale || (e >= -126 && e <= 126);
    const float inverse_f = e == kDfpNoScale ? 0.0f : std::ldexp(1.0f, -e);
    const double inverse = e == kDfpNoScale ? 0.0 : std::ldexp(1.0, -e);
    std::atomic<bool> nonfinite{false};
    const RoundingLoops* rounding = rounding_;
    const dfp_depthwise::Loops* loops = loops_;
    ParallelRun(ctx, (n + kBlock - 1) / kBlock, kBlock * 8, [&](int64_t begin, int64_t end) {
      float rounded[kBlock];
      bool local = false;
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first = block * kBlock, count = std::min(kBlock, n - first);
        rounding->round_dfp(src + first, rounded, count, first, &e, 0, Rounding::kNearestEven,
                            RandomStream());
        if (float_scale) {
          local |= loops->to_mantissas(rounded, count, inverse_f, dst + first);
          continue;
        }
        for (int64_t i = 0; i < count; ++i) {
          const bool finite = IsFinite(rounded[i]);
          local |= !finite;
          // Exact: a quantize_dfp value is I * 2^e with |I| <= 32767.
          const double m = finite ? static_cast<double>(rounded[i]) * inverse : 0.0;
          dst[first + i] = static_cast<int16_t>(m);
        }
      }
      if (local) nonfinite.store(true, std::memory_order_relaxed);
    });
    return nonfinite.load();
  }

  int64_t chunk_size() const { return chunk_size_; }
  const dfp_depthwise::Loops* loops() const { return loops_; }

 private:
  ConvGatherAttrs geometry_;  // strides, dilations, input_dilations, pads
  DfpSpec spec_;
  int64_t chunk_size_ = 64;
  const dfp_depthwise::Loops* loops_ = nullptr;
  const RoundingLoops* rounding_ = nullptr;
};

double Pow2(int32_t e) { return std::ldexp(1.0, e); }

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// y = depthwise conv(x, filters); see the op's doc.
class DfpDepthwiseConvOp : public OpKernel {
 public:
  explicit DfpDepthwiseConvOp(OpKernelConstruction* ctx) : OpKernel(ctx), attrs_(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reduce_multiplier", &reduce_));
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;  // float_environment.h: keep subnormals
    const Tensor& x = ctx->input(0);
    const Tensor& filters = ctx->input(1);
    if (!CheckConvRank4(ctx, x, "x", "[batch, height, width, channels]")) return;
    if (!CheckConvRank4(ctx, filters, "filters", "[kh, kw, channels, multiplier]")) return;
    const int64_t channels = filters.dim_size(2), multiplier = filters.dim_size(3);
    const int64_t x_channels = reduce_ ? channels * multiplier : channels;
    OP_REQUIRES(ctx, filters.dim_size(0) >= 1 && filters.dim_size(1) >= 1,
                InvalidArgument("filters must have kh, kw >= 1, got shape ",
                                filters.shape().DebugString()));
    OP_REQUIRES(ctx, x.dim_size(3) == x_channels,
                InvalidArgument("x must have ", x_channels, " channels (filters [kh, kw, C, M] ",
                                reduce_ ? "with reduce_multiplier: C * M" : ": C",
                                "), got x shape ", x.shape().DebugString(), " and filters ",
                                filters.shape().DebugString()));
    dfp_depthwise::ForwardProblem p;
    p.g = attrs_.Geometry(x, filters.dim_size(0), filters.dim_size(1), channels, multiplier);
    p.reduce_multiplier = reduce_;
    const int64_t lanes = reduce_ ? channels : channels * multiplier;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({p.g.batch, p.g.out_h, p.g.out_w, lanes}), &out));
    if (out->NumElements() == 0) return;

    int32_t ex, ew;
    attrs_.Exponents(ctx, x, filters, &ex, &ew);
    Tensor xm, wm;
    const bool x_bad = attrs_.Mantissas(ctx, x, ex, &xm);
    if (!ctx->status().ok()) return;
    const bool w_bad = attrs_.Mantissas(ctx, filters, ew, &wm);
    if (!ctx->status().ok()) return;
    p.x = xm.flat<int16_t>().data();
    p.filters = wm.flat<int16_t>().data();
    p.chunk = attrs_.chunk_size();
    // The grouped GEMM's order of the two factors: a = the filters (b = the
    // patches) forward; a = the error's patches (b = the flipped filters)
    // for the input gradient.
    p.scale_a = reduce_ ? Pow2(ex) : Pow2(ew);
    p.scale_b = reduce_ ? Pow2(ew) : Pow2(ex);
    p.y = out->flat<float>().data();
    const int64_t taps = p.g.kh * p.g.kw;
    const int64_t k = reduce_ ? taps * multiplier : taps;
    const dfp_depthwise::Loops* loops = attrs_.loops();
    ParallelRun(ctx, p.g.batch * p.g.out_h, std::max<int64_t>(1, p.g.out_w * k * lanes),
                [&](int64_t begin, int64_t end) {
                  std::vector<int64_t> scratch(2 * lanes);
                  loops->forward(p, begin, end, scratch.data());
                });
    if (x_bad || w_bad) MarkNonFinite(x, filters, p, out);
    AddDfpGemmCounters(1, out->NumElements() * CeilDiv(k, p.chunk), 0);
  }

 private:
  // NaN in every output whose patch (its channel's, or channels c * M + m
  // with reduce_multiplier) or filter column holds a NaN or Inf: the
  // GEMM's rule for rows and columns (dfp_gemm.h).
  static void MarkNonFinite(const Tensor& x, const Tensor& filters,
                            const dfp_depthwise::ForwardProblem& p, Tensor* out) {
    const dfp_depthwise::Geometry& g = p.g;
    const int64_t c_count = g.channels, m_count = g.multiplier, taps = g.kh * g.kw;
    const int64_t lanes = p.reduce_multiplier ? c_count : c_count * m_count;
    const int64_t x_channels = p.reduce_multiplier ? c_count * m_count : c_count;
    const float* xv = x.flat<float>().data();
    const float* wv = filters.flat<float>().data();
    std::vector<char> bad_w(lanes, 0), bad(lanes);
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t q = 0; q < c_count * m_count; ++q) {
        if (!IsFinite(wv[t * c_count * m_count + q])) {
          bad_w[p.reduce_multiplier ? q / m_count : q] = 1;
        }
      }
    }
    float* y = out->flat<float>().data();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int64_t row = 0; row < g.batch * g.out_h; ++row) {
      const int64_t b = row / g.out_h, oy = row % g.out_h;
      for (int64_t ox = 0; ox < g.out_w; ++ox) {
        bad = bad_w;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t iy =
              dfp_depthwise::SourceIndex(oy, i, g.sh, g.dh, g.lh, g.pad_top, g.height);
          if (iy < 0) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t ix =
                dfp_depthwise::SourceIndex(ox, j, g.sw, g.dw, g.lw, g.pad_left, g.width);
            if (ix < 0) continue;
            const float* xr = xv + ((b * g.height + iy) * g.width + ix) * x_channels;
            for (int64_t e = 0; e < x_channels; ++e) {
              if (IsFinite(xr[e])) continue;
              if (p.reduce_multiplier) {
                bad[e / m_count] = 1;
              } else {
                for (int64_t m = 0; m < m_count; ++m) bad[e * m_count + m] = 1;
              }
            }
          }
        }
        float* yo = y + (row * g.out_w + ox) * lanes;
        for (int64_t q = 0; q < lanes; ++q) {
          if (bad[q]) yo[q] = nan;
        }
      }
    }
  }

  DepthwiseAttrs attrs_;
  bool reduce_ = false;
};

// d(filters) of the forward op; see the op's doc.
class DfpDepthwiseConvBackpropFilterOp : public OpKernel {
 public:
  explicit DfpDepthwiseConvBackpropFilterOp(OpKernelConstruction* ctx)
      : OpKernel(ctx), attrs_(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("filter_size", &filter_size_));
    OP_REQUIRES(ctx,
                filter_size_.size() == 2 && filter_size_[0] >= 1 && filter_size_[1] >= 1,
                InvalidArgument("filter_size must be 2 positive ints (height, width), got ",
                                filter_size_.size(), " values"));
  }

  void Compute(OpKernelContext* ctx) override {
    const ScopedIeeeFloatEnvironment ieee;
    const Tensor& x = ctx->input(0);
    const Tensor& dy = ctx->input(1);
    if (!CheckConvRank4(ctx, x, "x", "[batch, height, width, channels]")) return;
    if (!CheckConvRank4(ctx, dy, "dy", "[batch, out_height, out_width, channels * M]")) return;
    const int64_t channels = x.dim_size(3);
    OP_REQUIRES(ctx, channels >= 1 && dy.dim_size(3) % channels == 0,
                InvalidArgument("dy must have a positive multiple of x's ", channels,
                                " channels (C * M), got dy shape ", dy.shape().DebugString()));
    const int64_t multiplier = dy.dim_size(3) / channels;
    dfp_depthwise::FilterProblem p;
    p.g = attrs_.Geometry(x, filter_size_[0], filter_size_[1], channels, multiplier);
    OP_REQUIRES(ctx,
                dy.dim_size(0) == p.g.batch && dy.dim_size(1) == p.g.out_h &&
                    dy.dim_size(2) == p.g.out_w,
                InvalidArgument("dy must have shape [", p.g.batch, ", ", p.g.out_h, ", ",
                                p.g.out_w, ", C * M] (the forward output's), got ",
                                dy.shape().DebugString()));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({p.g.kh, p.g.kw, channels, multiplier}), &out));
    const int64_t taps = p.g.kh * p.g.kw, lanes = channels * multiplier;
    const int64_t pixels = p.g.batch * p.g.out_h * p.g.out_w;
    float* dw = out->flat<float>().data();
    if (out->NumElements() == 0) return;
    if (pixels == 0) {  // an empty sum
      std::fill(dw, dw + out->NumElements(), 0.0f);
      return;
    }

    int32_t edy, ex;
    attrs_.Exponents(ctx, dy, x, &edy, &ex);
    Tensor dym, xm;
    const bool dy_bad = attrs_.Mantissas(ctx, dy, edy, &dym);
    if (!ctx->status().ok()) return;
    const bool x_bad = attrs_.Mantissas(ctx, x, ex, &xm);
    if (!ctx->status().ok()) return;
    p.x = xm.flat<int16_t>().data();
    p.dy = dym.flat<int16_t>().data();
    p.chunk = attrs_.chunk_size();
    const int64_t chunks = CeilDiv(pixels, p.chunk);
    // Chunk sums of at most kPartialBytes at a time: computed in parallel,
    // then added in chunk (K) order.
    constexpr int64_t kPartialBytes = int64_t{8} << 20;
    const int64_t per_chunk = taps * lanes;
    const int64_t batch_chunks =
        std::max<int64_t>(1, kPartialBytes / static_cast<int64_t>(sizeof(float)) / per_chunk);
    Tensor partial;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT,
                                           TensorShape({std::min(batch_chunks, chunks) *
                                                        per_chunk}),
                                           &partial));
    p.partial = partial.flat<float>().data();
    std::vector<float> acc(per_chunk, 0.0f);
    const dfp_depthwise::Loops* loops = attrs_.loops();
    for (int64_t first = 0; first < chunks; first += batch_chunks) {
      const int64_t last = std::min(chunks, first + batch_chunks);
      ParallelRun(ctx, last - first, std::max<int64_t>(1, p.chunk * per_chunk),
                  [&](int64_t begin, int64_t end) {
                    std::vector<int64_t> scratch(per_chunk);
                    loops->filter_chunks(p, first, first + begin, first + end, scratch.data());
                  });
      for (int64_t c = 0; c < last - first; ++c) {
        const float* part = p.partial + c * per_chunk;
        for (int64_t e = 0; e < per_chunk; ++e) acc[e] += part[e];
      }
    }
    // The grouped GEMM's order: a = the error, b = the patches.
    const double scale_a = Pow2(edy), scale_b = Pow2(ex);
    for (int64_t e = 0; e < per_chunk; ++e) {
      dw[e] = static_cast<float>((static_cast<double>(acc[e]) * scale_a) * scale_b);
    }
    if (dy_bad || x_bad) MarkNonFinite(x, dy, p.g, dw);
    AddDfpGemmCounters(1, per_chunk * chunks, 0);
  }

 private:
  // NaN in d(filters)[t, c, m] where dy[.., c * M + m] or a value of x that
  // tap t reads for channel c (over all pixels) is NaN or Inf.
  static void MarkNonFinite(const Tensor& x, const Tensor& dy, const dfp_depthwise::Geometry& g,
                            float* dw) {
    const int64_t c_count = g.channels, m_count = g.multiplier, taps = g.kh * g.kw;
    const int64_t lanes = c_count * m_count;
    const float* xv = x.flat<float>().data();
    const float* dyv = dy.flat<float>().data();
    std::vector<char> bad_dy(lanes, 0), bad_x(taps * c_count, 0);
    const int64_t pixels = g.batch * g.out_h * g.out_w;
    for (int64_t pixel = 0; pixel < pixels; ++pixel) {
      for (int64_t q = 0; q < lanes; ++q) {
        if (!IsFinite(dyv[pixel * lanes + q])) bad_dy[q] = 1;
      }
      const int64_t ox = pixel % g.out_w, rest = pixel / g.out_w;
      const int64_t oy = rest % g.out_h, b = rest / g.out_h;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t iy =
            dfp_depthwise::SourceIndex(oy, i, g.sh, g.dh, g.lh, g.pad_top, g.height);
        if (iy < 0) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t ix =
              dfp_depthwise::SourceIndex(ox, j, g.sw, g.dw, g.lw, g.pad_left, g.width);
          if (ix < 0) continue;
          const float* xr = xv + ((b * g.height + iy) * g.width + ix) * c_count;
          for (int64_t c = 0; c < c_count; ++c) {
            if (!IsFinite(xr[c])) bad_x[(i * g.kw + j) * c_count + c] = 1;
          }
        }
      }
    }
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t q = 0; q < lanes; ++q) {
        if (bad_dy[q] || bad_x[t * c_count + q / m_count]) dw[t * lanes + q] = nan;
      }
    }
  }

  DepthwiseAttrs attrs_;
  std::vector<int64_t> filter_size_;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("LowprecDfpDepthwiseConv2d").Device(DEVICE_CPU),
                        DfpDepthwiseConvOp);
REGISTER_KERNEL_BUILDER(Name("LowprecDfpDepthwiseConv2dBackpropFilter").Device(DEVICE_CPU),
                        DfpDepthwiseConvBackpropFilterOp);

}  // namespace tf_lowprec
