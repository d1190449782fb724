// Decode and prefill attention on tensor cores, for 16-bit caches: the
// query heads of one KV head (a GQA group, at most 16) are the 16 rows of
// an mma.sync m16n8k16 tile, so each key and value feeds a whole group in
// one instruction, where the CUDA-core kernel (attention.cu) spends a fused
// multiply-add per element per head and becomes compute-bound at GQA
// ratios of 4 and more. Same grid, partitions and partial outputs as
// attention.cu (merged by its attention_merge_f32), so a row's result does
// not depend on its batch.
//
// CTA: 2 warps. Keys and values move to shared memory in chunks of 32 keys
// (cp.async, double-buffered; rows padded by 8 elements so ldmatrix reads
// are conflict-free); each warp takes 16 keys of a chunk: S = Q·Kᵀ (fp32
// accumulators), an online softmax over its rows, then O += P·V with P
// rounded to the cache's type (as FlashAttention does). The two warps'
// results merge through shared memory at the end.
//
// Rounding: q is rounded to the cache type before Q·Kᵀ and P before P·V,
// one rounding each (bf16: 2⁻⁸ relative; f16: 2⁻¹¹); everything else
// accumulates in f32.
#include "paged.cuh"

#define WARPS 2
#define KEYS 32

template <typename T> struct Mma;
template <> struct Mma<__half> {
    static __device__ __forceinline__ void run(float* c, const unsigned* a, const unsigned* b) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<unsigned*>(&h);
    }
};
template <> struct Mma<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float* c, const unsigned* a, const unsigned* b) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<unsigned*>(&h);
    }
};

__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const void* p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, const void* p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

template <typename T, int HD>
__device__ void attention_mma(const T* kc, const T* vc, const float* q, const int* row_seq, const int* row_pos,
                              const int* tables, const int* table_off, float* part_max, float* part_sum,
                              float* part_out, int num_heads, int kv_heads, int block_size, int max_parts,
                              float scale) {
    constexpr int LD = HD + 8;             // padded row, in elements
    constexpr int ROW_VECS = HD * 2 / 16;  // 16-byte pieces per row
    constexpr int NT = HD / 8;             // n-tiles of the output
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int kvh = blockIdx.x, row = blockIdx.y, part = blockIdx.z;
    const Partition pt = partition_of(row_seq, row_pos, tables, table_off, num_heads, kv_heads);
    if (pt.n == 0) return;
    const int start = pt.start, n = pt.n, h0 = pt.h0, group = pt.group;
    const int* table = pt.table;

    extern __shared__ __align__(16) unsigned char smem[];
    T* tiles = reinterpret_cast<T*>(smem);  // [stage][keys, values][KEYS][LD]
    // The query tile (16 rows × HD, rows past the group zero) shares the
    // first stage's space until its fragments are in registers.
    for (int i = threadIdx.x; i < 16 * HD; i += WARPS * 32) {
        int r = i / HD, c = i % HD;
        float v = r < group ? q[((size_t)row * num_heads + h0 + r) * HD + c] * scale : 0.0f;
        tiles[r * LD + c] = from_f32<T>(v);
    }
    __syncthreads();
    unsigned qa[HD / 16][4];
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
        int j = lane / 8, r = lane % 8;
        ldmatrix_x4(qa[ks], tiles + ((j % 2) * 8 + r) * LD + ks * 16 + (j / 2) * 8);
    }
    __syncthreads();

    auto fetch = [&](int c0, int buf) {
        T* kt = tiles + buf * 2 * KEYS * LD;
        T* vt = kt + KEYS * LD;
        for (int i = threadIdx.x; i < KEYS * ROW_VECS; i += WARPS * 32) {
            int r = i / ROW_VECS, col = i % ROW_VECS;
            bool valid = c0 + r < n;
            int pos = start + c0 + (valid ? r : 0);
            int blk = table[pos / block_size], slot = pos % block_size;
            size_t base = (((size_t)blk * kv_heads + kvh) * block_size + slot) * HD;
            cp_async16_zfill(reinterpret_cast<uint4*>(kt + r * LD) + col, reinterpret_cast<const uint4*>(kc + base) + col,
                             valid);
            cp_async16_zfill(reinterpret_cast<uint4*>(vt + r * LD) + col, reinterpret_cast<const uint4*>(vc + base) + col,
                             valid);
        }
        cp_async_commit();
    };

    // This thread's rows: g and g + 8; its columns of a tile: 2·(lane % 4) + {0, 1}.
    const int g = lane / 4, c2 = 2 * (lane % 4);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float o[NT][4];
#pragma unroll
    for (int t = 0; t < NT; t++) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;

    fetch(0, 0);
    for (int c0 = 0, buf = 0; c0 < n; c0 += KEYS, buf ^= 1) {
        if (c0 + KEYS < n) {
            fetch(c0 + KEYS, buf ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const T* kt = tiles + buf * 2 * KEYS * LD + warp * 16 * LD;
        const T* vt = kt + KEYS * LD;
        // S (16 rows × 16 keys) as two n-tiles of 8 keys.
        float s[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks++) {
            int j = lane / 8, r = lane % 8;
            unsigned b[4];
            ldmatrix_x4(b, kt + ((j / 2) * 8 + r) * LD + ks * 16 + (j % 2) * 8);
            Mma<T>::run(s[0], qa[ks], b);
            Mma<T>::run(s[1], qa[ks], b + 2);
        }
        // Mask keys past the partition, then the online softmax per row.
        const int k0 = c0 + warp * 16;
        float mc[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int t = 0; t < 2; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                if (k0 + t * 8 + c2 + (e & 1) >= n) s[t][e] = -INFINITY;
                mc[e / 2] = fmaxf(mc[e / 2], s[t][e]);
            }
        float rescale[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            mc[h] = fmaxf(mc[h], __shfl_xor_sync(0xffffffffu, mc[h], 1));
            mc[h] = fmaxf(mc[h], __shfl_xor_sync(0xffffffffu, mc[h], 2));
            float m_new = fmaxf(m[h], mc[h]);
            rescale[h] = m_new == -INFINITY ? 1.0f : expf(m[h] - m_new);
            m[h] = m_new;
            l[h] *= rescale[h];
        }
        unsigned pa[4];
        float p[2][4];
#pragma unroll
        for (int t = 0; t < 2; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int h = e / 2;
                p[t][e] = s[t][e] == -INFINITY ? 0.0f : expf(s[t][e] - m[h]);
                l[h] += p[t][e];
            }
        // The S accumulator layout is the A layout of P·V (rows g, g + 8;
        // keys c2 and c2 + 8 of the 16).
        pa[0] = Mma<T>::pack(p[0][0], p[0][1]);
        pa[1] = Mma<T>::pack(p[0][2], p[0][3]);
        pa[2] = Mma<T>::pack(p[1][0], p[1][1]);
        pa[3] = Mma<T>::pack(p[1][2], p[1][3]);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            o[t][0] *= rescale[0];
            o[t][1] *= rescale[0];
            o[t][2] *= rescale[1];
            o[t][3] *= rescale[1];
        }
#pragma unroll
        for (int d = 0; d < HD / 16; d++) {
            int j = lane / 8, r = lane % 8;
            unsigned b[4];
            ldmatrix_x4_trans(b, vt + ((j % 2) * 8 + r) * LD + d * 16 + (j / 2) * 8);
            Mma<T>::run(o[2 * d], pa, b);
            Mma<T>::run(o[2 * d + 1], pa, b + 2);
        }
        // This stage is refilled by the next iteration's fetch.
        __syncthreads();
    }

    // Row sums over the four threads of a row, then the two warps merge
    // through shared memory (free now): [warp][16 rows][HD + 2].
#pragma unroll
    for (int h = 0; h < 2; h++) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
    float* red = reinterpret_cast<float*>(smem);
    float* mine = red + (size_t)warp * 16 * (HD + 2);
#pragma unroll
    for (int t = 0; t < NT; t++) {
        mine[g * (HD + 2) + t * 8 + c2] = o[t][0];
        mine[g * (HD + 2) + t * 8 + c2 + 1] = o[t][1];
        mine[(g + 8) * (HD + 2) + t * 8 + c2] = o[t][2];
        mine[(g + 8) * (HD + 2) + t * 8 + c2 + 1] = o[t][3];
    }
    if (lane % 4 == 0) {
        mine[g * (HD + 2) + HD] = m[0];
        mine[g * (HD + 2) + HD + 1] = l[0];
        mine[(g + 8) * (HD + 2) + HD] = m[1];
        mine[(g + 8) * (HD + 2) + HD + 1] = l[1];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < group * HD; i += WARPS * 32) {
        int r = i / HD, c = i % HD;
        float mt = -INFINITY;
#pragma unroll
        for (int w = 0; w < WARPS; w++) mt = fmaxf(mt, red[(w * 16 + r) * (HD + 2) + HD]);
        float acc = 0.0f, sum = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) {
            const float* x = red + (w * 16 + r) * (HD + 2);
            float wt = x[HD] == -INFINITY ? 0.0f : expf(x[HD] - mt);
            acc += x[c] * wt;
            sum += x[HD + 1] * wt;
        }
        const size_t slot = ((size_t)row * num_heads + h0 + r) * max_parts + part;
        part_out[slot * HD + c] = acc;
        if (c == 0) {
            part_max[slot] = mt;
            part_sum[slot] = sum;
        }
    }
}

#define MMA_KERNEL(NAME, T, HD)                                                                              \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) attention_mma_##NAME##_##HD(                   \
        const T* kc, const T* vc, const float* q, const int* row_seq, const int* row_pos, const int* tables, \
        const int* table_off, float* pm, float* pl, float* po, int nh, int kvh, int bs, int mp, float scale) { \
        attention_mma<T, HD>(kc, vc, q, row_seq, row_pos, tables, table_off, pm, pl, po, nh, kvh, bs, mp,    \
                             scale);                                                                         \
    }

MMA_KERNEL(f16, __half, 64)
MMA_KERNEL(f16, __half, 128)
MMA_KERNEL(bf16, __nv_bfloat16, 64)
MMA_KERNEL(bf16, __nv_bfloat16, 128)
