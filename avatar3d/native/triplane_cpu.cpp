// Tri-plane bilinear lookup on CPU: the sum over the three planes of
// grid_sample(plane, grid, mode="bilinear", padding_mode="zeros", align_corners=False),
// forward and backward (to the planes only; the sample points are not learned).
//
// Why: ATen's grid_sampler_2d on CPU gathers channels-first planes one channel at a
// time and its backward scatter-adds one float at a time; on the renderer's shapes the
// backward alone was a third of a render's forward+backward. Here the planes are read
// and written with each pixel's C features contiguous (the synthesis network's
// channels-last output already is), so each bilinear corner is one C-float row:
// the forward accumulates rows, the backward adds weighted rows, both vectorised by the
// compiler. Points are taken in tiles of 16 and transposed through a small buffer,
// so the channels-first (N, C, P) features the decoder consumes are read and written
// with unit stride.
//
// Same maths as ATen (grid_sampler_compute_source_index, zeros padding): for a
// normalised coordinate g in [-1, 1] over a size S axis, the source index is
// ((g + 1) * S - 1) / 2, the corners are floor() and floor() + 1, weights the usual
// bilinear products, corners outside the plane contribute nothing. Only the
// summation order differs (float rounding).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__) && defined(__x86_64__)
#include <immintrin.h>
// glibc's libmvec (linked with -lmvec): 16-lane expf / log1pf, within 4 ulp like ATen's Sleef paths.
extern "C" __m512 _ZGVeN16v_expf(__m512);
extern "C" __m512 _ZGVeN16v_log1pf(__m512);
#define AVATAR3D_VECTOR_MATH 1
#endif

namespace {

constexpr int kTile = 16;
// (u, v) world-axis indices of the planes: XY, XZ, ZY (avatar3d.gan.triplane.PLANE_AXES).
constexpr int kAxes[3][2] = {{0, 1}, {0, 2}, {2, 1}};

struct Corners {
  int64_t offset[4];  // row offsets (in rows of C floats) inside one plane; -1 = outside
  float weight[4];
};

inline Corners corners_of(float gu, float gv, int64_t H, int64_t W) {
  Corners c;
  const float ix = ((gu + 1.f) * W - 1.f) / 2.f;
  const float iy = ((gv + 1.f) * H - 1.f) / 2.f;
  // Far outside (or NaN): every corner is out of the plane.
  if (!(ix > -1.f && ix < static_cast<float>(W) && iy > -1.f && iy < static_cast<float>(H))) {
    for (int i = 0; i < 4; ++i) { c.offset[i] = -1; c.weight[i] = 0.f; }
    return c;
  }
  const float fx = std::floor(ix), fy = std::floor(iy);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  const float tx = ix - fx, ty = iy - fy;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const float ws[4] = {(1.f - tx) * (1.f - ty), tx * (1.f - ty), (1.f - tx) * ty, tx * ty};
  for (int i = 0; i < 4; ++i) {
    const bool in = xs[i] >= 0 && xs[i] < W && ys[i] >= 0 && ys[i] < H;
    c.offset[i] = in ? ys[i] * W + xs[i] : -1;
    c.weight[i] = in ? ws[i] : 0.f;
  }
  return c;
}

}  // namespace

// The channel loops run with a compile-time count for the usual 32 channels (the compiler
// then unrolls them into two AVX-512 FMAs a corner), a runtime count otherwise.
// Plane layout, in floats: image n, plane k, pixel (y, x) starts its C contiguous features at
// n * s_img + k * s_plane + (y * W + x) * s_pix. Both (N, 3, H, W, C) and the channels-last
// synthesis output (N, H, W, 3, C) fit.
struct Layout {
  int64_t img, plane, pix;
};

template <int64_t kC>
void forward_impl(const float* pl, const Layout L, const float* co, float* o, int64_t N, int64_t H, int64_t W,
                  int64_t C_rt, int64_t P) {
  const int64_t C = kC > 0 ? kC : C_rt;
  const int64_t tiles = (P + kTile - 1) / kTile;
  at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(kTile * C);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / tiles, p0 = (job % tiles) * kTile;
      const int64_t count = std::min<int64_t>(kTile, P - p0);
      std::fill(tile.begin(), tile.end(), 0.f);
      for (int64_t j = 0; j < count; ++j) {
        const float* pt = co + (n * P + p0 + j) * 3;
        float* acc = tile.data() + j * C;
        for (int k = 0; k < 3; ++k) {
          const Corners cr = corners_of(pt[kAxes[k][0]], pt[kAxes[k][1]], H, W);
          const float* plane = pl + n * L.img + k * L.plane;
          for (int i = 0; i < 4; ++i) {
            if (cr.offset[i] < 0) continue;
            const float* row = plane + cr.offset[i] * L.pix;
            const float w = cr.weight[i];
#pragma omp simd
            for (int64_t ch = 0; ch < C; ++ch) acc[ch] += w * row[ch];
          }
        }
      }
      for (int64_t ch = 0; ch < C; ++ch) {
        float* dst = o + (n * C + ch) * P + p0;
        for (int64_t j = 0; j < count; ++j) dst[j] = tile[j * C + ch];
      }
    }
  });
}

Layout layout_of(const torch::Tensor& planes) {
  TORCH_CHECK(planes.device().is_cpu() && planes.scalar_type() == torch::kFloat && planes.dim() == 5 &&
              planes.size(1) == 3, "triplane_cpu: planes must be float32 (N, 3, C, H, W) on the CPU");
  const int64_t C = planes.size(2), W = planes.size(4);
  TORCH_CHECK((planes.stride(2) == 1 || C == 1) && planes.stride(3) == W * planes.stride(4) &&
              planes.stride(4) >= C,
              "triplane_cpu: each pixel's C features must be contiguous, pixels at one stride");
  return {planes.stride(0), planes.stride(1), planes.stride(4)};
}

// planes (N, 3, C, H, W) in a layout accepted by layout_of; coords (N, P, 3) already scaled to
// [-1, 1] (2 / box_warp). Returns the plane sum (N, C, P).
torch::Tensor triplane_forward(const torch::Tensor& planes, const torch::Tensor& coords) {
  const Layout L = layout_of(planes);
  TORCH_CHECK(coords.scalar_type() == torch::kFloat && coords.dim() == 3 && coords.size(2) == 3 &&
              coords.size(0) == planes.size(0) && coords.is_contiguous(),
              "triplane_cpu: coords must be contiguous float32 (N, P, 3)");
  const int64_t N = planes.size(0), C = planes.size(2), H = planes.size(3), W = planes.size(4);
  const int64_t P = coords.size(1);
  auto out = torch::empty({N, C, P}, planes.options());
  const float* pl = planes.data_ptr<float>();
  const float* co = coords.data_ptr<float>();
  if (C == 32) forward_impl<32>(pl, L, co, out.data_ptr<float>(), N, H, W, C, P);
  else forward_impl<0>(pl, L, co, out.data_ptr<float>(), N, H, W, C, P);
  return out;
}

template <int64_t kC>
void backward_impl(const float* g, const float* co, float* gp, const Layout L, int64_t N, int64_t H, int64_t W,
                   int64_t C_rt, int64_t P) {
  const int64_t C = kC > 0 ? kC : C_rt;
  // One image per task: its planes' gradient is written by that task alone (no races).
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(kTile * C);
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t p0 = 0; p0 < P; p0 += kTile) {
        const int64_t count = std::min<int64_t>(kTile, P - p0);
        for (int64_t ch = 0; ch < C; ++ch) {
          const float* src = g + (n * C + ch) * P + p0;
          for (int64_t j = 0; j < count; ++j) tile[j * C + ch] = src[j];
        }
        for (int64_t j = 0; j < count; ++j) {
          const float* pt = co + (n * P + p0 + j) * 3;
          const float* gj = tile.data() + j * C;
          for (int k = 0; k < 3; ++k) {
            const Corners cr = corners_of(pt[kAxes[k][0]], pt[kAxes[k][1]], H, W);
            float* plane = gp + n * L.img + k * L.plane;
            for (int i = 0; i < 4; ++i) {
              if (cr.offset[i] < 0) continue;
              float* row = plane + cr.offset[i] * L.pix;
              const float w = cr.weight[i];
#pragma omp simd
              for (int64_t ch = 0; ch < C; ++ch) row[ch] += w * gj[ch];
            }
          }
        }
      }
    }
  });
}

// Adds d(loss)/d(planes) for grad_out (N, C, P) into grad_planes (N, 3, C, H, W), which must have a
// layout accepted by layout_of (zeros_like of the planes keeps theirs).
void triplane_backward(const torch::Tensor& grad_out, const torch::Tensor& coords, torch::Tensor grad_planes) {
  const Layout L = layout_of(grad_planes);
  TORCH_CHECK(grad_out.device().is_cpu() && grad_out.scalar_type() == torch::kFloat && grad_out.dim() == 3 &&
              grad_out.is_contiguous() && grad_out.size(0) == grad_planes.size(0) &&
              grad_out.size(1) == grad_planes.size(2),
              "triplane_cpu: grad must be a contiguous float32 (N, C, P) CPU tensor matching the planes");
  TORCH_CHECK(coords.dim() == 3 && coords.size(2) == 3 && coords.is_contiguous() &&
              coords.size(0) == grad_out.size(0) && coords.size(1) == grad_out.size(2),
              "triplane_cpu: coords must be contiguous (N, P, 3) matching grad");
  const int64_t N = grad_out.size(0), C = grad_out.size(1), P = grad_out.size(2);
  const int64_t H = grad_planes.size(3), W = grad_planes.size(4);
  const float* g = grad_out.data_ptr<float>();
  const float* co = coords.data_ptr<float>();
  if (C == 32) backward_impl<32>(g, co, grad_planes.data_ptr<float>(), L, N, H, W, C, P);
  else backward_impl<0>(g, co, grad_planes.data_ptr<float>(), L, N, H, W, C, P);
}

// --- The decoder's hidden activation: softplus(h + b), bias per channel ---------------------------
// h (N, H, P) contiguous (a batched matmul's output), b (H,). torch's softplus with beta 1 and
// threshold 20: x > 20 ? x : log1p(exp(x)); its gradient x > 20 ? g : g z / (z + 1), z = exp(x).
// One pass instead of ATen's bias add + softplus (whose log1p is not vectorised on this build).

namespace {

void check_hb(const torch::Tensor& h, const torch::Tensor& b) {
  TORCH_CHECK(h.device().is_cpu() && h.scalar_type() == torch::kFloat && h.dim() == 3 && h.is_contiguous(),
              "bias_softplus: h must be a contiguous float32 (N, H, P) CPU tensor");
  TORCH_CHECK(b.device().is_cpu() && b.scalar_type() == torch::kFloat && b.dim() == 1 && b.size(0) == h.size(1) &&
              b.is_contiguous(), "bias_softplus: b must be a contiguous float32 (H,) CPU tensor");
}

inline float softplus1(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }
inline float softplus1_grad(float g, float x) {
  if (x > 20.f) return g;
  const float z = std::exp(x);
  return g * z / (z + 1.f);
}

}  // namespace

bool has_vector_math() {
#ifdef AVATAR3D_VECTOR_MATH
  return true;
#else
  return false;
#endif
}

torch::Tensor bias_softplus_forward(const torch::Tensor& h, const torch::Tensor& b) {
  check_hb(h, b);
  const int64_t rows = h.size(0) * h.size(1), C = h.size(1), P = h.size(2);
  auto out = torch::empty_like(h);
  const float* x = h.data_ptr<float>();
  const float* bias = b.data_ptr<float>();
  float* y = out.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float bc = bias[r % C];
      const float* xr = x + r * P;
      float* yr = y + r * P;
      int64_t p = 0;
#ifdef AVATAR3D_VECTOR_MATH
      const __m512 vb = _mm512_set1_ps(bc), thr = _mm512_set1_ps(20.f);
      for (; p + 16 <= P; p += 16) {
        const __m512 v = _mm512_add_ps(_mm512_loadu_ps(xr + p), vb);
        const __m512 s = _ZGVeN16v_log1pf(_ZGVeN16v_expf(v));
        const __mmask16 big = _mm512_cmp_ps_mask(v, thr, _CMP_GT_OQ);
        _mm512_storeu_ps(yr + p, _mm512_mask_blend_ps(big, s, v));
      }
#endif
      for (; p < P; ++p) yr[p] = softplus1(xr[p] + bc);
    }
  });
  return out;
}

// Returns (dL/dh (N, H, P), dL/db (H,)).
std::vector<torch::Tensor> bias_softplus_backward(const torch::Tensor& grad, const torch::Tensor& h,
                                                  const torch::Tensor& b) {
  check_hb(h, b);
  TORCH_CHECK(grad.sizes() == h.sizes() && grad.is_contiguous() && grad.scalar_type() == torch::kFloat,
              "bias_softplus: grad must be a contiguous float32 tensor shaped like h");
  const int64_t N = h.size(0), C = h.size(1), P = h.size(2);
  auto gh = torch::empty_like(h);
  auto gb_rows = torch::empty({N, C}, h.options());
  const float* x = h.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  const float* bias = b.data_ptr<float>();
  float* out = gh.data_ptr<float>();
  float* gbr = gb_rows.data_ptr<float>();
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float bc = bias[r % C];
      const float* xr = x + r * P;
      const float* gr = g + r * P;
      float* orow = out + r * P;
      double acc = 0.0;
      int64_t p = 0;
#ifdef AVATAR3D_VECTOR_MATH
      const __m512 vb = _mm512_set1_ps(bc), thr = _mm512_set1_ps(20.f), one = _mm512_set1_ps(1.f);
      __m512 vacc = _mm512_setzero_ps();
      for (; p + 16 <= P; p += 16) {
        const __m512 v = _mm512_add_ps(_mm512_loadu_ps(xr + p), vb);
        const __m512 gv = _mm512_loadu_ps(gr + p);
        const __m512 z = _ZGVeN16v_expf(v);
        const __m512 d = _mm512_div_ps(_mm512_mul_ps(gv, z), _mm512_add_ps(z, one));
        const __mmask16 big = _mm512_cmp_ps_mask(v, thr, _CMP_GT_OQ);
        const __m512 o = _mm512_mask_blend_ps(big, d, gv);
        _mm512_storeu_ps(orow + p, o);
        vacc = _mm512_add_ps(vacc, o);
      }
      acc = _mm512_reduce_add_ps(vacc);
#endif
      for (; p < P; ++p) {
        orow[p] = softplus1_grad(gr[p], xr[p] + bc);
        acc += orow[p];
      }
      gbr[r] = static_cast<float>(acc);
    }
  });
  return {gh, gb_rows.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("has_vector_math", &has_vector_math, "whether bias_softplus uses 16-lane vector math");
  m.def("bias_softplus_forward", &bias_softplus_forward, "softplus(h + b) per channel (CPU)");
  m.def("bias_softplus_backward", &bias_softplus_backward, "gradients of softplus(h + b) (CPU)");
  m.def("forward", &triplane_forward, "tri-plane bilinear lookup, summed over planes (CPU)");
  m.def("backward", &triplane_backward, "gradient of the lookup w.r.t. channels-last planes (CPU)");
}
