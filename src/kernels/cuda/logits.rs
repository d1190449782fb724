//! Logits rows reduced on the GPU (`logits.cu`) before they leave it: a
//! greedy row's argmax and a random draw's candidates come back instead of
//! the vocabulary. Rows asked whole, and rows with more candidates than
//! [`CANDIDATES`], come back whole through the page-locked buffer.

use super::{Cuda, CudaAct};
use crate::kernels::backend::Backend;
use crate::kernels::logits::{self, LogitsRow, RowNeed};
use crate::types::TokenId;
use anyhow::{ensure, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Candidates a row brings back at most: 32 KB of ids and values against
/// 608 KB for a whole row of a 152k vocabulary. A flatter distribution (a
/// high temperature over an uncertain step) comes back whole.
const CANDIDATES: usize = 4096;

/// [`Backend::logits_out`] on the GPU.
pub(super) fn logits_out(cuda: &Cuda, x: CudaAct, needs: &[RowNeed]) -> Result<Vec<LogitsRow>> {
    let rows = x.rows();
    ensure!(
        rows == needs.len(),
        "{rows} logits rows for {} needs",
        needs.len()
    );
    if needs.iter().all(|n| *n == RowNeed::Full) {
        return Ok(logits::reduce_rows(cuda.logits_to_host(x)?, needs));
    }
    let gpu = &cuda.gpu;
    let modes: Vec<i32> = needs
        .iter()
        .map(|n| match n {
            RowNeed::Full => 0,
            RowNeed::Argmax => 1,
            RowNeed::Within { .. } => 2,
        })
        .collect();
    let nats: Vec<f32> = needs
        .iter()
        .map(|n| match n {
            RowNeed::Within { nats, .. } => *nats,
            _ => 0.0,
        })
        .collect();
    let (d_modes, d_nats) = (gpu.upload(&modes)?, gpu.upload(&nats)?);
    // SAFETY: the kernel writes every row's count, and every slot below
    // the count it reports, before the host reads them.
    let (mut count, mut ids) = unsafe {
        (
            gpu.stream.alloc::<u32>(rows)?,
            gpu.stream.alloc::<u32>(rows * CANDIDATES)?,
        )
    };
    let mut vals = gpu.alloc_f32(rows * CANDIDATES)?;
    let (width, cap) = (x.width as i32, CANDIDATES as i32);
    let mut l = gpu.launch("reduce_logits")?;
    l.arg(&x.data)
        .arg(&width)
        .arg(&d_modes)
        .arg(&d_nats)
        .arg(&cap)
        .arg(&mut count)
        .arg(&mut ids)
        .arg(&mut vals);
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (512, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match `reduce_logits` in logits.cu; every
    // buffer holds `rows` rows (or `rows × cap` slots).
    unsafe { l.launch(cfg)? };
    let count = gpu.stream.clone_dtoh(&count)?;
    gpu.sync()?;
    let fits = |r: usize| count[r] as usize <= CANDIDATES;
    // Slot s of row r is at s × rows + r: the slots every row uses are one
    // prefix of the buffers (an argmax is slot 0).
    let slots = needs
        .iter()
        .zip(&count)
        .filter(|(n, _)| matches!(n, RowNeed::Within { .. }))
        .map(|(_, &c)| (c as usize).min(CANDIDATES))
        .max()
        .unwrap_or(0);
    let ids = gpu.stream.clone_dtoh(&ids.slice(..slots.max(1) * rows))?;
    let vals = if slots > 0 {
        gpu.stream.clone_dtoh(&vals.slice(..slots * rows))?
    } else {
        Vec::new()
    };
    gpu.sync()?;
    let whole: Vec<usize> = (0..rows)
        .filter(|&r| match needs[r] {
            RowNeed::Full => true,
            RowNeed::Argmax => false,
            RowNeed::Within { .. } => !fits(r),
        })
        .collect();
    let flat = if whole.is_empty() {
        Vec::new()
    } else {
        cuda.logits_to_host(cuda.gather_rows(&x, &whole)?)?
    };
    let mut whole_rows = flat.chunks_exact(x.width.max(1));
    let mut out = Vec::with_capacity(rows);
    for (r, need) in needs.iter().enumerate() {
        out.push(match need {
            RowNeed::Argmax => LogitsRow::Argmax(ids[r] as TokenId),
            RowNeed::Within { limit, .. } if fits(r) => {
                let mut c: Vec<(TokenId, f32)> = (0..count[r] as usize)
                    .map(|s| (ids[s * rows + r] as TokenId, vals[s * rows + r]))
                    .collect();
                logits::sort_candidates(&mut c, *limit);
                LogitsRow::Within(c)
            }
            _ => LogitsRow::Full(
                whole_rows
                    .next()
                    .expect("one gathered row per whole row")
                    .to_vec(),
            ),
        });
    }
    Ok(out)
}
