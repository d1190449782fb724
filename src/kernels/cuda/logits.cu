// Logits rows reduced on the GPU to what the sampler needs, so a greedy
// stream brings back one id and a random draw its candidates instead of a
// vocabulary of floats. kernels::logits on the host defines the results;
// these give the same ids and values bit for bit (the candidates in any
// order: the host sorts them).
#include "common.cuh"
#include <limits.h>

// Rust's f32::total_cmp order as a signed integer: negative values' bits
// but the sign flip, so a NaN with the sign bit clear sorts above +inf, as
// the host's argmax sees it.
__device__ __forceinline__ int total_key(float v) {
    int b = __float_as_int(v);
    return b ^ (int)(((unsigned)(b >> 31)) >> 1);
}

// Whether (key, index) a beats b: the larger key, the lower index on ties.
__device__ __forceinline__ bool beats(int ka, int ia, int kb, int ib) {
    return ka > kb || (ka == kb && ia < ib);
}

__device__ __forceinline__ void warp_best(int& key, int& idx) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        int k = __shfl_xor_sync(0xffffffffu, key, o);
        int i = __shfl_xor_sync(0xffffffffu, idx, o);
        if (beats(k, i, key, idx)) {
            key = k;
            idx = i;
        }
    }
}

// The index of the row's largest value in total order, the lowest on ties.
__device__ int row_argmax(const float* row, int width) {
    __shared__ int s_key[32], s_idx[32];
    int key = INT_MIN, idx = INT_MAX;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        int k = total_key(row[i]);
        if (beats(k, i, key, idx)) {
            key = k;
            idx = i;
        }
    }
    warp_best(key, idx);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        s_key[warp] = key;
        s_idx[warp] = idx;
    }
    __syncthreads();
    int warps = blockDim.x >> 5;
    key = lane < warps ? s_key[lane] : INT_MIN;
    idx = lane < warps ? s_idx[lane] : INT_MAX;
    warp_best(key, idx);
    return idx == INT_MAX ? 0 : idx;
}

// The row's largest non-NaN value (-inf when there is none), as the host's
// fold of f32::max gives it.
__device__ float row_max(const float* row, int width) {
    __shared__ float s_max[32];
    float m = -INFINITY;
    for (int i = threadIdx.x; i < width; i += blockDim.x) m = fmaxf(m, row[i]);
    m = warp_max(m);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) s_max[warp] = m;
    __syncthreads();
    int warps = blockDim.x >> 5;
    return warp_max(lane < warps ? s_max[lane] : -INFINITY);
}

// One block per row of x (rows × width). modes[r]: 0 leaves the row (it
// comes back whole), 1 writes its argmax to ids[r], 2 collects the finite
// values no lower than max − nats[r]. Candidate slot s of row r is at
// s * rows + r, so the first n slots of every row are one contiguous prefix
// the host copies; count[r] is the number found, which may exceed cap
// (then only cap are written and the host takes the whole row instead).
extern "C" __global__ void reduce_logits(const float* x, int width, const int* modes, const float* nats,
                                         int cap, unsigned* count, unsigned* ids, float* vals) {
    int r = blockIdx.x, rows = gridDim.x;
    const float* row = x + (size_t)r * width;
    int mode = modes[r];
    if (mode == 1) {
        int best = row_argmax(row, width);
        if (threadIdx.x == 0) {
            ids[r] = (unsigned)best;
            count[r] = 1;
        }
        return;
    }
    if (mode != 2) {
        if (threadIdx.x == 0) count[r] = 0;
        return;
    }
    __shared__ unsigned found;
    float floor = __fsub_rn(row_max(row, width), nats[r]);
    if (threadIdx.x == 0) found = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = row[i];
        if (v >= floor && isfinite(v)) {
            unsigned at = atomicAdd(&found, 1u);
            if (at < (unsigned)cap) {
                ids[(size_t)at * rows + r] = (unsigned)i;
                vals[(size_t)at * rows + r] = v;
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) count[r] = found;
}
