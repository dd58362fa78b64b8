// The patch matrix (im2col) of an NHWC / NDHWC convolution as an
// implicit-GEMM operand, shared by the GEMMs that gather it while packing
// (the INT16 DFP GEMM: dfp_gemm_conv_pack.h; the BF16 GEMM:
// bf16_gemm_impl.h and bf16_gemm_fma_impl.h).  A 2-D convolution is the
// 3-D one of depth 1 (kd = 1): the depth-only divisions are skipped there.
// Header-only, no TensorFlow: the tiers include it.
//
// The gather functions are in an unnamed namespace on purpose: every
// translation unit (each kernel tier, compiled with its own instruction-set
// flags) gets its own copy, so the linker can never hand the portable tier
// a copy built with AVX-512.
#ifndef TF_LOWPREC_KERNELS_CONV_GATHER_H_
#define TF_LOWPREC_KERNELS_CONV_GATHER_H_

#include <cstdint>
#include <cstring>

namespace tf_lowprec {

// Row p = (b, z, y, x) of the [batch, out_d, out_h, out_w] output grid,
// column r = (t, i, j, c) of [kd, kh, kw, channels]:
//   P[p][r] = input[b, Z / ld, Y / lh, X / lw, c]
//   where Z = z * sd + t * dd - pad_front, Y = y * sh + i * dh - pad_top
// (X likewise), if 0 <= Y <= (height - 1) * lh and Y % lh == 0 (Z and X
// alike), else 0: zero padding, strides s, dilations d, and an input
// dilated by l (l - 1 zeros between its planes / rows / columns: the error
// of a strided convolution in its input gradient).  NHWC: depth = kd =
// out_d = 1.
struct ConvGather {
  const float* input = nullptr;
  int64_t batch = 0, depth = 1, height = 0, width = 0, channels = 0;
  int64_t kd = 1, kh = 1, kw = 1, sd = 1, sh = 1, sw = 1, dd = 1, dh = 1, dw = 1;
  int64_t ld = 1, lh = 1, lw = 1;
  int64_t pad_front = 0, pad_top = 0, pad_left = 0, out_d = 1, out_h = 0, out_w = 0;
  int64_t Rows() const { return batch * out_d * out_h * out_w; }
  int64_t Columns() const { return kd * kh * kw * channels; }
};

// Where row p of the patch matrix starts: its output pixel (b, z, y, x).
// Consecutive rows are reached by Advance, which counts instead of dividing.
struct PatchPixel {
  int64_t b = 0, z = 0, y = 0, x = 0;
};

// Where column r starts: the kernel tap (t, i, j) and the channel c.
struct PatchColumn {
  int64_t t = 0, i = 0, j = 0, c = 0;
};

namespace {

inline PatchPixel PixelOfRow(const ConvGather& g, int64_t p) {
  const int64_t q = p / g.out_w;  // (b, z, y)
  const int64_t u = q / g.out_h;  // (b, z)
  PatchPixel px;
  px.b = g.out_d == 1 ? u : u / g.out_d;  // 2-D: no depth division
  px.z = u - px.b * g.out_d;
  px.y = q - u * g.out_h;
  px.x = p - q * g.out_w;
  return px;
}

inline void Advance(const ConvGather& g, PatchPixel* px) {
  if (++px->x == g.out_w) {
    px->x = 0;
    if (++px->y == g.out_h) {
      px->y = 0;
      if (++px->z == g.out_d) {
        px->z = 0;
        ++px->b;
      }
    }
  }
}

inline PatchColumn ColumnOf(const ConvGather& g, int64_t r) {
  PatchColumn col;
  const int64_t tij = r / g.channels;
  col.c = r - tij * g.channels;
  const int64_t ti = tij / g.kw;
  col.j = tij - ti * g.kw;
  col.t = g.kd == 1 ? 0 : ti / g.kh;  // 2-D: no depth division
  col.i = ti - col.t * g.kh;
  return col;
}

// Whether coordinate *v of an input dilated by l (l - 1 zeros between its
// elements) is an input element; *v becomes its index.  *v >= 0.
inline bool OnInputGrid(int64_t* v, int64_t l) {
  if (l == 1) return true;
  if (*v % l != 0) return false;
  *v /= l;
  return true;
}

// Visits n columns from `col` of the patch row at pixel `px` as runs of
// contiguous channels: run(offset, src, len) for columns [offset, offset +
// len) of the n, src the input's channels, or nullptr where they are zeros
// (padding, an input dilation's holes).  The kernel tap (t, i, j) advances
// by counting, not dividing: int64 divisions per run cost more than copying
// a run of 32 channels (and all of a run of one channel).
template <typename Run>
inline void ForEachPatchRun(const ConvGather& g, const PatchPixel& px, PatchColumn col,
                            int64_t n, Run&& run) {
  const int64_t z0 = px.z * g.sd - g.pad_front;
  const int64_t y0 = px.y * g.sh - g.pad_top;
  const int64_t x0 = px.x * g.sw - g.pad_left;
  const int64_t plane_size = g.height * g.width * g.channels;
  const float* image = g.input + px.b * g.depth * plane_size;
  // The plane of x that depth tap t reads, or nullptr (padding, a hole).
  auto plane_of = [&](int64_t tap) -> const float* {
    int64_t zz = z0 + tap * g.dd;
    if (zz < 0 || !OnInputGrid(&zz, g.ld) || zz >= g.depth) return nullptr;
    return image + zz * plane_size;
  };
  int64_t c0 = col.c, t = col.t, i = col.i, j = col.j;
  const float* plane = plane_of(t);
  for (int64_t done = 0; done < n;) {
    const int64_t rest = g.channels - c0, wanted = n - done;
    const int64_t len = rest < wanted ? rest : wanted;
    int64_t yy = y0 + i * g.dh, xx = x0 + j * g.dw;
    const bool inside = plane != nullptr && yy >= 0 && xx >= 0 && OnInputGrid(&yy, g.lh) &&
                        OnInputGrid(&xx, g.lw) && yy < g.height && xx < g.width;
    run(done, inside ? plane + (yy * g.width + xx) * g.channels + c0 : nullptr, len);
    done += len;
    c0 = 0;
    if (++j == g.kw) {
      j = 0;
      if (++i == g.kh) {
        i = 0;
        plane = plane_of(++t);  // (past the last tap only when done == n)
      }
    }
  }
}

// n columns from `col` of the patch row at pixel `px` into out: runs of
// contiguous channels copied from the input, or zeros (+0, as im2col pads).
inline void GatherPatchColumns(const ConvGather& g, const PatchPixel& px, PatchColumn col,
                               int64_t n, float* out) {
  ForEachPatchRun(g, px, col, n, [out](int64_t offset, const float* src, int64_t len) {
    float* o = out + offset;
    if (src == nullptr) {
      for (int64_t e = 0; e < len; ++e) o[e] = 0.0f;
    } else if (len == 1) {
      o[0] = src[0];
    } else {
      std::memcpy(o, src, sizeof(float) * len);
    }
  });
}

// Columns [r0, r0 + n) of row p of the patch matrix into out.
inline void GatherPatchRow(const ConvGather& g, int64_t p, int64_t r0, int64_t n, float* out) {
  GatherPatchColumns(g, PixelOfRow(g, p), ColumnOf(g, r0), n, out);
}

}  // namespace
}  // namespace tf_lowprec

#endif  // TF_LOWPREC_KERNELS_CONV_GATHER_H_
