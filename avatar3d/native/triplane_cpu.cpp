// Tri-plane bilinear lookup on CPU: the sum over the three planes of
// grid_sample(plane, grid, mode="bilinear", padding_mode="zeros", align_corners=False),
// forward and backward (to the planes only; the sample points are not learned).
//
// Why: ATen's grid_sampler_2d on CPU gathers channels-first planes one channel at a
// time and its backward scatter-adds one float at a time; on the renderer's shapes the
// backward alone was a third of a render's forward+backward. Here the planes are read
// and written channels-last, so each bilinear corner is one contiguous C-float row:
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

void check_inputs(const torch::Tensor& planes_cl, const torch::Tensor& coords) {
  TORCH_CHECK(planes_cl.device().is_cpu() && coords.device().is_cpu(), "triplane_cpu: CPU tensors only");
  TORCH_CHECK(planes_cl.scalar_type() == torch::kFloat && coords.scalar_type() == torch::kFloat,
              "triplane_cpu: float32 tensors only");
  TORCH_CHECK(planes_cl.dim() == 5 && planes_cl.size(1) == 3 && planes_cl.is_contiguous(),
              "triplane_cpu: planes must be contiguous (N, 3, H, W, C)");
  TORCH_CHECK(coords.dim() == 3 && coords.size(2) == 3 && coords.size(0) == planes_cl.size(0) &&
              coords.is_contiguous(), "triplane_cpu: coords must be contiguous (N, P, 3)");
}

}  // namespace

// planes_cl (N, 3, H, W, C) channels-last; coords (N, P, 3) already scaled to [-1, 1] (2 / box_warp).
// Returns the plane sum (N, C, P).
torch::Tensor triplane_forward(const torch::Tensor& planes_cl, const torch::Tensor& coords) {
  check_inputs(planes_cl, coords);
  const int64_t N = planes_cl.size(0), H = planes_cl.size(2), W = planes_cl.size(3), C = planes_cl.size(4);
  const int64_t P = coords.size(1);
  auto out = torch::empty({N, C, P}, planes_cl.options());
  const float* pl = planes_cl.data_ptr<float>();
  const float* co = coords.data_ptr<float>();
  float* o = out.data_ptr<float>();
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
          const float* plane = pl + (n * 3 + k) * H * W * C;
          for (int i = 0; i < 4; ++i) {
            if (cr.offset[i] < 0) continue;
            const float* row = plane + cr.offset[i] * C;
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
  return out;
}

// grad_out (N, C, P); returns d(loss)/d(planes) channels-last (N, 3, H, W, C).
torch::Tensor triplane_backward(const torch::Tensor& grad_out, const torch::Tensor& coords, int64_t H,
                                int64_t W) {
  TORCH_CHECK(grad_out.device().is_cpu() && grad_out.scalar_type() == torch::kFloat && grad_out.dim() == 3 &&
              grad_out.is_contiguous(), "triplane_cpu: grad must be a contiguous float32 (N, C, P) CPU tensor");
  TORCH_CHECK(coords.dim() == 3 && coords.size(2) == 3 && coords.is_contiguous() &&
              coords.size(0) == grad_out.size(0) && coords.size(1) == grad_out.size(2),
              "triplane_cpu: coords must be contiguous (N, P, 3) matching grad");
  const int64_t N = grad_out.size(0), C = grad_out.size(1), P = grad_out.size(2);
  auto grad_planes = torch::zeros({N, 3, H, W, C}, grad_out.options());
  const float* g = grad_out.data_ptr<float>();
  const float* co = coords.data_ptr<float>();
  float* gp = grad_planes.data_ptr<float>();
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
            float* plane = gp + (n * 3 + k) * H * W * C;
            for (int i = 0; i < 4; ++i) {
              if (cr.offset[i] < 0) continue;
              float* row = plane + cr.offset[i] * C;
              const float w = cr.weight[i];
#pragma omp simd
              for (int64_t ch = 0; ch < C; ++ch) row[ch] += w * gj[ch];
            }
          }
        }
      }
    }
  });
  return grad_planes;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &triplane_forward, "tri-plane bilinear lookup, summed over planes (CPU)");
  m.def("backward", &triplane_backward, "gradient of the lookup w.r.t. channels-last planes (CPU)");
}
