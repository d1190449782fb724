//! AMX-BF16 tiles for the dense bf16 matmul (Sapphire Rapids and later),
//! with the weights repacked once at load.
//!
//! # Layout
//!
//! Weight rows go in groups of 16 and `k` is padded with zeros to a
//! multiple of 32. For each group and each block of 32 columns, 1 KiB holds
//! the right operand of `tdpbf16ps`: 16 rows of 64 bytes, row `r` holding
//! elements `2r` and `2r + 1` of the block for each of the 16 weight rows
//! (the "VNNI" pair layout). The repacked matrix replaces the checkpoint's
//! bytes; it is as large as they are, plus the padding of `k`.
//!
//! # Arithmetic and batch invariance
//!
//! Activations are rounded to bf16, as for `vdpbf16ps`. A call of any
//! batch size runs the same instructions for a given activation row: two
//! accumulator tiles (two weight groups) walk the blocks in order, and a row
//! of a tile product depends only on that row of the activations, so a
//! row's result does not depend on the rows that share its tile. A single
//! row is a one-row tile; `tdpbf16ps` then still consumes 2 KiB of weights
//! per two instructions, well above what DRAM delivers to a core.

use half::bf16;

use super::amx;
use super::qmatmul_tiled::{line_bytes, line_bytes_mut, Line, GROUP};

/// Columns per block (one 64-byte tile row of bf16).
pub(super) const BLOCK_COLS: usize = 32;
/// Bytes of one group's block.
const BLOCK_BYTES: usize = GROUP * 64;

/// A `(rows, cols)` bf16 matrix in the layout of the module docs.
#[derive(Debug, Clone)]
pub(super) struct TiledBf16 {
    /// Blocks per row (`cols` padded to a multiple of [`BLOCK_COLS`]).
    nb: usize,
    data: Vec<Line>,
}

impl TiledBf16 {
    /// Repacks `rows × cols` little-endian bf16 values (`src`, any
    /// alignment). `rows` must be a multiple of 16.
    pub(super) fn new(rows: usize, cols: usize, src: &[u8]) -> Self {
        use rayon::prelude::*;
        assert!(rows.is_multiple_of(GROUP) && src.len() == 2 * rows * cols);
        let nb = cols.div_ceil(BLOCK_COLS);
        let mut data = vec![Line([0; 64]); rows / GROUP * nb * GROUP];
        // Groups are independent, and a 7B checkpoint has gigabytes of them.
        line_bytes_mut(&mut data)
            .par_chunks_exact_mut(nb * BLOCK_BYTES)
            .enumerate()
            .for_each(|(g, group)| {
                for j in 0..GROUP {
                    let row = &src[2 * cols * (GROUP * g + j)..][..2 * cols];
                    for (col, v) in row.chunks_exact(2).enumerate() {
                        let (b, e) = (col / BLOCK_COLS, col % BLOCK_COLS);
                        let at = BLOCK_BYTES * b + 64 * (e / 2) + 4 * j + 2 * (e % 2);
                        group[at..at + 2].copy_from_slice(v);
                    }
                }
            });
        Self { nb, data }
    }

    /// Bytes of the repacked matrix.
    pub(super) fn size_in_bytes(&self) -> usize {
        self.data.len() * 64
    }

    /// Activation row length the kernel reads: `cols` padded with zeros.
    pub(super) fn padded_cols(&self) -> usize {
        self.nb * BLOCK_COLS
    }

    /// Computes weight rows `j0..j0 + width` (whole groups) of every
    /// activation row `i` into `o[i][..width]`; `x` holds the rows rounded
    /// to bf16, [`TiledBf16::padded_cols`] apart.
    ///
    /// # Safety
    ///
    /// `DenseIsa::AmxBf16` must be supported (AMX-BF16, and AMX granted).
    pub(super) unsafe fn tile(&self, x: &[bf16], j0: usize, o: &mut [&mut [f32]]) {
        let m = o.len();
        let kp = self.padded_cols();
        assert!(x.len() >= m * kp);
        let width = o.first().map_or(0, |row| row.len());
        assert!(j0.is_multiple_of(GROUP) && width.is_multiple_of(GROUP));
        let (g0, g1) = (j0 / GROUP, (j0 + width) / GROUP);
        assert!(self.data.len() * 64 >= g1 * self.nb * BLOCK_BYTES);
        let group = |g: usize| line_bytes(&self.data)[g * self.nb * BLOCK_BYTES..].as_ptr();
        let mut c = [[[0f32; 16]; 16]; 2];
        for g in (g0..g1).step_by(2) {
            // An odd last group is computed twice and stored once.
            let pair = [g, (g + 1).min(g1 - 1)];
            let mut i0 = 0;
            while i0 < m {
                let r = (m - i0).min(16);
                // SAFETY: AMX is granted (caller); the tiles are configured
                // for `r` rows of 64 bytes, `x` holds `r` rows of `kp` from
                // `i0` and each group `nb` blocks of 1 KiB (checked above).
                unsafe {
                    amx::configure(r, 64);
                    amx::dot_bf16(
                        x[i0 * kp..].as_ptr().cast(),
                        2 * kp,
                        pair.map(group),
                        self.nb,
                        &mut c,
                    );
                }
                for (t, &gg) in pair.iter().enumerate() {
                    if t == 1 && gg == pair[0] {
                        break;
                    }
                    let at = GROUP * (gg - g0);
                    for (row, c) in o[i0..i0 + r].iter_mut().zip(&c[t]) {
                        row[at..at + GROUP].copy_from_slice(c);
                    }
                }
                i0 += r;
            }
        }
    }
}
