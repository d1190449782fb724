// Element conversions shared by the kernels: the KV cache's storage types
// (f16, bf16, OCP E4M3, f32) to and from f32, rounding exactly as the CPU
// cache does (kv_cache::storage::KvElem), so both devices store the same
// bits for the same values.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

struct fp8e4m3 {
    uint8_t bits;
};

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(fp8e4m3 x) {
    int e = (x.bits >> 3) & 0xF;
    float m = (float)(x.bits & 7);
    float a = e == 0 ? m * 0x1p-9f : ldexpf(8.0f + m, e - 10);
    return (x.bits & 0x80) ? -a : a;
}

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
// Round to nearest even, saturate at 448, NaN stored as 0 (KvElem for Fp8E4m3).
template <> __device__ __forceinline__ fp8e4m3 from_f32<fp8e4m3>(float x) {
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (isnan(a)) return fp8e4m3{0};
    if (a >= 448.0f) return fp8e4m3{(uint8_t)(sign | 0x7E)};
    int e = max((int)((__float_as_uint(a) >> 23) & 0xFF) - 127, -6);
    int n = (int)rintf(ldexpf(a, 3 - e));
    uint8_t code;
    if (n < 8) code = (uint8_t)n;
    else if (n == 16) code = (uint8_t)((e + 8) << 3);
    else code = (uint8_t)(((e + 7) << 3) | (n - 8));
    return fp8e4m3{(uint8_t)(sign | code)};
}

// Sum over a warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int warps = blockDim.x >> 5;
    float t = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(t);
}
