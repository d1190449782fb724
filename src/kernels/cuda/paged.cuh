// What both attention kernels share: the partition of a row's keys, the
// asynchronous copy into shared memory, and widening loads.
#pragma once
#include "common.cuh"

#define MAX_PART 512

// Copies E elements of T (E * sizeof(T) a multiple of 8 bytes) with the
// widest aligned loads.
template <typename T, int E>
__device__ __forceinline__ void load_row(const T* src, float* dst) {
    constexpr int BYTES = E * (int)sizeof(T);
    union {
        T t[E];
        uint2 v2[BYTES / 8 > 0 ? BYTES / 8 : 1];
        uint4 v4[BYTES / 16 > 0 ? BYTES / 16 : 1];
    } u;
    if constexpr (BYTES % 16 == 0) {
#pragma unroll
        for (int i = 0; i < BYTES / 16; i++) u.v4[i] = reinterpret_cast<const uint4*>(src)[i];
    } else {
#pragma unroll
        for (int i = 0; i < BYTES / 8; i++) u.v2[i] = reinterpret_cast<const uint2*>(src)[i];
    }
#pragma unroll
    for (int i = 0; i < E; i++) dst[i] = to_f32(u.t[i]);
}

// Keys a row's partition covers: a power of two from 32 to 512, about
// 1/64 of its context, so short contexts still spread over many CTAs and
// long ones keep the merge small.
__device__ __forceinline__ int partition_size(int n_keys) {
    int p = 32;
    while (p < MAX_PART && p * 64 < n_keys) p <<= 1;
    return p;
}

// The keys one CTA of the attention kernels covers: partition blockIdx.z
// of row blockIdx.y's keys, for KV head blockIdx.x and its query heads.
struct Partition {
    int start;         // first key
    int n;             // keys; 0 when the row has fewer partitions than the grid
    const int* table;  // the row's block table
    int h0;            // first query head of the group
    int group;         // query heads per KV head
};

__device__ __forceinline__ Partition partition_of(const int* row_seq, const int* row_pos, const int* tables,
                                                  const int* table_off, int num_heads, int kv_heads) {
    const int row = blockIdx.y, n_keys = row_pos[row] + 1, size = partition_size(n_keys);
    Partition p;
    p.start = blockIdx.z * size;
    p.n = max(0, min(size, n_keys - p.start));
    p.table = tables + table_off[row_seq[row]];
    p.group = num_heads / kv_heads;
    p.h0 = blockIdx.x * p.group;
    return p;
}

// Keys staged in shared memory at a time: 16 KiB of keys and values per
// stage at head_dim 128.
template <typename T> __host__ __device__ constexpr int chunk_keys() { return sizeof(T) == 4 ? 16 : 32; }

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// The same copy, of zeros when `valid` is false (rows past the last key, so
// that stale shared memory never meets a zero weight as 0 · NaN).
__device__ __forceinline__ void cp_async16_zfill(void* dst, const void* src, bool valid) {
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(n));
}
