//! Dense bf16/f16 matmul on Qwen2.5-0.5B and 1.5B shapes: weight bytes per
//! second at m = 1 (decode) and m = 16 (a batch of decodes), next to a
//! parallel memcpy of the same bytes measured in the same run, and the
//! arithmetic rate at m = 64 (a prefill chunk).
//!
//! Every call reads a different copy of the matrix, and the copies together
//! exceed the last-level cache, so both columns measure DRAM, not cache.
//! The memcpy reads the copies in the same rotation into one destination of
//! the matrix's size (which stays cached), split over the rayon threads as
//! the matmul is: it is the bandwidth a pure stream of the weights can get.
//!
//! `cargo bench --bench dense`; `DENSE_QUICK=1` shortens the timing and
//! keeps bf16 only.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use half::{bf16, f16};
use r1serve::kernels::bytes::{HalfKind, WeightBytes};
use r1serve::kernels::isa::KernelIsa;
use r1serve::kernels::{DenseIsa, DenseMatrix};
use rayon::prelude::*;

/// Bytes of matrix copies each measurement rotates through.
const ROTATION_BYTES: usize = 256 << 20;

/// Median seconds per call of `f(call)`, run until `budget` is spent
/// (≥ 5 runs).
fn time(budget: Duration, mut f: impl FnMut(usize)) -> f64 {
    f(0);
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < 5 || (start.elapsed() < budget && samples.len() < 2000) {
        let t = Instant::now();
        f(samples.len() + 1);
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(len: usize, mut seed: u64) -> Vec<f32> {
    (0..len)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::var_os("DENSE_QUICK").is_some();
    let budget = Duration::from_millis(if quick { 150 } else { 500 });
    let kinds: &[HalfKind] = if quick {
        &[HalfKind::Bf16]
    } else {
        &[HalfKind::Bf16, HalfKind::F16]
    };
    // (rows = out features, cols = in features).
    let shapes = [
        (896, 896),
        (128, 896),
        (4864, 896),
        (896, 4864),
        (1536, 1536),
        (8960, 1536),
        (1536, 8960),
    ];
    let threads = rayon::current_num_threads();
    println!(
        "isa: {}, rayon threads: {threads}",
        DenseIsa::detect().name()
    );
    println!(
        "{:<4} {:>5} {:>5} | {:>9} {:>7} | {:>9} {:>7} {:>5} | {:>9} {:>7} | {:>6} {:>5}",
        "kind",
        "rows",
        "cols",
        "m=1",
        "GB/s",
        "m=16",
        "GB/s",
        "x m=1",
        "m=64",
        "GFLOP/s",
        "memcpy",
        "m=1 %"
    );
    for &kind in kinds {
        for (rows, cols) in shapes {
            let one = values(rows * cols, (rows + cols) as u64);
            let bytes: Vec<u8> = one
                .iter()
                .flat_map(|&v| match kind {
                    HalfKind::Bf16 => bf16::from_f32(v).to_le_bytes(),
                    HalfKind::F16 => f16::from_f32(v).to_le_bytes(),
                })
                .collect();
            let size = bytes.len();
            let copies = ROTATION_BYTES.div_ceil(size).max(2);
            let mats = (0..copies)
                .map(|_| {
                    DenseMatrix::new(
                        kind,
                        rows,
                        cols,
                        WeightBytes::Owned(Arc::new(bytes.clone())),
                    )
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let raw: Vec<Vec<u8>> = (0..copies).map(|_| bytes.clone()).collect();
            let mut t = [0f64; 3];
            for (slot, m) in [1usize, 16, 64].into_iter().enumerate() {
                let x = values(m * cols, m as u64);
                let mut y = vec![0f32; m * rows];
                t[slot] = time(budget, |call| {
                    mats[call % copies].matmul(black_box(&x), m, &mut y)
                });
            }
            let chunk = size.div_ceil(threads).next_multiple_of(64);
            let mut dst = vec![0u8; size];
            let t_copy = time(budget, |call| {
                dst.par_chunks_mut(chunk)
                    .zip(raw[call % copies].par_chunks(chunk))
                    .for_each(|(d, s)| d.copy_from_slice(black_box(s)));
            });
            let gbs = |t: f64| size as f64 / t / 1e9;
            println!(
                "{:<4} {:>5} {:>5} | {:>7.1}µs {:>7.1} | {:>7.1}µs {:>7.1} {:>5.2} | {:>7.1}µs {:>7.1} | {:>6.1} {:>4.0}%",
                kind.name(),
                rows,
                cols,
                t[0] * 1e6,
                gbs(t[0]),
                t[1] * 1e6,
                gbs(t[1]),
                t[1] / t[0],
                t[2] * 1e6,
                2.0 * 64.0 * (rows * cols) as f64 / t[2] / 1e9,
                gbs(t_copy),
                100.0 * t_copy / t[0],
            );
        }
    }
    Ok(())
}
