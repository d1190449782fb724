//! Quantized matrix multiplication `out[m×n] = x[m×k] · Wᵀ` for GGUF weights.
//!
//! # Math
//!
//! The arithmetic is exactly ggml's (and candle's): every activation row is
//! quantized to the weight type's "vec-dot" type (Q8_0 for Q4_0/Q5_0/Q8_0,
//! Q8_1 for Q4_1/Q5_1, Q8_K for the k-quants) with candle's rounding, each
//! block's dot product is computed in integers, and the per-block scales are
//! combined in f32. Only the order of the f32 summation differs from candle,
//! so results agree to about 1e-6 relative.
//!
//! # Why tiles
//!
//! candle computes one activation row at a time, so a batch of `m` rows
//! streams the whole weight matrix from memory `m` times. Here the output
//! columns (= weight rows) are split into tiles; one rayon task owns a tile
//! and computes it for *all* activation rows, so each weight byte is read from
//! DRAM once per call and reused from cache. Inside a task up to four
//! activation rows share one decoded weight block held in registers, which
//! removes most of the unpacking work for batches. Tiles are small enough
//! that even `n = 128` gives every thread several tasks.
//!
//! # Why runtime dispatch
//!
//! The server binary is built for generic x86-64, so compile-time
//! `target_feature` flags cannot be relied on (candle's SIMD paths vanish
//! without `-C target-feature=+avx2`). The CPU is probed once
//! ([`Isa::detect`]) and the best kernel set is used: AMX-INT8 tiles for the
//! 32-element block types, Q4_K and Q6_K (weights repacked at load,
//! `qmatmul_tiled` and `qmatmul_tiled_k`), AVX-512 VNNI (`vpdpbusd` on the
//! same repacked layout), AVX2+FMA (the repacked layout read as 256-bit
//! halves, `qmatmul_tiled_avx2` and `qmatmul_tiled_k`'s AVX2 path),
//! AVX-VNNI (on ggml's rows), or portable scalar code, which also covers
//! the types without a SIMD kernel (Q2_K, Q3_K, Q5_K). Types and shapes the
//! repacked layout does not take (Q5_K; `n` not a multiple of 16) use
//! ggml's rows with the best row kernel. `R1SERVE_ISA` caps the choice (see
//! [`super::isa`]).
//! One matrix always runs the same kernels whatever the batch size, so a
//! row's result never depends on the rows computed with it.

use anyhow::{bail, ensure, Context, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

use super::isa::{self, KernelIsa, Level};
use super::qmatmul_simd;
#[cfg(target_arch = "x86_64")]
use super::qmatmul_tiled::TiledMatrix;
use super::quantize::{quantize_row_pairs, quantize_row_q8, quantize_row_q8k};
#[cfg(target_arch = "x86_64")]
use super::{qmatmul_tiled, qmatmul_tiled_k};

/// Elements per block of the 32-element formats (Q4_0 … Q8_0).
pub(crate) const QK: usize = 32;
/// Elements per super-block of the k-quant formats.
pub(crate) const QK_K: usize = 256;
/// Most activation rows that share one decoded weight block: batches of
/// eight or more go eight at a time, the rest four or fewer.
const ROWS: usize = 8;
/// The largest group below [`ROWS`] with its own kernel.
const SMALL_ROWS: usize = 4;
/// Rows per group for the 512-bit pair kernel, which has the registers for
/// sixteen accumulators.
const PAIR_ROWS: usize = 16;

/// Which instruction set a matmul uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, any CPU.
    Scalar,
    /// AVX2 + FMA + F16C (Haswell and later): the 32-element block types,
    /// Q4_K and Q6_K in the tiled layout of [`Isa::Avx512Vnni`] when `n`
    /// fills whole groups, read as 256-bit halves, the rest on ggml's rows.
    Avx2,
    /// The AVX2 kernels with integer dot products done by AVX-VNNI
    /// `vpdpbusd` (Alder Lake, Sapphire Rapids, Zen 5).
    AvxVnni,
    /// AVX-512 VNNI `vpdpbusd` (Ice Lake, Zen 4 and later): the 32-element
    /// block types, Q4_K and Q6_K repacked at load into 16-row groups of
    /// 512-bit registers (`qmatmul_tiled`, `qmatmul_tiled_k`) when `n`
    /// fills whole groups, the rest the AVX2 kernels with their integer dot
    /// products on 256-bit registers.
    Avx512Vnni,
    /// [`Isa::Avx512Vnni`], with AMX-INT8 tile multiplies for batches
    /// (Sapphire Rapids and later; Linux must grant the tile state).
    Amx,
}

impl KernelIsa for Isa {
    const ALL: &'static [Isa] = &[
        Isa::Scalar,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512Vnni,
        Isa::Amx,
    ];

    /// The [`Level`] a CPU needs for `self`.
    fn level(self) -> Level {
        match self {
            Isa::Scalar => Level::Scalar,
            Isa::Avx2 => Level::Avx2,
            Isa::AvxVnni => Level::AvxVnni,
            Isa::Avx512Vnni => Level::Avx512Vnni,
            Isa::Amx => Level::Amx,
        }
    }

    /// Whether this CPU can run the kernels of `self`.
    fn is_supported(self) -> bool {
        let cpu = isa::cpu();
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => cpu.avx2,
            Isa::AvxVnni => cpu.avx_vnni,
            Isa::Avx512Vnni => cpu.avx512vnni,
            Isa::Amx => cpu.amx_int8,
        }
    }

    /// A name for test and bench output.
    fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "AVX2+FMA+F16C",
            Isa::AvxVnni => "AVX-VNNI",
            Isa::Avx512Vnni => "AVX-512 VNNI",
            Isa::Amx => "AMX-INT8",
        }
    }
}

impl Isa {}

/// A quantized weight matrix of shape `(n, k)`, laid out for the kernels of
/// one instruction set and ready for [`QMatrix::matmul`].
#[derive(Debug, Clone)]
pub struct QMatrix {
    dtype: GgmlDType,
    n: usize,
    k: usize,
    /// The kernels this matrix runs with (the layout depends on them).
    isa: Isa,
    /// Bytes of one ggml weight row (`k / block_size * type_size`).
    row_bytes: usize,
    storage: Storage,
}

#[derive(Debug, Clone)]
enum Storage {
    /// ggml's blocks, row after row.
    Rows(Vec<u8>),
    /// Repacked into 16-row groups (AVX2, AVX-512 VNNI and AMX kernels).
    #[cfg(target_arch = "x86_64")]
    Tiled(qmatmul_tiled::TiledWeights),
    /// Repacked for the AMX kernels (k-quants).
    #[cfg(target_arch = "x86_64")]
    TiledK(qmatmul_tiled_k::TiledKWeights),
}

/// An activation block in Q8_0 / Q8_1 form. `d` and `s` are the f16 values
/// candle stores, widened to f32; `corr = −offset·Σqs` is the exact integer
/// correction that turns a dot product with the unsigned stored quants of
/// Q4_0 (offset 8) or Q5_0 (offset 16) into the signed one (0 for the other
/// types), precomputed so the kernels spend one add on it.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q8x32 {
    pub(crate) qs: [i8; QK],
    pub(crate) d: f32,
    pub(crate) s: f32,
    pub(crate) corr: i32,
}

/// An activation block in Q8_K form (candle's `BlockQ8K` values, plus the
/// pair sums the k-quant kernels' mins read).
/// Aligned to a cache line so that a row of blocks is a row of 64-byte
/// aligned quant lines for AMX tile loads (an unaligned `tileloadd` costs
/// several aligned ones; [`super::amx::TileBuf`]).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Q8xK {
    pub(crate) qs: [i8; QK_K],
    pub(crate) d: f32,
    pub(crate) bsums: [i16; QK_K / 16],
    /// The sums of the 32-quant sub-blocks `2p` and `2p + 1` as the low and
    /// high 16-bit halves of dword `p` (each sum is at most 32·128 in
    /// magnitude): the activation operand that the k-quant kernels' mins
    /// meet in `vpmaddwd`/`vpdpwssd`, broadcast straight from memory. It
    /// lives in the block's padding to its 64-byte alignment.
    pub(crate) pairs: [i32; QK_K / 64],
}

/// Activation rows quantized to the weight type's vec-dot type.
enum Activations {
    B32(Vec<Q8x32>),
    K(Vec<Q8xK>),
    Pairs(Vec<Q8Pair>),
}

/// Two consecutive Q8_0 activation blocks laid out for one 512-bit
/// `vpdpbusd`, whose first operand must be unsigned: `qs` holds the quants
/// plus 128 (the weights stay signed, and the kernel removes `128·Σw` per
/// weight block, once for all rows). Lanes 0–7 of `scale` belong to the
/// first block, lanes 8–15 to the second.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Q8Pair {
    pub(crate) qs: [u8; 2 * QK],
    pub(crate) scale: [f32; 16],
}

impl Q8Pair {
    pub(crate) const ZERO: Self = Self {
        qs: [128; 2 * QK],
        scale: [0.0; 16],
    };
}

/// Whether the pair layout and its AVX-512 kernel serve this call: types
/// whose quants become unsigned with a fixed offset, an even block count.
fn uses_pairs(isa: Isa, dtype: GgmlDType, k: usize) -> bool {
    isa == Isa::Avx512Vnni
        && matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0)
        && (k / QK).is_multiple_of(2)
}

impl QMatrix {
    /// Whether [`QMatrix`] can hold weights of this type.
    pub fn supported(dtype: GgmlDType) -> bool {
        matches!(
            dtype,
            GgmlDType::Q4_0
                | GgmlDType::Q4_1
                | GgmlDType::Q5_0
                | GgmlDType::Q5_1
                | GgmlDType::Q8_0
                | GgmlDType::Q2K
                | GgmlDType::Q3K
                | GgmlDType::Q4K
                | GgmlDType::Q5K
                | GgmlDType::Q6K
        )
    }

    /// Copies a 2-D quantized tensor of shape `(n, k)` for the best
    /// instruction set of this CPU within `R1SERVE_ISA` (whose bad value is
    /// the error).
    pub fn from_qtensor(t: &QTensor) -> Result<Self> {
        isa::limit()?;
        Self::from_qtensor_for(t, Isa::detect())
    }

    /// [`QMatrix::from_qtensor`] for the kernels of `isa` (or of
    /// [`Isa::detect`] when this CPU cannot run `isa`); used to test and
    /// compare the kernels against each other.
    pub fn from_qtensor_for(t: &QTensor, isa: Isa) -> Result<Self> {
        Self::build(t, isa, true)
    }

    /// [`QMatrix::from_qtensor_for`] on ggml's rows even where the CPU has
    /// a repacked layout (with the AVX-512 VNNI kernels in place of AMX):
    /// what the repacked kernels replace, for benchmarks to compare.
    pub fn from_qtensor_on_rows(t: &QTensor, isa: Isa) -> Result<Self> {
        Self::build(t, isa, false)
    }

    fn build(t: &QTensor, isa: Isa, repack: bool) -> Result<Self> {
        let dtype = t.dtype();
        ensure!(
            Self::supported(dtype),
            "quantized matmul does not support {dtype:?}"
        );
        let (n, k) = t.shape().dims2().context("quantized matmul weight")?;
        let bs = dtype.block_size();
        ensure!(
            k % bs == 0,
            "k = {k} is not a multiple of the {dtype:?} block size {bs}"
        );
        let row_bytes = k / bs * dtype.type_size();
        let data = t.data()?;
        if data.len() != n * row_bytes {
            bail!(
                "{dtype:?} tensor ({n}, {k}) has {} bytes, expected {}",
                data.len(),
                n * row_bytes
            );
        }
        let mut isa = if isa.is_supported() {
            isa
        } else {
            Isa::detect()
        };
        #[cfg(target_arch = "x86_64")]
        let tiled = match isa {
            _ if !repack => None,
            Isa::Amx | Isa::Avx512Vnni | Isa::Avx2 => {
                qmatmul_tiled::TiledWeights::new(dtype, n, k, &data)
                    .map(Storage::Tiled)
                    .or_else(|| {
                        qmatmul_tiled_k::TiledKWeights::new(dtype, n, k, &data).map(Storage::TiledK)
                    })
            }
            _ => None,
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(storage) = tiled {
            return Ok(Self {
                dtype,
                n,
                k,
                isa,
                row_bytes,
                storage,
            });
        }
        // Types without a tiled kernel run the AVX-512 VNNI ones.
        if isa == Isa::Amx {
            isa = Isa::Avx512Vnni;
        }
        Ok(Self {
            dtype,
            n,
            k,
            isa,
            row_bytes,
            storage: Storage::Rows(data.into_owned()),
        })
    }

    /// The ggml type of the weights.
    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Number of output features (weight rows).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of input features (weight columns).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The instruction set whose kernels this matrix runs with.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Whether the weights were repacked into the tiled layout.
    pub fn is_tiled(&self) -> bool {
        !matches!(self.storage, Storage::Rows(_))
    }

    /// Size of the weights in bytes, i.e. what one call reads from memory.
    pub fn size_in_bytes(&self) -> usize {
        match &self.storage {
            Storage::Rows(data) => data.len(),
            #[cfg(target_arch = "x86_64")]
            Storage::Tiled(t) => t.size_in_bytes(),
            #[cfg(target_arch = "x86_64")]
            Storage::TiledK(t) => t.size_in_bytes(),
        }
    }

    /// `out[m×n] = x[m×k] · Wᵀ` with the kernels of [`QMatrix::isa`].
    ///
    /// # Panics
    ///
    /// If `x.len() != m * k` or `out.len() != m * n`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "x must be m×k = {m}×{}", self.k);
        assert_eq!(out.len(), m * self.n, "out must be m×n = {m}×{}", self.n);
        if m == 0 || self.n == 0 {
            return;
        }
        match &self.storage {
            Storage::Rows(data) => {
                let xq = self.quantize_activations(x, m);
                for_each_tile(out, self.n, tile_rows(self.n), |j0, o| {
                    self.tile(data, &xq, j0, o)
                });
            }
            #[cfg(target_arch = "x86_64")]
            Storage::Tiled(t) => self.run_tiled(t, x, m, out),
            #[cfg(target_arch = "x86_64")]
            Storage::TiledK(t) => self.run_tiled(t, x, m, out),
        }
    }

    /// Runs a tiled matrix's kernels for [`QMatrix::isa`] over every tile.
    #[cfg(target_arch = "x86_64")]
    fn run_tiled<T: TiledMatrix>(&self, t: &T, x: &[f32], m: usize, out: &mut [f32]) {
        let xq = t.quantize(x, m);
        let tile = tile_rows(self.n).next_multiple_of(qmatmul_tiled::GROUP);
        let amx = self.isa == Isa::Amx;
        // SAFETY: tiled storage is only built for `Isa::Amx`,
        // `Isa::Avx512Vnni` and `Isa::Avx2`, when supported.
        if self.isa == Isa::Avx2 {
            for_each_tile(out, self.n, tile, |j0, o| unsafe {
                t.tile_avx2(&xq, j0, o)
            });
        } else {
            for_each_tile(out, self.n, tile, |j0, o| unsafe {
                t.tile(&xq, j0, o, amx)
            });
        }
    }

    fn quantize_activations(&self, x: &[f32], m: usize) -> Activations {
        let k = self.k;
        if uses_pairs(self.isa, self.dtype, k) {
            let pairs_per_row = k / (2 * QK);
            let mut pairs = vec![Q8Pair::ZERO; m * pairs_per_row];
            if m > 1 {
                pairs
                    .par_chunks_mut(pairs_per_row)
                    .zip(x.par_chunks(k))
                    .for_each(|(p, row)| quantize_row_pairs(row, p));
            } else {
                quantize_row_pairs(x, &mut pairs);
            }
            return Activations::Pairs(pairs);
        }
        // Quantization is cheap per row; only spread it over threads for batches.
        if is_k_quant(self.dtype) {
            let kb = k / QK_K;
            let mut blocks = vec![Q8xK::ZERO; m * kb];
            if m > 1 {
                blocks
                    .par_chunks_mut(kb)
                    .zip(x.par_chunks(k))
                    .for_each(|(b, row)| quantize_row_q8k(row, b));
            } else {
                quantize_row_q8k(x, &mut blocks);
            }
            Activations::K(blocks)
        } else {
            let kb = k / QK;
            let with_s = matches!(self.dtype, GgmlDType::Q4_1 | GgmlDType::Q5_1);
            let offset = match self.dtype {
                GgmlDType::Q4_0 => 8,
                GgmlDType::Q5_0 => 16,
                _ => 0,
            };
            let mut blocks = vec![Q8x32::ZERO; m * kb];
            if m > 1 {
                blocks
                    .par_chunks_mut(kb)
                    .zip(x.par_chunks(k))
                    .for_each(|(b, row)| quantize_row_q8(row, b, with_s, offset));
            } else {
                quantize_row_q8(x, &mut blocks, with_s, offset);
            }
            Activations::B32(blocks)
        }
    }

    /// Computes weight rows `j0..j0 + width` for all activation rows `i`
    /// into `o[i][j - j0]`.
    fn tile(&self, data: &[u8], xq: &Activations, j0: usize, o: &mut [&mut [f32]]) {
        let m = o.len();
        // Activation rows outermost: a group of rows stays in L1
        // while the tile's weight rows (a few tens of KiB) cycle through L2.
        let pairs = matches!(xq, Activations::Pairs(_));
        let mut i0 = 0;
        while i0 < m {
            let r = if pairs && m - i0 >= PAIR_ROWS {
                PAIR_ROWS
            } else if m - i0 >= ROWS {
                ROWS
            } else {
                (m - i0).min(SMALL_ROWS)
            };
            let group = &mut o[i0..i0 + r];
            match r {
                1 => self.group::<1>(data, xq, i0, j0, group),
                2 => self.group::<2>(data, xq, i0, j0, group),
                3 => self.group::<3>(data, xq, i0, j0, group),
                SMALL_ROWS => self.group::<SMALL_ROWS>(data, xq, i0, j0, group),
                ROWS => self.group::<ROWS>(data, xq, i0, j0, group),
                _ => self.group::<PAIR_ROWS>(data, xq, i0, j0, group),
            }
            i0 += r;
        }
    }

    /// The tile's weight rows against activation rows `i0..i0 + R`, whose
    /// outputs are `o`, with the kernel chosen once for all of them.
    fn group<const R: usize>(
        &self,
        data: &[u8],
        xq: &Activations,
        i0: usize,
        j0: usize,
        o: &mut [&mut [f32]],
    ) {
        let (isa, dtype) = (self.isa, self.dtype);
        match xq {
            Activations::B32(xs) => {
                let xs = rows::<_, R>(xs, self.k / QK, i0);
                match qmatmul_simd::dot32::<R>(isa, dtype) {
                    // SAFETY: `dot32` only returns kernels this CPU can run.
                    Some(f) => self.each_row(data, j0, o, |w| unsafe { f(w, xs) }),
                    None => self.each_row(data, j0, o, |w| xs.map(|x| dot32_scalar(dtype, w, x))),
                }
            }
            Activations::K(xs) => {
                let xs = rows::<_, R>(xs, self.k / QK_K, i0);
                match qmatmul_simd::dotk::<R>(isa, dtype) {
                    // SAFETY: `dotk` only returns kernels this CPU can run.
                    Some(f) => self.each_row(data, j0, o, |w| unsafe { f(w, xs) }),
                    None => self.each_row(data, j0, o, |w| xs.map(|x| dotk_scalar(dtype, w, x))),
                }
            }
            Activations::Pairs(xs) => {
                let xs = rows::<_, R>(xs, self.k / QK / 2, i0);
                let f = qmatmul_simd::dot32_pairs::<R>(isa, dtype)
                    .expect("pairs are only built where their kernel runs");
                // SAFETY: `dot32_pairs` only returns kernels this CPU can run.
                self.each_row(data, j0, o, |w| unsafe { f(w, xs) });
            }
        }
    }

    /// `o[r][jj] = dot(jj)[r]` for the weight rows `j0 + jj` of the tile.
    fn each_row<const R: usize>(
        &self,
        data: &[u8],
        j0: usize,
        o: &mut [&mut [f32]],
        dot: impl Fn(&[u8]) -> [f32; R],
    ) {
        let width = o.first().map_or(0, |row| row.len());
        let weights =
            data[j0 * self.row_bytes..(j0 + width) * self.row_bytes].chunks_exact(self.row_bytes);
        for (jj, w) in weights.enumerate() {
            for (row, v) in o.iter_mut().zip(dot(w)) {
                row[jj] = v;
            }
        }
    }
}

/// Runs `f(j0, pieces)` for every column tile of `out` (`m` rows of `n`),
/// in parallel: `pieces` are the tile's slices of each output row, so tasks
/// write disjoint memory directly.
pub(super) fn for_each_tile(
    out: &mut [f32],
    n: usize,
    tile: usize,
    f: impl Fn(usize, &mut [&mut [f32]]) + Sync,
) {
    let m = out.len() / n;
    let mut rows: Vec<_> = out
        .chunks_exact_mut(n)
        .map(|row| row.chunks_mut(tile))
        .collect();
    let mut pieces = Vec::with_capacity(m * n.div_ceil(tile));
    for _ in 0..n.div_ceil(tile) {
        pieces.extend(rows.iter_mut().filter_map(Iterator::next));
    }
    pieces
        .par_chunks_mut(m)
        .enumerate()
        .for_each(|(t, o)| f(t * tile, o));
}

/// Rows `i0..i0 + R` of a row-major matrix of blocks with `kb` blocks a row.
fn rows<B, const R: usize>(xs: &[B], kb: usize, i0: usize) -> [&[B]; R] {
    std::array::from_fn(|i| &xs[(i0 + i) * kb..(i0 + i + 1) * kb])
}

/// Weight rows per rayon task: about eight tasks per thread so both threads
/// of a 2-core box stay busy even for `n = 128`, capped at 64 rows so a tile
/// of the widest rows still fits in L2.
pub(super) fn tile_rows(n: usize) -> usize {
    let tasks = rayon::current_num_threads().max(1) * 8;
    n.div_ceil(tasks).clamp(1, 64)
}

fn is_k_quant(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K
    )
}

impl Q8x32 {
    pub(crate) const ZERO: Self = Self {
        qs: [0; QK],
        d: 0.0,
        s: 0.0,
        corr: 0,
    };
}

impl Q8xK {
    pub(crate) const ZERO: Self = Self {
        qs: [0; QK_K],
        d: 0.0,
        bsums: [0; QK_K / 16],
        pairs: [0; QK_K / 64],
    };

    /// Fills [`Q8xK::pairs`] from [`Q8xK::bsums`].
    pub(crate) fn pair_sums(&mut self) {
        for (p, s) in self.pairs.iter_mut().zip(self.bsums.chunks_exact(4)) {
            let [lo, hi] = [s[0] + s[1], s[2] + s[3]].map(|v| u32::from(v as u16));
            *p = (lo | hi << 16) as i32;
        }
    }
}

/// Reads the little-endian f16 at `b[o..o + 2]`.
pub(crate) fn f16_at(b: &[u8], o: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f32()
}

/// ggml's `get_scale_min_k4`: the eight 6-bit scales and mins of a Q4_K /
/// Q5_K super-block.
#[inline]
pub(crate) fn k4_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

/// Scalar dot product of one weight row of a 32-element block type with one
/// activation row: per block the weights are unpacked to signed integers,
/// dotted in i32 and scaled in f32, as in ggml's reference code.
fn dot32_scalar(dtype: GgmlDType, w: &[u8], x: &[Q8x32]) -> f32 {
    let bytes = dtype.type_size();
    let mut sumf = 0f32;
    let mut v = [0i32; QK];
    for (blk, y) in w.chunks_exact(bytes).zip(x) {
        let d = f16_at(blk, 0);
        let mut min = 0f32;
        match dtype {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
                let (qs, off) = if dtype == GgmlDType::Q4_0 {
                    (&blk[2..18], 8)
                } else {
                    min = f16_at(blk, 2) * y.s;
                    (&blk[4..20], 0)
                };
                for j in 0..QK / 2 {
                    v[j] = (qs[j] & 0xF) as i32 - off;
                    v[j + QK / 2] = (qs[j] >> 4) as i32 - off;
                }
            }
            GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
                let (qh, qs, off) = if dtype == GgmlDType::Q5_0 {
                    (&blk[2..6], &blk[6..22], 16)
                } else {
                    min = f16_at(blk, 2) * y.s;
                    (&blk[4..8], &blk[8..24], 0)
                };
                let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
                for j in 0..QK / 2 {
                    let h0 = ((qh >> j) & 1) << 4;
                    let h1 = ((qh >> (j + 16)) & 1) << 4;
                    v[j] = ((qs[j] & 0xF) as u32 | h0) as i32 - off;
                    v[j + QK / 2] = ((qs[j] >> 4) as u32 | h1) as i32 - off;
                }
            }
            _ => {
                for (vj, &q) in v.iter_mut().zip(&blk[2..2 + QK]) {
                    *vj = q as i8 as i32;
                }
            }
        }
        let sumi: i32 = v.iter().zip(&y.qs).map(|(&a, &b)| a * b as i32).sum();
        sumf += sumi as f32 * d * y.d + min;
    }
    sumf
}

/// A k-quant super-block unpacked to integers: `q` are the quants,
/// `scales[j]` / `mins[j]` apply to elements `16j..16j + 16`, and the block's
/// value is `d·Σ scales·(q·x) − dmin·Σ mins·bsums` (times the activation
/// scale).
pub(crate) struct KBlock {
    pub(crate) q: [i32; QK_K],
    pub(crate) scales: [i32; 16],
    pub(crate) mins: [i32; 16],
    pub(crate) d: f32,
    pub(crate) dmin: f32,
}

impl KBlock {
    pub(crate) const ZERO: Self = Self {
        q: [0; QK_K],
        scales: [0; 16],
        mins: [0; 16],
        d: 0.0,
        dmin: 0.0,
    };
}

pub(crate) fn unpack_k(dtype: GgmlDType, blk: &[u8], kb: &mut KBlock) {
    kb.mins = [0; 16];
    kb.dmin = 0.0;
    match dtype {
        GgmlDType::Q2K => {
            let (scales, qs) = (&blk[0..16], &blk[16..80]);
            kb.d = f16_at(blk, 80);
            kb.dmin = f16_at(blk, 82);
            for ((sc, mn), &s) in kb.scales.iter_mut().zip(&mut kb.mins).zip(scales) {
                *sc = (s & 0xF) as i32;
                *mn = (s >> 4) as i32;
            }
            for (e, q) in kb.q.iter_mut().enumerate() {
                let (half, step, l) = (e / 128, (e % 128) / 32, e % 32);
                *q = ((qs[32 * half + l] >> (2 * step)) & 3) as i32;
            }
        }
        GgmlDType::Q3K => {
            let (hmask, qs, s) = (&blk[0..32], &blk[32..96], &blk[96..108]);
            kb.d = f16_at(blk, 108);
            for j in 0..16 {
                // ggml packs sixteen 6-bit scales: low nibbles in s[0..8],
                // high two bits in s[8..12].
                let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
                let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
                kb.scales[j] = (low | (high << 4)) as i32 - 32;
            }
            for (e, q) in kb.q.iter_mut().enumerate() {
                let (half, step, l) = (e / 128, (e % 128) / 32, e % 32);
                let low = ((qs[32 * half + l] >> (2 * step)) & 3) as i32;
                let bit = hmask[l] & (1 << (4 * half + step)) != 0;
                *q = low - if bit { 0 } else { 4 };
            }
        }
        GgmlDType::Q4K | GgmlDType::Q5K => {
            kb.d = f16_at(blk, 0);
            kb.dmin = f16_at(blk, 2);
            let (sc, mn) = k4_scales(&blk[4..16]);
            for j in 0..16 {
                kb.scales[j] = sc[j / 2] as i32;
                kb.mins[j] = mn[j / 2] as i32;
            }
            let (qh, qs) = if dtype == GgmlDType::Q5K {
                (Some(&blk[16..48]), &blk[48..176])
            } else {
                (None, &blk[16..144])
            };
            for (e, q) in kb.q.iter_mut().enumerate() {
                let (chunk, hi, l) = (e / 64, (e % 64) / 32, e % 32);
                let byte = qs[32 * chunk + l];
                let nib = if hi == 1 { byte >> 4 } else { byte & 0xF } as i32;
                let high = qh.map_or(0, |qh| {
                    if qh[l] & (1 << (2 * chunk + hi)) != 0 {
                        16
                    } else {
                        0
                    }
                });
                *q = nib + high;
            }
        }
        _ => {
            let (ql, qh, sc) = (&blk[0..128], &blk[128..192], &blk[192..208]);
            kb.d = f16_at(blk, 208);
            for (s, &v) in kb.scales.iter_mut().zip(sc) {
                *s = v as i8 as i32;
            }
            for (e, q) in kb.q.iter_mut().enumerate() {
                let (half, part, l) = (e / 128, (e % 128) / 32, e % 32);
                let lq = ql[64 * half + 32 * (part % 2) + l];
                let low = if part >= 2 { lq >> 4 } else { lq & 0xF };
                let high = (qh[32 * half + l] >> (2 * part)) & 3;
                *q = (low | (high << 4)) as i32 - 32;
            }
        }
    }
}

/// Scalar dot product of one k-quant weight row with one activation row.
fn dotk_scalar(dtype: GgmlDType, w: &[u8], x: &[Q8xK]) -> f32 {
    let mut kb = KBlock::ZERO;
    let mut sumf = 0f32;
    for (blk, y) in w.chunks_exact(dtype.type_size()).zip(x) {
        unpack_k(dtype, blk, &mut kb);
        let mut isum = 0i32;
        let mut msum = 0i32;
        for j in 0..16 {
            let qs = &kb.q[16 * j..16 * j + 16];
            let xs = &y.qs[16 * j..16 * j + 16];
            let dot: i32 = qs.iter().zip(xs).map(|(&a, &b)| a * b as i32).sum();
            isum += kb.scales[j] * dot;
            msum += kb.mins[j] * y.bsums[j] as i32;
        }
        sumf += kb.d * y.d * isum as f32 - kb.dmin * y.d * msum as f32;
    }
    sumf
}

/// Slow, obviously correct reference: dequantizes `w` with candle and does
/// plain f32 dot products (no activation quantization, so it differs from
/// [`QMatrix::matmul`] by the activation rounding error).
pub fn matmul_reference(w: &QTensor, x: &[f32], m: usize) -> Result<Vec<f32>> {
    let (n, k) = w.shape().dims2()?;
    ensure!(x.len() == m * k, "x must be m×k = {m}×{k}");
    let wf: Vec<f32> = w
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()
        .context("dequantized weights")?;
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &wf[j * k..(j + 1) * k];
            out[i * n + j] = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
        }
    }
    Ok(out)
}

/// Builds a `(rows, cols)` f32 tensor; a small helper for tests and benches.
pub fn tensor_2d(data: &[f32], rows: usize, cols: usize) -> Result<Tensor> {
    Ok(Tensor::from_slice(data, (rows, cols), &Device::Cpu)?)
}

#[cfg(test)]
#[path = "qmatmul_tests.rs"]
mod tests;
