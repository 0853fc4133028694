// annt's own CUDA kernels, compiled to PTX by build.rs (nvcc --ptx) and loaded once per device
// through Candle's `CudaDevice::get_or_load_custom_func`.
//
// - Max pooling with overlapping windows and padding (the ImageNet ResNet stem's 3x3/2/1),
//   forward and backward: Candle's CUDA max-pool backward refuses kernel != stride.
//   Padding never wins (it is -inf), the first maximum wins ties and a NaN wins over numbers,
//   exactly as annt's CPU kernel (kernels/cpu.rs, `window_argmax`). The backward is a gather:
//   one thread per input element sums the gradients of the windows whose maximum it is, in
//   the CPU kernel's order, so it needs no atomics and is deterministic.
// - Batch norm in training, fused: one reduction pass for the per-channel mean and biased
//   variance (double accumulation), one pass for the normalised, scaled and shifted output,
//   one reduction pass for the backward's two sums (which also writes dgamma and dbeta) and
//   one pass for dx. Activations arrive in f32 (annt normalises in f32 whatever the compute
//   dtype), so these kernels are f32 only.
//
// All tensors are contiguous NCHW. Every kernel is checked against the CPU path by
// `annt selftest`.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

// Index within the plane of the maximum of window (oy, ox), or -1 for a window entirely in
// the padding.
template <typename T>
__device__ __forceinline__ int window_argmax(const T *plane, int h, int w, int k, int s, int p,
                                             int oy, int ox) {
  int best = -1;
  float bv = 0.0f;
  for (int i = 0; i < k; ++i) {
    int r = oy * s + i - p;
    if (r < 0 || r >= h) continue;
    for (int j = 0; j < k; ++j) {
      int col = ox * s + j - p;
      if (col < 0 || col >= w) continue;
      float v = to_f(plane[r * w + col]);
      if (best < 0 || v > bv || isnan(v)) {
        best = r * w + col;
        bv = v;
      }
    }
  }
  return best;
}

template <typename T>
__device__ void max_pool_fwd(const T *x, T *y, int planes, int h, int w, int k, int s, int p,
                             int oh, int ow) {
  int64_t total = (int64_t)planes * oh * ow;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)blockDim.x * gridDim.x) {
    int64_t plane = idx / (oh * ow);
    int rest = (int)(idx % (oh * ow));
    int oy = rest / ow, ox = rest % ow;
    const T *src = x + plane * h * w;
    int a = window_argmax(src, h, w, k, s, p, oy, ox);
    y[idx] = a >= 0 ? src[a] : from_f<T>(-INFINITY);
  }
}

template <typename T>
__device__ void max_pool_bwd(const T *x, const T *dy, T *dx, int planes, int h, int w, int k,
                             int s, int p, int oh, int ow) {
  int64_t total = (int64_t)planes * h * w;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)blockDim.x * gridDim.x) {
    int64_t plane = idx / (h * w);
    int pos = (int)(idx % (h * w));
    int r = pos / w, col = pos % w;
    const T *src = x + plane * h * w;
    const T *g = dy + plane * oh * ow;
    // Windows oy with oy*s - p <= r <= oy*s - p + k - 1.
    int oy_lo = r + p - k + 1 > 0 ? (r + p - k + 1 + s - 1) / s : 0;
    int oy_hi = min((r + p) / s, oh - 1);
    int ox_lo = col + p - k + 1 > 0 ? (col + p - k + 1 + s - 1) / s : 0;
    int ox_hi = min((col + p) / s, ow - 1);
    float acc = 0.0f;
    for (int oy = oy_lo; oy <= oy_hi; ++oy) {
      for (int ox = ox_lo; ox <= ox_hi; ++ox) {
        if (window_argmax(src, h, w, k, s, p, oy, ox) == pos) acc += to_f(g[oy * ow + ox]);
      }
    }
    dx[idx] = from_f<T>(acc);
  }
}

#define MAX_POOL(SUFFIX, T)                                                                     \
  extern "C" __global__ void max_pool_fwd_##SUFFIX(const T *x, T *y, int planes, int h, int w,  \
                                                   int k, int s, int p, int oh, int ow) {       \
    max_pool_fwd<T>(x, y, planes, h, w, k, s, p, oh, ow);                                       \
  }                                                                                             \
  extern "C" __global__ void max_pool_bwd_##SUFFIX(const T *x, const T *dy, T *dx, int planes,  \
                                                   int h, int w, int k, int s, int p, int oh,   \
                                                   int ow) {                                    \
    max_pool_bwd<T>(x, dy, dx, planes, h, w, k, s, p, oh, ow);                                  \
  }

MAX_POOL(f32, float)
MAX_POOL(f16, __half)
MAX_POOL(bf16, __nv_bfloat16)

// ---- batch norm (training), f32 ------------------------------------------------------------
// Launched with one block per channel and BN_THREADS threads per block for the reductions.
#define BN_THREADS 256

__device__ __forceinline__ double block_sum(double v, double *shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  double total = shared[0];
  __syncthreads();
  return total;
}

// The element `i` (0 <= i < n*hw) of channel `ch`.
__device__ __forceinline__ int64_t bn_index(int64_t i, int ch, int c, int hw) {
  return ((i / hw) * c + ch) * (int64_t)hw + i % hw;
}

// stats = [mean_0..mean_c, var_0..var_c] (biased variance), two passes for accuracy.
extern "C" __global__ void bn_stats_f32(const float *x, float *stats, int n, int c, int hw) {
  __shared__ double shared[BN_THREADS];
  int ch = blockIdx.x;
  int64_t count = (int64_t)n * hw;
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) sum += x[bn_index(i, ch, c, hw)];
  double mean = block_sum(sum, shared) / (double)count;
  double sq = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    double d = x[bn_index(i, ch, c, hw)] - mean;
    sq += d * d;
  }
  double var = block_sum(sq, shared) / (double)count;
  if (threadIdx.x == 0) {
    stats[ch] = (float)mean;
    stats[c + ch] = (float)var;
  }
}

// y = (x - mean) / sqrt(var + eps) * gamma + beta.
extern "C" __global__ void bn_apply_f32(const float *x, float *y, const float *stats,
                                        const float *gamma, const float *beta, float eps, int n,
                                        int c, int hw) {
  int64_t total = (int64_t)n * c * hw;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)blockDim.x * gridDim.x) {
    int ch = (int)((idx / hw) % c);
    float invstd = rsqrtf(stats[c + ch] + eps);
    y[idx] = (x[idx] - stats[ch]) * invstd * gamma[ch] + beta[ch];
  }
}

// out = [sum dy (c), sum dy*(x - mean) (c), dgamma (c), dbeta (c)] with
// dgamma = sum dy*(x - mean) * invstd and dbeta = sum dy.
extern "C" __global__ void bn_grad_sums_f32(const float *dy, const float *x, const float *stats,
                                            float *out, float eps, int n, int c, int hw) {
  __shared__ double shared[BN_THREADS];
  int ch = blockIdx.x;
  int64_t count = (int64_t)n * hw;
  double mean = stats[ch];
  double s1 = 0.0, s2 = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    int64_t j = bn_index(i, ch, c, hw);
    s1 += dy[j];
    s2 += (double)dy[j] * (x[j] - mean);
  }
  s1 = block_sum(s1, shared);
  s2 = block_sum(s2, shared);
  if (threadIdx.x == 0) {
    out[ch] = (float)s1;
    out[c + ch] = (float)s2;
    out[2 * c + ch] = (float)(s2 * rsqrt((double)stats[c + ch] + eps));
    out[3 * c + ch] = (float)s1;
  }
}

// dx = gamma * invstd * (dy - s1/M - (x - mean) * invstd^2 * s2/M), M = n*hw.
extern "C" __global__ void bn_grad_input_f32(const float *dy, const float *x, const float *stats,
                                             const float *gamma, const float *sums, float *dx,
                                             float eps, int n, int c, int hw) {
  int64_t total = (int64_t)n * c * hw;
  float m = (float)((int64_t)n * hw);
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)blockDim.x * gridDim.x) {
    int ch = (int)((idx / hw) % c);
    float invstd = rsqrtf(stats[c + ch] + eps);
    float xhat_coef = invstd * invstd * sums[c + ch] / m;
    dx[idx] = gamma[ch] * invstd * (dy[idx] - sums[ch] / m - (x[idx] - stats[ch]) * xhat_coef);
  }
}
