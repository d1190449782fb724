//! Intel AMX (Advanced Matrix Extensions) plumbing: asking Linux for the
//! tile state, per-thread tile configuration, and the tile operations the
//! quantized matmul and the dense bf16 matmul need. The instructions are emitted with `asm!` because
//! Rust's AMX intrinsics are not stable.
//!
//! Tile registers used by [`dot_blocks`]: `tmm0`/`tmm3` accumulators (`rows`
//! activation rows × 16 i32), `tmm1`/`tmm4` activations (`rows` × K i8),
//! `tmm2`/`tmm5` weights (K/4 rows of 16 weight rows × 4 u8 or i8, the VNNI
//! layout), for blocks of K = 16 or 32 elements. [`dot_bf16`] uses the same
//! tiles configured for 64-byte rows: `tmm1` 32 bf16 activations a row,
//! `tmm2`/`tmm5` two weight groups' 16 pairs × 16 rows, `tmm0`/`tmm3` f32.
//! [`gemm_bf16_2x2`] (16 rows, 64-byte rows) adds `tmm6`/`tmm7` as two more
//! accumulators: a 2×2 block of output tiles, so each loaded tile serves two
//! products. [`dot_i8`] and [`dot_s8x3`] (64-byte rows, the k-quants with
//! their scales folded into the weights) keep `dot_bf16`'s tiles for int8,
//! the third operand of `dot_s8x3` accumulating in `tmm6`.

use std::arch::asm;
use std::arch::x86_64::__cpuid_count;
use std::cell::Cell;

/// Whether this CPU has AMX-TILE and AMX-INT8 and the kernel granted this
/// process the tile state (Linux wants `ARCH_REQ_XCOMP_PERM` first; without
/// it the first tile instruction faults).
pub(super) fn available() -> bool {
    let edx = __cpuid_count(7, 0).edx;
    let (tile, int8) = (edx & (1 << 24) != 0, edx & (1 << 25) != 0);
    tile && int8 && request_tile_permission()
}

/// Whether [`available`] holds and the CPU also has AMX-BF16.
pub(super) fn bf16_available() -> bool {
    __cpuid_count(7, 0).edx & (1 << 22) != 0 && available()
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only changes which xsave
    // features this process may use; the syscall clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// A growable, zero-initialised buffer of 64-byte-aligned lines for tiles.
/// A `tileloadd` whose rows are not 64-byte aligned runs several times
/// slower (6.6 against 44 TSC cycles a 1 KiB tile from L1, measured on a
/// Sapphire Rapids VM), so every buffer tiles are loaded from lives in one.
#[derive(Default)]
pub(super) struct TileBuf(Vec<Line>);

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Element types whose every bit pattern, zero included, is a value.
pub(super) trait Plain: Copy {}
impl Plain for u16 {}
impl Plain for u32 {}
impl Plain for f32 {}

impl TileBuf {
    /// The first `n` elements of `T`, growing the buffer if it is shorter.
    pub(super) fn get<T: Plain>(&mut self, n: usize) -> &mut [T] {
        let lines = (n * std::mem::size_of::<T>()).div_ceil(64);
        if self.0.len() < lines {
            self.0.resize(lines, Line([0; 64]));
        }
        // SAFETY: the lines are initialised, aligned for any `Plain` type
        // (alignment ≤ 64), and cover `n` elements; `T: Plain` makes every
        // byte pattern a valid `T`.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), n) }
    }
}

/// The 64-byte `ldtilecfg` operand (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

thread_local! {
    /// The (activation rows, block bytes) the current thread's tiles are
    /// configured for ((0, 0): not configured). Tile configuration is
    /// per-thread CPU state.
    static CONFIGURED: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Configures this thread's tiles for `rows` (1..=16) activation rows and
/// blocks of `k` (16 or 32) int8 elements, or 64 bytes of bf16 pairs,
/// unless they already are.
///
/// # Safety
///
/// [`available`] must have returned true in this process.
pub(super) unsafe fn configure(rows: usize, k: usize) {
    debug_assert!((1..=16).contains(&rows) && matches!(k, 16 | 32 | 64));
    if CONFIGURED.get() == (rows, k) {
        return;
    }
    let (r, kb, kr) = (rows as u8, k as u16, (k / 4) as u8);
    let mut cfg = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    for (t, colsb, trows) in [
        (0, 64, r),
        (1, kb, r),
        (2, 64, kr),
        (3, 64, r),
        (4, kb, r),
        (5, 64, kr),
        (6, 64, r),
        (7, 64, r),
    ] {
        cfg.colsb[t] = colsb;
        cfg.rows[t] = trows;
    }
    // SAFETY: the config is valid for palette 1 (≤ 16 rows, ≤ 64 bytes a
    // row) and the caller guarantees the OS enabled the tile state.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
    CONFIGURED.set((rows, k));
}

/// Integer dot products of two blocks of `K` (the configured 16 or 32)
/// elements: for `blk` in 0..2, `c[blk][j][i] = Σ_k a[blk][j][k] ·
/// w[blk][k/4][i][k%4]` over k in 0..K, with `a` signed activation bytes
/// (row `j` at `a[blk] + j·a_stride`) and `w` weight bytes (K/4 rows of 64
/// bytes), unsigned or, with `SIGNED_W`, signed.
///
/// # Safety
///
/// [`configure`] must have been called on this thread with the row count
/// `c` is read with; the pointers must cover that many rows.
pub(super) unsafe fn dot_blocks<const SIGNED_W: bool>(
    a: [*const i8; 2],
    a_stride: usize,
    w: [*const u8; 2],
    c: &mut [[[i32; 16]; 16]; 2],
) {
    let [c0, c1] = c;
    macro_rules! blocks {
        ($op:literal) => {
            // SAFETY: per the contract, each tile load reads the configured
            // rows from memory the caller owns, and each store writes at
            // most 16 rows of 64 bytes into `c`.
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm3",
                    "tileloadd tmm1, [{a0} + {sa}*1]",
                    "tileloadd tmm2, [{w0} + {s64}*1]",
                    "tileloadd tmm4, [{a1} + {sa}*1]",
                    "tileloadd tmm5, [{w1} + {s64}*1]",
                    concat!($op, " tmm0, tmm1, tmm2"),
                    concat!($op, " tmm3, tmm4, tmm5"),
                    "tilestored [{c0} + {s64}*1], tmm0",
                    "tilestored [{c1} + {s64}*1], tmm3",
                    a0 = in(reg) a[0],
                    a1 = in(reg) a[1],
                    sa = in(reg) a_stride,
                    w0 = in(reg) w[0],
                    w1 = in(reg) w[1],
                    s64 = in(reg) 64usize,
                    c0 = in(reg) c0.as_mut_ptr(),
                    c1 = in(reg) c1.as_mut_ptr(),
                    options(nostack),
                )
            }
        };
    }
    if SIGNED_W {
        blocks!("tdpbssd")
    } else {
        blocks!("tdpbsud")
    }
}

/// bf16 dot products of `rows` (the configured count) activation rows with
/// two groups of 16 weight rows over `blocks` blocks of 32 elements, into
/// `c[group][row][weight row]`: per block, `tileloadd` the activations
/// (`a + 64·block`, rows `a_stride` bytes apart) and each group's 1 KiB
/// (`w[group] + 1024·block`), then `tdpbf16ps` into that group's
/// accumulator tile.
///
/// # Safety
///
/// [`configure`] must have been called on this thread with `k = 64` and
/// the row count `c` is read with; the pointers must cover those rows and
/// blocks; [`bf16_available`] must hold.
pub(super) unsafe fn dot_bf16(
    a: *const u8,
    a_stride: usize,
    w: [*const u8; 2],
    blocks: usize,
    c: &mut [[[f32; 16]; 16]; 2],
) {
    let c = c.each_mut().map(|c| c.as_mut_ptr().cast());
    // SAFETY: forwarded from the caller.
    unsafe { dot_pair(Product::Bf16, a, a_stride, w, blocks, c) }
}

/// Integer dot products of `rows` (the configured count) activation rows
/// with two 16-row weight operands over `steps` steps of 64 elements, into
/// `c[operand][row][weight row]`: per step, `tileloadd` the signed
/// activation bytes (`a + 64·step`, rows `a_stride` bytes apart) and each
/// operand's 1 KiB of unsigned bytes in the VNNI layout (`w[operand] +
/// 1024·step`), then `tdpbsud` into that operand's accumulator tile. The
/// sums stay in the tiles for all steps: one store per operand.
///
/// # Safety
///
/// [`configure`] must have been called on this thread with `k = 64` and
/// the row count `c` is read with; the pointers must cover those rows and
/// steps; [`available`] must hold.
pub(super) unsafe fn dot_i8(
    a: *const i8,
    a_stride: usize,
    w: [*const u8; 2],
    steps: usize,
    c: &mut [[[i32; 16]; 16]; 2],
) {
    let c = c.each_mut().map(|c| c.as_mut_ptr().cast());
    // SAFETY: forwarded from the caller.
    unsafe { dot_pair(Product::I8, a.cast(), a_stride, w, steps, c) }
}

/// The tile product [`dot_pair`] runs.
#[derive(Clone, Copy)]
enum Product {
    /// `tdpbf16ps`: bf16 pairs, f32 sums.
    Bf16,
    /// `tdpbsud`: signed activation bytes times unsigned weight bytes, i32
    /// sums.
    I8,
}

/// The body of [`dot_bf16`] and [`dot_i8`] (same tiles and steps; only the
/// product differs): accumulators `tmm0`/`tmm3`, activations `tmm1`,
/// weights `tmm2`/`tmm5`, each sum tile stored once to `c` (16 rows of 64
/// bytes).
///
/// # Safety
///
/// As for the public functions, with `product` matching the data.
unsafe fn dot_pair(
    product: Product,
    a: *const u8,
    a_stride: usize,
    w: [*const u8; 2],
    steps: usize,
    c: [*mut u8; 2],
) {
    // SAFETY: per the contract, each tile load reads configured rows of
    // memory the caller owns, and each store writes at most 16 rows of 64
    // bytes into `c`. Tile registers persist between the asm blocks: no
    // compiled code uses them.
    unsafe {
        asm!("tilezero tmm0", "tilezero tmm3", options(nostack, nomem));
        // One step with the tile product `$op` (asm templates take only
        // literals, so the product is spliced in by a macro).
        macro_rules! step {
            ($op:literal, $a:expr, $w0:expr, $w1:expr) => {
                asm!(
                    "tileloadd tmm1, [{a} + {sa}*1]",
                    "tileloadd tmm2, [{w0} + {s64}*1]",
                    "tileloadd tmm5, [{w1} + {s64}*1]",
                    concat!($op, " tmm0, tmm1, tmm2"),
                    concat!($op, " tmm3, tmm1, tmm5"),
                    a = in(reg) $a,
                    sa = in(reg) a_stride,
                    w0 = in(reg) $w0,
                    w1 = in(reg) $w1,
                    s64 = in(reg) 64usize,
                    options(nostack, readonly),
                )
            };
        }
        for s in 0..steps {
            let (a, w0, w1) = (a.add(64 * s), w[0].add(1024 * s), w[1].add(1024 * s));
            match product {
                Product::Bf16 => step!("tdpbf16ps", a, w0, w1),
                Product::I8 => step!("tdpbsud", a, w0, w1),
            }
        }
        asm!(
            "tilestored [{c0} + {s64}*1], tmm0",
            "tilestored [{c1} + {s64}*1], tmm3",
            c0 = in(reg) c[0],
            c1 = in(reg) c[1],
            s64 = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// [`dot_i8`] for signed weight bytes (`tdpbssd`) and three weight
/// operands: `c[operand][row][weight row]` over `steps` steps of 64
/// elements. The third operand reuses the first's tile register once its
/// product is issued.
///
/// # Safety
///
/// As for [`dot_i8`].
pub(super) unsafe fn dot_s8x3(
    a: *const i8,
    a_stride: usize,
    w: [*const i8; 3],
    steps: usize,
    c: &mut [[[i32; 16]; 16]; 3],
) {
    let [c0, c1, c2] = c;
    // SAFETY: as in `dot_i8`.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm3",
            "tilezero tmm6",
            options(nostack, nomem)
        );
        for s in 0..steps {
            asm!(
                "tileloadd tmm1, [{a} + {sa}*1]",
                "tileloadd tmm2, [{w0} + {s64}*1]",
                "tileloadd tmm5, [{w1} + {s64}*1]",
                "tdpbssd tmm0, tmm1, tmm2",
                "tdpbssd tmm3, tmm1, tmm5",
                "tileloadd tmm2, [{w2} + {s64}*1]",
                "tdpbssd tmm6, tmm1, tmm2",
                a = in(reg) a.add(64 * s),
                sa = in(reg) a_stride,
                w0 = in(reg) w[0].add(1024 * s),
                w1 = in(reg) w[1].add(1024 * s),
                w2 = in(reg) w[2].add(1024 * s),
                s64 = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{c0} + {s64}*1], tmm0",
            "tilestored [{c1} + {s64}*1], tmm3",
            "tilestored [{c2} + {s64}*1], tmm6",
            c0 = in(reg) c0.as_mut_ptr(),
            c1 = in(reg) c1.as_mut_ptr(),
            c2 = in(reg) c2.as_mut_ptr(),
            s64 = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// A 2×2 block of tiles of a bf16 matrix product with f32 accumulation:
/// for `i`, `j` in 0..2, `c[i][j] (+)= Σ_s A_i(s) · B_j(s)` over `steps`
/// steps, where `A_i(s)` is the tile of 16 rows × 32 bf16 at
/// `a[i] + s·a_step` (rows `a_stride` bytes apart) and `B_j(s)` the tile of
/// 16 pairs-rows × 16 columns (the VNNI layout: row `k` holds elements `2k`
/// and `2k + 1` of each column side by side) at `b[j] + s·b_step`, rows
/// `b_stride` apart. Each `c[i][j]` is a 16 × 16 f32 tile with rows
/// `c_stride` bytes apart, added to when `accumulate`, else overwritten.
///
/// # Safety
///
/// [`configure`] must have been called on this thread with 16 rows and
/// `k = 64`; [`bf16_available`] must hold; the pointers must cover every
/// tile they name.
pub(super) unsafe fn gemm_bf16_2x2(
    (a, a_stride, a_step): ([*const u8; 2], usize, usize),
    (b, b_stride, b_step): ([*const u8; 2], usize, usize),
    steps: usize,
    (c, c_stride, accumulate): ([[*mut f32; 2]; 2], usize, bool),
) {
    // SAFETY: per the contract, each tile load reads 16 rows of 64 bytes
    // the caller owns and each store writes 16 such rows. Tile registers
    // persist between the asm blocks: no compiled code uses them.
    unsafe {
        if accumulate {
            asm!(
                "tileloadd tmm0, [{c00} + {sc}*1]",
                "tileloadd tmm3, [{c01} + {sc}*1]",
                "tileloadd tmm6, [{c10} + {sc}*1]",
                "tileloadd tmm7, [{c11} + {sc}*1]",
                c00 = in(reg) c[0][0],
                c01 = in(reg) c[0][1],
                c10 = in(reg) c[1][0],
                c11 = in(reg) c[1][1],
                sc = in(reg) c_stride,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm3",
                "tilezero tmm6",
                "tilezero tmm7",
                options(nostack, nomem)
            );
        }
        for s in 0..steps {
            asm!(
                "tileloadd tmm1, [{a0} + {sa}*1]",
                "tileloadd tmm2, [{b0} + {sb}*1]",
                "tdpbf16ps tmm0, tmm1, tmm2",
                "tileloadd tmm5, [{b1} + {sb}*1]",
                "tdpbf16ps tmm3, tmm1, tmm5",
                "tileloadd tmm4, [{a1} + {sa}*1]",
                "tdpbf16ps tmm6, tmm4, tmm2",
                "tdpbf16ps tmm7, tmm4, tmm5",
                a0 = in(reg) a[0].add(s * a_step),
                a1 = in(reg) a[1].add(s * a_step),
                sa = in(reg) a_stride,
                b0 = in(reg) b[0].add(s * b_step),
                b1 = in(reg) b[1].add(s * b_step),
                sb = in(reg) b_stride,
                options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{c00} + {sc}*1], tmm0",
            "tilestored [{c01} + {sc}*1], tmm3",
            "tilestored [{c10} + {sc}*1], tmm6",
            "tilestored [{c11} + {sc}*1], tmm7",
            c00 = in(reg) c[0][0],
            c01 = in(reg) c[0][1],
            c10 = in(reg) c[1][0],
            c11 = in(reg) c[1][1],
            sc = in(reg) c_stride,
            options(nostack),
        );
    }
}
