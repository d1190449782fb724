// Paged attention over the KV cache: the write of new keys and values into
// their slots, and causal attention of query rows (decode tokens and
// prefill chunks alike) with split-K over the context (flash-decoding).
//
// Cache layout, per layer and for keys and values alike:
//   [block][kv_head][slot][head_dim]
// so one head's token row is contiguous and a block of it is one run.
//
// attention_partial: one CTA per (KV head, query row, partition of the
// row's keys). The CTA serves all `group` query heads of its KV head, so
// each key and value is read once per row, not once per query head (GQA).
// attention_merge combines a row's partitions.
// A row's partition size depends only on its own context length, and the
// partials are merged in partition order, so a row's result does not
// depend on the batch it is in.
#include "paged.cuh"

// Elements of a head row each thread owns.
#define VEC 8

// grid: new rows; block: 128. slot_of_row[r] = block * block_size + slot.
template <typename T>
__device__ void write_kv(T* kc, T* vc, const float* k, const float* v, const int* slot_of_row, int kv_heads,
                         int head_dim, int block_size) {
    int r = blockIdx.x, s = slot_of_row[r];
    int blk = s / block_size, slot = s % block_size;
    int width = kv_heads * head_dim;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        int h = i / head_dim, d = i % head_dim;
        size_t idx = (((size_t)blk * kv_heads + h) * block_size + slot) * head_dim + d;
        kc[idx] = from_f32<T>(k[(size_t)r * width + i]);
        vc[idx] = from_f32<T>(v[(size_t)r * width + i]);
    }
}

// Threads: x = VEC-wide slices of a head row (HD / VEC of them), y = the
// query heads of the group (rounded up so x·y fills whole warps; extra y
// are idle), z = interleaved subsets of the keys, merged at the end. Each
// chunk of keys and values is copied to shared memory in 16-byte pieces
// by every thread (cp.async, double-buffered), then each thread
// scores its keys for its head with its slice of q held in registers,
// reduces over x with shuffles, and folds the chunk into its online
// softmax with one exponential per key.
template <typename T, int HD>
__device__ void attention_partial(const T* kc, const T* vc, const float* q, const int* row_seq,
                                  const int* row_pos, const int* tables, const int* table_off, float* part_max,
                                  float* part_sum, float* part_out, int num_heads, int kv_heads, int block_size,
                                  int max_parts, float scale) {
    constexpr int BDX = HD / VEC;
    constexpr int ROW_VECS = HD * (int)sizeof(T) / 16;
    const int tx = threadIdx.x, ty = threadIdx.y, tz = threadIdx.z;
    const int bdy = blockDim.y, bdz = blockDim.z;
    const int nthreads = BDX * bdy * bdz;
    const int tid = (tz * bdy + ty) * BDX + tx;
    const int kvh = blockIdx.x, row = blockIdx.y, part = blockIdx.z;
    const Partition pt = partition_of(row_seq, row_pos, tables, table_off, num_heads, kv_heads);
    if (pt.n == 0) return;
    const int start = pt.start, n = pt.n, h0 = pt.h0, group = pt.group;
    const int* table = pt.table;
    const bool live = ty < group;

    float qv[VEC];
#pragma unroll
    for (int i = 0; i < VEC; i++)
        qv[i] = live ? q[((size_t)row * num_heads + h0 + ty) * HD + tx * VEC + i] * scale : 0.0f;

    extern __shared__ __align__(16) unsigned char smem[];
    // Two stages of (keys, values): the copy of chunk c + 1 runs while
    // chunk c is scored.
    constexpr int C = chunk_keys<T>();
    T* const tiles = reinterpret_cast<T*>(smem);  // [stage][keys, values][C][HD]
    auto fetch = [&](int c0, int buf) {
        T* kt = tiles + buf * 2 * C * HD;
        T* vt = kt + C * HD;
        const int cn = min(C, n - c0);
        for (int i = tid; i < cn * ROW_VECS; i += nthreads) {
            int r = i / ROW_VECS, col = i % ROW_VECS;
            int pos = start + c0 + r;
            int blk = table[pos / block_size], slot = pos % block_size;
            size_t base = (((size_t)blk * kv_heads + kvh) * block_size + slot) * HD;
            cp_async16(reinterpret_cast<uint4*>(kt) + i, reinterpret_cast<const uint4*>(kc + base) + col);
            cp_async16(reinterpret_cast<uint4*>(vt) + i, reinterpret_cast<const uint4*>(vc + base) + col);
        }
        cp_async_commit();
    };
    float m = -INFINITY, d = 0.0f, acc[VEC];
#pragma unroll
    for (int i = 0; i < VEC; i++) acc[i] = 0.0f;

    fetch(0, 0);
    for (int c0 = 0, buf = 0; c0 < n; c0 += C, buf ^= 1) {
        const int cn = min(C, n - c0);
        if (c0 + C < n) {
            fetch(c0 + C, buf ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const T* ks = tiles + buf * 2 * C * HD;
        const T* vs = ks + C * HD;
        // A warp shares tz (x·y fills whole warps), so these branches and
        // the shuffles inside them are warp-uniform.
        float s[C];
        float mc = -INFINITY;
#pragma unroll
        for (int k = 0; k < C; k++) {
            int j = tz + k * bdz;
            s[k] = -INFINITY;
            if (j < cn) {
                float kf[VEC];
                load_row<T, VEC>(ks + j * HD + tx * VEC, kf);
                float dot = 0.0f;
#pragma unroll
                for (int i = 0; i < VEC; i++) dot += qv[i] * kf[i];
#pragma unroll
                for (int o = BDX / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
                s[k] = dot;
                mc = fmaxf(mc, dot);
            }
        }
        if (mc > -INFINITY) {
            float m_new = fmaxf(m, mc);
            float rescale = expf(m - m_new);
            d *= rescale;
#pragma unroll
            for (int i = 0; i < VEC; i++) acc[i] *= rescale;
#pragma unroll
            for (int k = 0; k < C; k++) {
                int j = tz + k * bdz;
                if (j < cn) {
                    float p = expf(s[k] - m_new);
                    d += p;
                    float vf[VEC];
                    load_row<T, VEC>(vs + j * HD + tx * VEC, vf);
#pragma unroll
                    for (int i = 0; i < VEC; i++) acc[i] += p * vf[i];
                }
            }
            m = m_new;
        }
        // This stage is refilled by the next iteration's fetch.
        __syncthreads();
    }

    // Merge the z subsets, in z order, through shared memory.
    float* red = reinterpret_cast<float*>(smem + 4 * C * HD * sizeof(T));
    if (bdz > 1) {
        float* mine = red + (size_t)(tz * bdy + ty) * (HD + 2);
#pragma unroll
        for (int i = 0; i < VEC; i++) mine[tx * VEC + i] = acc[i];
        if (tx == 0) {
            mine[HD] = m;
            mine[HD + 1] = d;
        }
        __syncthreads();
        if (tz == 0) {
            float mt = -INFINITY;
            for (int z = 0; z < bdz; z++) mt = fmaxf(mt, red[(size_t)(z * bdy + ty) * (HD + 2) + HD]);
            d = 0.0f;
#pragma unroll
            for (int i = 0; i < VEC; i++) acc[i] = 0.0f;
            for (int z = 0; z < bdz; z++) {
                const float* o = red + (size_t)(z * bdy + ty) * (HD + 2);
                float w = o[HD] == -INFINITY ? 0.0f : expf(o[HD] - mt);
                d += o[HD + 1] * w;
#pragma unroll
                for (int i = 0; i < VEC; i++) acc[i] += o[tx * VEC + i] * w;
            }
            m = mt;
        }
    }
    if (tz == 0 && live) {
        const size_t slot = ((size_t)row * num_heads + h0 + ty) * max_parts + part;
        if (tx == 0) {
            part_max[slot] = m;
            part_sum[slot] = d;
        }
#pragma unroll
        for (int i = 0; i < VEC; i++) part_out[slot * HD + tx * VEC + i] = acc[i];
    }
}

// Merges a row's partitions in order. grid: (rows, num_heads); block: HD.
__device__ void attention_merge(const int* row_pos, const float* part_max, const float* part_sum,
                                const float* part_out, float* out, int num_heads, int head_dim, int max_parts) {
    const int row = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const int n_keys = row_pos[row] + 1;
    const int parts = (n_keys + partition_size(n_keys) - 1) / partition_size(n_keys);
    const size_t base = ((size_t)row * num_heads + h) * max_parts;
    float m = -INFINITY;
    for (int p = 0; p < parts; p++) m = fmaxf(m, part_max[base + p]);
    float l = 0.0f, o = 0.0f;
    for (int p = 0; p < parts; p++) {
        float w = expf(part_max[base + p] - m);
        l += part_sum[base + p] * w;
        o += part_out[(base + p) * head_dim + d] * w;
    }
    out[((size_t)row * num_heads + h) * head_dim + d] = o / l;
}

extern "C" __global__ void attention_merge_f32(const int* row_pos, const float* part_max, const float* part_sum,
                                               const float* part_out, float* out, int num_heads, int head_dim,
                                               int max_parts) {
    attention_merge(row_pos, part_max, part_sum, part_out, out, num_heads, head_dim, max_parts);
}

#define KV_KERNELS(NAME, T)                                                                                    \
    extern "C" __global__ void write_kv_##NAME(T* kc, T* vc, const float* k, const float* v,                   \
                                               const int* slot_of_row, int kv_heads, int head_dim,            \
                                               int block_size) {                                               \
        write_kv<T>(kc, vc, k, v, slot_of_row, kv_heads, head_dim, block_size);                               \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) attention_partial_##NAME##_64(                      \
        const T* kc, const T* vc, const float* q, const int* row_seq, const int* row_pos, const int* tables,   \
        const int* table_off, float* pm, float* pl, float* po, int nh, int kvh, int bs, int mp, float scale) {  \
        attention_partial<T, 64>(kc, vc, q, row_seq, row_pos, tables, table_off, pm, pl, po, nh, kvh, bs, mp,  \
                                 scale);                                                                       \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) attention_partial_##NAME##_128(                     \
        const T* kc, const T* vc, const float* q, const int* row_seq, const int* row_pos, const int* tables,   \
        const int* table_off, float* pm, float* pl, float* po, int nh, int kvh, int bs, int mp, float scale) {  \
        attention_partial<T, 128>(kc, vc, q, row_seq, row_pos, tables, table_off, pm, pl, po, nh, kvh, bs, mp, \
                                  scale);                                                                      \
    }

KV_KERNELS(f16, __half)
KV_KERNELS(bf16, __nv_bfloat16)
KV_KERNELS(fp8, fp8e4m3)
KV_KERNELS(f32, float)
