//! Dense 16-bit matrix multiplication `y[m×rows] = x[m×cols] · Wᵀ` for bf16
//! and f16 weights kept as the checkpoint stores them (often straight from
//! its memory map), with f32 activations and f32 accumulation.
//!
//! # Why its own kernels
//!
//! Upcasting a bf16 checkpoint to f32 doubles both its resident size and
//! the bytes every decode step streams. Here the weights are widened in
//! registers as they are read, so a single-row call (decode) is a pure
//! stream of the stored bytes and runs at the memory bandwidth.
//!
//! # Work split
//!
//! As in [`super::qmatmul`], the output columns (weight rows) are split into
//! tiles, one rayon task per tile computing it for every activation row, so
//! each weight byte comes from DRAM once per call. Inside a tile, blocks of
//! [`BLOCK`] weight rows are taken in turn, and each block is applied to up
//! to four activation rows per pass (two with AVX2) while its widened
//! vectors sit in registers: a 16-row batch costs about the memory traffic
//! of one row. On AVX2, batches larger than a pass widen each block once, a
//! panel of columns at a time, and run every row over it from L1
//! (`dense_batch`).
//!
//! # Arithmetic and batch invariance
//!
//! Every (activation row, weight row) pair has its own accumulator that
//! walks `k` in order, 16 lanes at a time with fused multiply-adds, ends
//! with a zero-padded partial vector and is reduced in one fixed order (see
//! `dense_simd`). Nothing about it depends on which rows are computed
//! together, so a row's result is bit-identical whatever the batch, and the
//! portable, AVX2 and AVX-512 kernels (one body over [`super::simd`]'s
//! vector types) agree bit for bit. With AVX512_BF16, bf16 weights use
//! `vdpbf16ps` on activations rounded to bf16 (relative error 2⁻⁸ per
//! activation); with AMX-BF16, `tdpbf16ps` tiles on weights repacked at
//! load (`dense_amx`), for every batch size, single rows included, so that
//! no row's result depends on its batch (AMX's internal summation order is
//! not documented to be that of `vdpbf16ps`, so mixing the two by batch
//! size could break batch invariance). Both are batch-invariant, but differ
//! from the widening kernels and, possibly, from each other.
//!
//! # Runtime dispatch
//!
//! The CPU is probed once ([`DenseIsa::detect`], capped by `R1SERVE_ISA`:
//! see [`super::isa`]); tests and benches pick a kernel explicitly with
//! [`DenseMatrix::new_for`].

use std::cell::Cell;

use anyhow::{ensure, Result};
use half::{bf16, f16};

use super::bytes::{HalfKind, WeightBytes};
#[cfg(target_arch = "x86_64")]
use super::dense_amx::TiledBf16;
#[cfg(target_arch = "x86_64")]
use super::dense_batch;
use super::dense_simd::{self, Activations, BLOCK};
use super::isa::{self, KernelIsa, Level};
use super::qmatmul::{for_each_tile, tile_rows};
#[cfg(target_arch = "x86_64")]
use super::qmatmul_tiled::GROUP;

/// Which instruction set a dense matmul uses. Each variant needs the CPU
/// features of the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DenseIsa {
    /// Portable Rust, any CPU.
    Scalar,
    /// AVX2 + FMA + F16C: weights widened 8 lanes at a time.
    Avx2,
    /// AVX-512F: weights widened 16 lanes at a time.
    Avx512,
    /// AVX-512 with AVX512_BF16: bf16 weights multiplied by `vdpbf16ps`
    /// against bf16-rounded activations (f16 weights use [`DenseIsa::Avx512`]).
    Avx512Bf16,
    /// AMX-BF16 tiles on weights repacked at load (`dense_amx`), bf16
    /// weights with a multiple of 16 rows only (the rest use
    /// [`DenseIsa::Avx512Bf16`]); Linux must grant the tile state.
    AmxBf16,
}

impl KernelIsa for DenseIsa {
    const ALL: &'static [DenseIsa] = &[
        DenseIsa::Scalar,
        DenseIsa::Avx2,
        DenseIsa::Avx512,
        DenseIsa::Avx512Bf16,
        DenseIsa::AmxBf16,
    ];

    /// The [`Level`] a CPU needs for `self`.
    fn level(self) -> Level {
        match self {
            DenseIsa::Scalar => Level::Scalar,
            DenseIsa::Avx2 => Level::Avx2,
            DenseIsa::Avx512 => Level::Avx512,
            DenseIsa::Avx512Bf16 => Level::Avx512Bf16,
            DenseIsa::AmxBf16 => Level::Amx,
        }
    }

    /// Whether this CPU can run the kernels of `self`.
    fn is_supported(self) -> bool {
        let cpu = isa::cpu();
        match self {
            DenseIsa::Scalar => true,
            DenseIsa::Avx2 => cpu.avx2,
            DenseIsa::Avx512 => cpu.avx512,
            DenseIsa::Avx512Bf16 => cpu.avx512bf16,
            DenseIsa::AmxBf16 => cpu.amx_bf16,
        }
    }

    /// A name for test and bench output.
    fn name(self) -> &'static str {
        match self {
            DenseIsa::Scalar => "scalar",
            DenseIsa::Avx2 => "AVX2+FMA+F16C",
            DenseIsa::Avx512 => "AVX-512F",
            DenseIsa::Avx512Bf16 => "AVX512_BF16",
            DenseIsa::AmxBf16 => "AMX-BF16",
        }
    }
}

/// What bf16 weights are multiplied against (`--dtype`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precision {
    /// Where the CPU multiplies bf16 natively (AVX512_BF16, AMX-BF16),
    /// against activations rounded to bf16, as llama.cpp and vLLM's CPU
    /// backend do; elsewhere against f32 activations.
    #[default]
    Auto,
    /// Always against f32 activations: results equal an f32 computation on
    /// the same weights up to f32 rounding, on every CPU (prefill up to 2×
    /// slower on CPUs with AVX512_BF16).
    Float32,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Precision::Auto),
            "float32" | "float" | "fp32" => Ok(Precision::Float32),
            _ => Err(format!("unknown dtype `{s}` (expected auto or float32)")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::Float32 => "float32",
        })
    }
}

thread_local! {
    /// The [`Precision`] of the matrices this thread builds: a model is
    /// loaded on one thread, so a load's setting cannot leak into another
    /// load running beside it.
    static PRECISION: Cell<Precision> = const { Cell::new(Precision::Auto) };
}

/// Runs `f` (a model load) with the dense matrices this thread builds
/// meanwhile under `precision`.
pub fn with_precision<T>(precision: Precision, f: impl FnOnce() -> T) -> T {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            PRECISION.set(self.0);
        }
    }
    let _restore = Restore(PRECISION.replace(precision));
    f()
}

impl DenseIsa {
    /// The best supported instruction set no better than `self`.
    pub fn capped(self) -> DenseIsa {
        Self::ALL
            .iter()
            .rev()
            .copied()
            .find(|isa| *isa <= self && isa.is_supported())
            .unwrap_or(DenseIsa::Scalar)
    }

    /// The kernel that really runs for weights of `kind`: `vdpbf16ps` and
    /// AMX-BF16 only multiply bf16.
    fn for_kind(self, kind: HalfKind) -> DenseIsa {
        match (self, kind) {
            (DenseIsa::Avx512Bf16 | DenseIsa::AmxBf16, HalfKind::F16) => DenseIsa::Avx512,
            _ => self,
        }
    }

    /// Whether the kernel rounds activations to bf16 (and so carries their
    /// 2⁻⁸ relative error) for weights of `kind`.
    pub fn rounds_activations(self, kind: HalfKind) -> bool {
        self.capped().for_kind(kind) >= DenseIsa::Avx512Bf16
    }
}

/// A `(rows, cols)` matrix of bf16 or f16 weights (`rows` = output features,
/// `cols` = input features), row-major as checkpoints store it, ready for
/// [`DenseMatrix::matmul`].
#[derive(Clone)]
pub struct DenseMatrix {
    kind: HalfKind,
    rows: usize,
    cols: usize,
    storage: Storage,
    isa: DenseIsa,
}

#[derive(Clone)]
enum Storage {
    /// The checkpoint's bytes, row-major.
    Rows(WeightBytes),
    /// Repacked for AMX; the checkpoint's bytes are released (the pages of
    /// a memory map read while repacking stay mapped until the loader drops
    /// the shard's map).
    #[cfg(target_arch = "x86_64")]
    Tiled(TiledBf16),
}

impl std::fmt::Debug for DenseMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenseMatrix")
            .field("kind", &self.kind)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("isa", &self.isa)
            .finish_non_exhaustive()
    }
}

impl DenseMatrix {
    /// Wraps `bytes`, `rows × cols` little-endian 16-bit values of `kind`
    /// (any alignment), for the best kernels of this CPU. Fails when the
    /// length does not match the shape or `R1SERVE_ISA` is bad.
    ///
    /// Under [`Precision::Float32`] (see [`with_precision`]) the kernels
    /// that round activations are passed over.
    pub fn new(kind: HalfKind, rows: usize, cols: usize, bytes: WeightBytes) -> Result<Self> {
        isa::limit()?;
        let mut isa = DenseIsa::detect();
        if PRECISION.get() == Precision::Float32 && isa.rounds_activations(kind) {
            isa = DenseIsa::Avx512;
        }
        Self::new_for(isa, kind, rows, cols, bytes)
    }

    /// [`DenseMatrix::new`] for the kernels of `isa`, or of the best
    /// instruction set below it that this CPU has; used to test and compare
    /// the kernels against each other.
    pub fn new_for(
        isa: DenseIsa,
        kind: HalfKind,
        rows: usize,
        cols: usize,
        bytes: WeightBytes,
    ) -> Result<Self> {
        let want = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(2))
            .ok_or_else(|| {
                anyhow::anyhow!("{} matrix {rows} x {cols} is too large", kind.name())
            })?;
        ensure!(
            bytes.len() == want,
            "{} matrix {rows} x {cols} needs {want} bytes, got {}",
            kind.name(),
            bytes.len()
        );
        let mut isa = isa.capped().for_kind(kind);
        #[cfg(target_arch = "x86_64")]
        if isa == DenseIsa::AmxBf16 && rows.is_multiple_of(GROUP) {
            let tiled = TiledBf16::new(rows, cols, bytes.as_slice());
            return Ok(Self {
                kind,
                rows,
                cols,
                storage: Storage::Tiled(tiled),
                isa,
            });
        }
        if isa == DenseIsa::AmxBf16 {
            isa = DenseIsa::Avx512Bf16;
        }
        Ok(Self {
            kind,
            rows,
            cols,
            storage: Storage::Rows(bytes),
            isa,
        })
    }

    /// The element type of the weights.
    pub fn kind(&self) -> HalfKind {
        self.kind
    }

    /// Number of output features (weight rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of input features (weight columns).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The instruction set [`DenseMatrix::matmul`] uses.
    pub fn isa(&self) -> DenseIsa {
        self.isa
    }

    /// Size of the weights in bytes, i.e. what one call reads from memory.
    pub fn size_in_bytes(&self) -> usize {
        match &self.storage {
            Storage::Rows(bytes) => bytes.len(),
            #[cfg(target_arch = "x86_64")]
            Storage::Tiled(t) => t.size_in_bytes(),
        }
    }

    /// `y[m×rows] = x[m×cols] · Wᵀ` with the kernels of
    /// [`DenseMatrix::isa`].
    ///
    /// # Panics
    ///
    /// If `x.len() != m * cols` or `y.len() != m * rows`.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let (n, k) = (self.rows, self.cols);
        assert_eq!(x.len(), m * k, "x must be m×cols = {m}×{k}");
        assert_eq!(y.len(), m * n, "y must be m×rows = {m}×{n}");
        if m == 0 || n == 0 {
            return;
        }
        let isa = self.isa;
        let w = match &self.storage {
            Storage::Rows(bytes) => bytes.as_slice(),
            #[cfg(target_arch = "x86_64")]
            Storage::Tiled(t) => {
                let kp = t.padded_cols();
                let mut xb = vec![bf16::ZERO; m * kp];
                for (dst, src) in xb.chunks_exact_mut(kp).zip(x.chunks_exact(k.max(1))) {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = bf16::from_f32(v);
                    }
                }
                // Whole pairs of groups: the kernel runs two at once.
                let tile = tile_rows(n).next_multiple_of(2 * GROUP);
                // SAFETY: tiled storage is only built where AMX-BF16 is
                // supported.
                for_each_tile(y, n, tile, |j0, o| unsafe { t.tile(&xb, j0, o) });
                return;
            }
        };
        let rounded: Vec<bf16>;
        let act = if isa == DenseIsa::Avx512Bf16 {
            rounded = x.iter().map(|&v| bf16::from_f32(v)).collect();
            Activations::Bf16(&rounded)
        } else {
            Activations::F32(x)
        };
        let tile = tile_rows(n).next_multiple_of(BLOCK);
        for_each_tile(y, n, tile, |j0, o| {
            self.tile(isa, w, act, j0, o);
        });
    }

    /// Computes weight rows `j0..j0 + width` for every activation row `i`
    /// into `o[i][j - j0]`.
    fn tile(&self, isa: DenseIsa, w: &[u8], act: Activations<'_>, j0: usize, o: &mut [&mut [f32]]) {
        let (m, k) = (o.len(), self.cols);
        let width = o.first().map_or(0, |row| row.len());
        #[cfg(target_arch = "x86_64")]
        if let Activations::F32(x) = act {
            if dense_batch::applies(isa, m) {
                return self.tile_batched(isa, w, x, j0, o);
            }
        }
        let step = dense_simd::rows_per_step(isa);
        for jb in (0..width).step_by(BLOCK) {
            let nb = (width - jb).min(BLOCK);
            let rows = self.block_rows(w, j0 + jb, nb);
            let mut i0 = 0;
            while i0 < m {
                let r = (m - i0).min(step);
                let res = dense_simd::block(isa, self.kind, &rows, act, i0, r, k);
                for (row, res) in o[i0..i0 + r].iter_mut().zip(&res) {
                    row[jb..jb + nb].copy_from_slice(&res[..nb]);
                }
                i0 += r;
            }
        }
    }

    /// The `nb ≤ BLOCK` weight rows from `j`; a partial block repeats its
    /// last row, and the callers drop the copies' results.
    fn block_rows<'w>(&self, w: &'w [u8], j: usize, nb: usize) -> [&'w [u8]; BLOCK] {
        let k = self.cols;
        std::array::from_fn(|t| {
            let j = j + t.min(nb - 1);
            &w[2 * k * j..2 * k * (j + 1)]
        })
    }

    /// [`DenseMatrix::tile`] for batches that take `dense_batch`'s passes.
    #[cfg(target_arch = "x86_64")]
    fn tile_batched(&self, isa: DenseIsa, w: &[u8], x: &[f32], j0: usize, o: &mut [&mut [f32]]) {
        let k = self.cols;
        let width = o.first().map_or(0, |row| row.len());
        let mut scratch = dense_batch::Scratch::new();
        let mut res = vec![[0f32; BLOCK]; o.len()];
        for jb in (0..width).step_by(BLOCK) {
            let nb = (width - jb).min(BLOCK);
            let rows = self.block_rows(w, j0 + jb, nb);
            dense_batch::block(isa, self.kind, &rows, x, k, &mut scratch, &mut res);
            for (row, res) in o.iter_mut().zip(&res) {
                row[jb..jb + nb].copy_from_slice(&res[..nb]);
            }
        }
    }
}

/// Widens one stored 16-bit value of `kind` to f32 (exactly).
pub fn half_to_f32(kind: HalfKind, bits: u16) -> f32 {
    match kind {
        HalfKind::Bf16 => bf16::from_bits(bits).to_f32(),
        HalfKind::F16 => f16::from_bits(bits).to_f32(),
    }
}

/// Slow, obviously correct reference: `y[m×rows] = x[m×cols] · Wᵀ` with
/// every weight widened exactly and the sums taken in f64.
pub fn dense_matmul_reference(
    kind: HalfKind,
    rows: usize,
    cols: usize,
    bytes: &[u8],
    x: &[f32],
    m: usize,
) -> Result<Vec<f64>> {
    ensure!(
        bytes.len() == rows * cols * 2,
        "{} matrix {rows} x {cols} needs {} bytes, got {}",
        kind.name(),
        rows * cols * 2,
        bytes.len()
    );
    ensure!(x.len() == m * cols, "x must be m×cols = {m}×{cols}");
    let w: Vec<f64> = bytes
        .chunks_exact(2)
        .map(|b| half_to_f32(kind, u16::from_le_bytes([b[0], b[1]])) as f64)
        .collect();
    let mut y = vec![0f64; m * rows];
    for (xr, yr) in x.chunks_exact(cols.max(1)).zip(y.chunks_exact_mut(rows)) {
        for (yj, wr) in yr.iter_mut().zip(w.chunks_exact(cols.max(1))) {
            *yj = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b).sum();
        }
    }
    Ok(y)
}

#[cfg(test)]
#[path = "dense_tests.rs"]
mod tests;
