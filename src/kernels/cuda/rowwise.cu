// Row-wise ops of the forward pass over f32 activations (one row per token):
// RMSNorm (with the residual add fused), RoPE, SiLU-mul, the embedding
// gather, row gathers, bias, and the bf16 rounding of a matmul's input.
// Each row is reduced by one block in a fixed order, so a row's values do
// not depend on which other rows share the launch.
#include "common.cuh"

__device__ void norm_row(const float* x, const float* w, float* out, int width, float eps) {
    __shared__ float scratch[32];
    float ss = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) ss += x[i] * x[i];
    float inv = rsqrtf(block_sum(ss, scratch) / (float)width + eps);
    for (int i = threadIdx.x; i < width; i += blockDim.x) out[i] = x[i] * inv * w[i];
}

// grid: rows; block: 256.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, int width, float eps) {
    size_t off = (size_t)blockIdx.x * width;
    norm_row(x + off, w, out + off, width, eps);
}

// x += y, then out = RMSNorm(x). grid: rows; block: 256.
extern "C" __global__ void add_rms_norm(float* x, const float* y, const float* w, float* out, int width,
                                        float eps) {
    size_t off = (size_t)blockIdx.x * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) x[off + i] += y[off + i];
    __syncthreads();
    norm_row(x + off, w, out + off, width, eps);
}

extern "C" __global__ void add(float* x, const float* y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        x[i] += y[i];
}

extern "C" __global__ void silu_mul(float* g, const float* u, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float a = g[i];
        g[i] = a / (1.0f + expf(-a)) * u[i];
    }
}

// Rotates every `head_dim`-wide chunk of each row; row t uses angle row t.
// interleaved: pairs (2j, 2j+1); else (j, j + pairs). grid: rows; block: 256.
extern "C" __global__ void rope(float* x, const float* cos_t, const float* sin_t, int width, int head_dim,
                                int pairs, int interleaved) {
    float* row = x + (size_t)blockIdx.x * width;
    const float* c = cos_t + (size_t)blockIdx.x * pairs;
    const float* s = sin_t + (size_t)blockIdx.x * pairs;
    int heads = width / head_dim;
    for (int i = threadIdx.x; i < heads * pairs; i += blockDim.x) {
        int h = i / pairs, j = i % pairs;
        float* head = row + h * head_dim;
        int i1 = interleaved ? 2 * j : j, i2 = interleaved ? 2 * j + 1 : j + pairs;
        float a = head[i1], b = head[i2];
        head[i1] = a * c[j] - b * s[j];
        head[i2] = a * s[j] + b * c[j];
    }
}

// out[r] = table[ids[r]]. grid: rows; block: 256.
extern "C" __global__ void embed(const float* table, const uint32_t* ids, float* out, int width) {
    const float* src = table + (size_t)ids[blockIdx.x] * width;
    float* dst = out + (size_t)blockIdx.x * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
}

// out[r] = x[rows[r]]. grid: rows; block: 256.
extern "C" __global__ void gather_rows(const float* x, const uint32_t* rows, float* out, int width) {
    const float* src = x + (size_t)rows[blockIdx.x] * width;
    float* dst = out + (size_t)blockIdx.x * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
}

// y[r][i] += b[i] over n = rows * width values.
extern "C" __global__ void add_bias(float* y, const float* b, int width, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] += b[i % width];
}

// The bf16 copy a cuBLAS bf16 GEMM multiplies (round to nearest even).
extern "C" __global__ void to_bf16(const float* x, __nv_bfloat16* y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(x[i]);
}

// Deterministic pseudo-random values, uniform in [-scale, scale): the
// weights of synthetic models for benchmarks (no download, no host copy).
__device__ __forceinline__ float random_at(long long i, unsigned long long seed, float scale) {
    unsigned long long z = seed + (unsigned long long)i * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((float)(z >> 40) * 0x1p-24f * 2.0f - 1.0f) * scale;
}

extern "C" __global__ void fill_random_bf16(__nv_bfloat16* y, long long n, unsigned long long seed, float scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(random_at(i, seed, scale));
}

extern "C" __global__ void fill_random_f32(float* y, long long n, unsigned long long seed, float scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = random_at(i, seed, scale);
}

extern "C" __global__ void to_f16(const float* x, __half* y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(x[i]);
}
