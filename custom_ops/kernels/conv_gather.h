// The patch matrix (im2col) of an NHWC convolution as an implicit-GEMM
// operand, shared by the GEMMs that gather it while packing (the INT16 DFP
// GEMM: dfp_gemm_conv_pack.h; the BF16 GEMM: bf16_gemm_impl.h and
// bf16_gemm_fma_impl.h).  Header-only, no TensorFlow: the tiers include it.
//
// GatherPatchRow is in an unnamed namespace on purpose: every translation
// unit (each kernel tier, compiled with its own instruction-set flags) gets
// its own copy, so the linker can never hand the portable tier a copy built
// with AVX-512.
#ifndef TF_LOWPREC_KERNELS_CONV_GATHER_H_
#define TF_LOWPREC_KERNELS_CONV_GATHER_H_

#include <cstdint>
#include <cstring>

namespace tf_lowprec {

// Row p = (b, y, x) of the [batch, out_h, out_w] output grid, column r =
// (i, j, c) of [kh, kw, channels]:
//   P[p][r] = input[b, Y / lh, X / lw, c]   where Y = y * sh + i * dh - pad_top
// (X likewise), if 0 <= Y <= (height - 1) * lh and Y % lh == 0 (X alike),
// else 0: zero padding, strides s, dilations d, and an input dilated by l
// (l - 1 zeros between its rows / columns: the error of a strided
// convolution in its input gradient).
struct ConvGather {
  const float* input = nullptr;
  int64_t batch = 0, height = 0, width = 0, channels = 0;
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1, lh = 1, lw = 1;
  int64_t pad_top = 0, pad_left = 0, out_h = 0, out_w = 0;
  int64_t Rows() const { return batch * out_h * out_w; }
  int64_t Columns() const { return kh * kw * channels; }
};

// Where row p of the patch matrix starts: its output pixel (b, y, x).
// Consecutive rows are reached by Advance, which counts instead of dividing.
struct PatchPixel {
  int64_t b = 0, y = 0, x = 0;
};

// Where column r starts: the kernel tap (i, j) and the channel c.
struct PatchColumn {
  int64_t i = 0, j = 0, c = 0;
};

namespace {

inline PatchPixel PixelOfRow(const ConvGather& g, int64_t p) {
  const int64_t t = p / g.out_w;
  PatchPixel px;
  px.b = t / g.out_h;
  px.y = t - px.b * g.out_h;
  px.x = p - t * g.out_w;
  return px;
}

inline void Advance(const ConvGather& g, PatchPixel* px) {
  if (++px->x == g.out_w) {
    px->x = 0;
    if (++px->y == g.out_h) {
      px->y = 0;
      ++px->b;
    }
  }
}

inline PatchColumn ColumnOf(const ConvGather& g, int64_t r) {
  PatchColumn col;
  const int64_t ij = r / g.channels;
  col.c = r - ij * g.channels;
  col.i = ij / g.kw;
  col.j = ij - col.i * g.kw;
  return col;
}

// n columns from `col` of the patch row at pixel `px` into out: runs of
// contiguous channels copied from the input, or zeros (+0, as im2col pads).
// The kernel tap (i, j) advances by counting, not dividing: int64 divisions
// per run cost more than copying a run of 32 channels (and all of a run of
// one channel).
inline void GatherPatchColumns(const ConvGather& g, const PatchPixel& px, PatchColumn col,
                               int64_t n, float* out) {
  const int64_t y0 = px.y * g.sh - g.pad_top;
  const int64_t x0 = px.x * g.sw - g.pad_left;
  const float* image = g.input + px.b * g.height * g.width * g.channels;
  const bool holes = g.lh != 1 || g.lw != 1;  // a dilated input (d(x) of a strided conv)
  int64_t c0 = col.c, i = col.i, j = col.j;
  for (int64_t done = 0; done < n;) {
    const int64_t rest = g.channels - c0, wanted = n - done;
    const int64_t len = rest < wanted ? rest : wanted;
    int64_t yy = y0 + i * g.dh, xx = x0 + j * g.dw;
    bool inside = yy >= 0 && xx >= 0;
    if (inside && holes) {
      inside = yy % g.lh == 0 && xx % g.lw == 0;
      yy /= g.lh;
      xx /= g.lw;
    }
    inside = inside && yy < g.height && xx < g.width;
    float* o = out + done;
    if (inside) {
      const float* src = image + (yy * g.width + xx) * g.channels + c0;
      if (len == 1) {
        o[0] = src[0];
      } else {
        std::memcpy(o, src, sizeof(float) * len);
      }
    } else {
      for (int64_t q = 0; q < len; ++q) o[q] = 0.0f;
    }
    done += len;
    c0 = 0;
    if (++j == g.kw) {
      j = 0;
      ++i;
    }
  }
}

// Columns [r0, r0 + n) of row p of the patch matrix into out.
inline void GatherPatchRow(const ConvGather& g, int64_t p, int64_t r0, int64_t n, float* out) {
  GatherPatchColumns(g, PixelOfRow(g, p), ColumnOf(g, r0), n, out);
}

}  // namespace
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_CONV_GATHER_H_
