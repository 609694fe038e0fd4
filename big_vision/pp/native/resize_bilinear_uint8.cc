// ResizeBilinearUint8: a uint8 [h, w, c] image resized to [out_h, out_w, c] (bilinear, half-pixel centres, no antialias), clipped to
// [0, 255] and cast back to uint8. That is tf.cast(tf.clip_by_value(tf.image.resize(x, size, "bilinear"), 0, 255), tf.uint8), the pp
// ops' resize of a uint8 image, with the float32 operations of TensorFlow's ResizeBilinear CPU kernel in the same order (the x-lerps of
// the top and bottom rows, then the y-lerp; built with -ffp-contract=off, so no fused multiply-adds), but computed separably: each input
// row's x-lerps once (4-wide loads for 3 channels, AVX2 gathers otherwise where the CPU has them), then the y-lerp, clip and cast over whole rows. big_vision/pp/native.py builds
// it, and uses it only after it gave TensorFlow's bits on its check images.
#include <algorithm>
#include <cmath>
#include <vector>
#include <immintrin.h>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

using namespace tensorflow;

REGISTER_OP("ResizeBilinearUint8")
    .Input("image: uint8")
    .Input("size: int32")
    .Output("resized: uint8")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle in;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &in));
      shape_inference::ShapeHandle size;
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(1, &size));
      TF_RETURN_IF_ERROR(c->WithRank(size, 2, &size));
      c->set_output(0, c->MakeShape({c->Dim(size, 0), c->Dim(size, 1), c->Dim(in, 2)}));
      return OkStatus();
    });

namespace {
struct Interp {
  int64_t lower, upper;
  float lerp;
};

void weights(int64_t out_size, int64_t in_size, std::vector<Interp>* w) {
  const float scale = in_size / static_cast<float>(out_size);
  w->resize(out_size);
  for (int64_t i = 0; i < out_size; ++i) {
    const float in = (static_cast<float>(i) + 0.5f) * scale - 0.5f;
    const float in_f = std::floor(in);
    (*w)[i].lower = std::max(static_cast<int64_t>(in_f), static_cast<int64_t>(0));
    (*w)[i].upper = std::min(static_cast<int64_t>(std::ceil(in)), in_size - 1);
    (*w)[i].lerp = in - in_f;
  }
}
}  // namespace

class ResizeBilinearUint8Op : public OpKernel {
 public:
  explicit ResizeBilinearUint8Op(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* c) override {
    const Tensor& image = c->input(0);
    const Tensor& size = c->input(1);
    OP_REQUIRES(c, image.dims() == 3, errors::InvalidArgument("image must be [h, w, c], got ", image.shape().DebugString()));
    OP_REQUIRES(c, size.NumElements() == 2, errors::InvalidArgument("size must be [out_h, out_w]"));
    const int64_t in_h = image.dim_size(0), in_w = image.dim_size(1), ch = image.dim_size(2);
    const int64_t out_h = size.flat<int32>()(0), out_w = size.flat<int32>()(1);
    OP_REQUIRES(c, in_h > 0 && in_w > 0 && out_h > 0 && out_w > 0, errors::InvalidArgument("empty image or size"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(c, c->allocate_output(0, TensorShape({out_h, out_w, ch}), &out));
    std::vector<Interp> xs, ys;
    weights(out_w, in_w, &xs);
    weights(out_h, in_h, &ys);
    const int64_t n = out_w * ch;
    std::vector<int32_t> lo(n), hi(n);
    std::vector<float> xl(n);
    for (int64_t x = 0; x < out_w; ++x)
      for (int64_t k = 0; k < ch; ++k) {
        lo[x * ch + k] = static_cast<int32_t>(xs[x].lower * ch + k);
        hi[x * ch + k] = static_cast<int32_t>(xs[x].upper * ch + k);
        xl[x * ch + k] = xs[x].lerp;
      }
    const uint8_t* src = image.flat<uint8_t>().data();
    uint8_t* dst = out->flat<uint8_t>().data();
    // Two row buffers of x-lerped input rows, keyed by the input row they hold.
    std::vector<float> buf_a(n + 4), buf_b(n + 4);  // + 4: the last pixel's 4-float store
    int64_t row_a = -1, row_b = -1;
    std::vector<float> rowf(in_w * ch + 8);
    auto lerp_row = [&](int64_t r, float* o) {
      const uint8_t* p = src + r * in_w * ch;
      for (int64_t i = 0; i < in_w * ch; ++i) rowf[i] = p[i];
      const float* f = rowf.data();
      int64_t j = 0;
#ifdef __SSE2__
      if (ch == 3) {  // a pixel's 3 lower and 3 upper values are contiguous: two 4-float loads per pixel (the 4th lane is overwritten next)
        for (int64_t x = 0; x < out_w; ++x) {
          const __m128 l = _mm_loadu_ps(f + xs[x].lower * 3), h = _mm_loadu_ps(f + xs[x].upper * 3);
          _mm_storeu_ps(o + x * 3, _mm_add_ps(l, _mm_mul_ps(_mm_sub_ps(h, l), _mm_set1_ps(xs[x].lerp))));
        }
        return;
      }
#endif
#ifdef __AVX2__
      for (; j + 8 <= n; j += 8) {
        const __m256 l = _mm256_i32gather_ps(f, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo.data() + j)), 4);
        const __m256 h = _mm256_i32gather_ps(f, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi.data() + j)), 4);
        _mm256_storeu_ps(o + j, _mm256_add_ps(l, _mm256_mul_ps(_mm256_sub_ps(h, l), _mm256_loadu_ps(xl.data() + j))));
      }
#endif
      for (; j < n; ++j) {
        const float l = f[lo[j]], h = f[hi[j]];
        const float d = h - l;
        const float m = d * xl[j];
        o[j] = l + m;
      }
    };
    auto get_row = [&](int64_t r, int64_t keep) -> const float* {
      if (r == row_a) return buf_a.data();
      if (r == row_b) return buf_b.data();
      if (row_a != keep) { lerp_row(r, buf_a.data()); row_a = r; return buf_a.data(); }
      lerp_row(r, buf_b.data()); row_b = r; return buf_b.data();
    };
    for (int64_t y = 0; y < out_h; ++y) {
      const float* top = get_row(ys[y].lower, -2);
      const float* bot = get_row(ys[y].upper, ys[y].lower);
      const float yl = ys[y].lerp;
      uint8_t* o = dst + y * n;
      for (int64_t j = 0; j < n; ++j) {
        const float d = bot[j] - top[j];
        const float m = d * yl;
        float v = top[j] + m;
        v = std::min(std::max(v, 0.0f), 255.0f);
        o[j] = static_cast<uint8_t>(v);
      }
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("ResizeBilinearUint8").Device(DEVICE_CPU).HostMemory("size"), ResizeBilinearUint8Op);
