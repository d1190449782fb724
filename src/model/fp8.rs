//! Block-scaled FP8 weights ([`Fp8Blocks`]) dequantized at load to bf16,
//! the element type r1serve's dense kernels stream: each weight is the f32
//! product of its E4M3 value and its block's scale, rounded to bf16 (nearest,
//! ties to even) as DeepSeek's own `fp8_cast_bf16.py` converts R1. bf16 and
//! not f32 because at R1's size the weights are 1.3 TB in bf16 and would be
//! 2.7 TB in f32; the rounding (8 significant bits on a 4-bit value times a
//! scale) is what every bf16 deployment of R1 computes with.

use super::config::Fp8Blocks;
use crate::kv_cache::storage::{Fp8E4m3, KvElem};
use anyhow::{bail, Result};
use half::bf16;

/// Dequantizes a `rows × cols` E4M3 matrix with its `scales`
/// (`ceil(rows / blocks.rows) × ceil(cols / blocks.cols)` f32 values) into
/// little-endian bf16 bytes. `what` names the tensors in errors.
pub fn dequantize(
    values: &[u8],
    rows: usize,
    cols: usize,
    scales: &[f32],
    blocks: Fp8Blocks,
    what: &str,
) -> Result<Vec<u8>> {
    let (br, bc) = (rows.div_ceil(blocks.rows), cols.div_ceil(blocks.cols));
    if values.len() != rows * cols {
        bail!(
            "{what}: {} bytes for a {rows}×{cols} E4M3 matrix",
            values.len()
        );
    }
    if scales.len() != br * bc {
        bail!(
            "{what}: {} scales for {br}×{bc} blocks of {}×{}",
            scales.len(),
            blocks.rows,
            blocks.cols
        );
    }
    let table: Vec<f32> = (0..=255u8).map(|b| Fp8E4m3(b).to_f32()).collect();
    let mut out = Vec::with_capacity(rows * cols * 2);
    for (r, row) in values.chunks_exact(cols).enumerate() {
        let block_row = &scales[r / blocks.rows * bc..][..bc];
        for (c, &v) in row.iter().enumerate() {
            let w = table[v as usize] * block_row[c / blocks.cols];
            out.extend_from_slice(&bf16::from_f32(w).to_le_bytes());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_block_takes_its_own_scale_and_partial_blocks_count() {
        let blocks = Fp8Blocks { rows: 2, cols: 2 };
        // 3×3: blocks of 2×2, 2×1, 1×2, 1×1. E4M3 0x38 is 1.0, 0x40 is 2.0.
        let values = [0x38, 0x40, 0x38, 0x38, 0x38, 0x38, 0xB8, 0x38, 0x38];
        let scales = [0.5, 4.0, 8.0, 0.25];
        let out = dequantize(&values, 3, 3, &scales, blocks, "t").unwrap();
        let got: Vec<f32> = out
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(got, [0.5, 1.0, 4.0, 0.5, 0.5, 4.0, -8.0, 8.0, 0.25]);
    }

    #[test]
    fn wrong_scale_count_is_an_error() {
        let blocks = Fp8Blocks { rows: 2, cols: 2 };
        let e = dequantize(&[0x38; 9], 3, 3, &[1.0; 2], blocks, "w").unwrap_err();
        assert!(e.to_string().contains("2 scales for 2×2 blocks"), "{e}");
    }
}
