//! Quantized matmul: r1serve's tiled kernels vs candle's `QMatMul::forward`
//! on Qwen2.5-0.5B shapes, plus m=1 weight bandwidth vs a plain memcpy.
//!
//! Where the weights are repacked (the 32-element types on AVX2 and AVX-512
//! VNNI, also Q4_K and Q6_K with AMX) the kernels on ggml's rows that they
//! replace are timed in the same run ("rows", "gain": rows / ours).
//!
//! `cargo bench --bench qmatmul`; `QMM_QUICK=1` skips the LM head and
//! shortens timing, `QMM_ONLY=Q5_0` keeps one dtype, `QMM_NO_CANDLE=1` times
//! only ours.

use std::hint::black_box;
use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::Module;
use r1serve::kernels::isa::KernelIsa;
use r1serve::kernels::qmatmul::tensor_2d;
use r1serve::kernels::{Isa, QMatrix};

/// Median seconds per call of `f`, run until `budget` is spent (≥ 3 runs).
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < 3 || (start.elapsed() < budget && samples.len() < 200) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn fmt_time(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
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
    let quick = std::env::var_os("QMM_QUICK").is_some();
    let budget = Duration::from_millis(if quick { 200 } else { 600 });
    // candle's scalar path needs ~1 ns per multiply-add; skip calls that
    // would take many seconds each.
    let candle_max_macs = if std::env::var_os("QMM_NO_CANDLE").is_some() {
        0.0
    } else {
        4e9
    };
    let only = std::env::var("QMM_ONLY").ok();
    let dtypes = [
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::Q5_0,
    ];
    let shapes = [(896, 4864), (4864, 896), (896, 151936)];
    let ms = [1, 4, 8, 16, 32, 512];
    println!(
        "isa: {:?}, rayon threads: {}",
        Isa::detect(),
        rayon::current_num_threads()
    );
    println!(
        "{:<5} {:>5} {:>6} {:>4} | {:>10} {:>10} {:>7} | {:>8} {:>8} | {:>10} {:>7}",
        "dtype", "k", "n", "m", "ours", "candle", "speedup", "GB/s", "memcpy", "rows", "gain"
    );
    for dtype in dtypes {
        for (k, n) in shapes {
            // k-quants need k % 256 == 0: Qwen2.5-0.5B uses them only for
            // ffn_down (k = 4864).
            let skip_dtype = only.as_ref().is_some_and(|o| *o != format!("{dtype:?}"));
            if (quick && n > 10_000) || k % dtype.block_size() != 0 || skip_dtype {
                continue;
            }
            let w = tensor_2d(&values(n * k, (n + k) as u64), n, k)?;
            let q = std::sync::Arc::new(QTensor::quantize(&w, dtype)?);
            drop(w);
            let ours = QMatrix::from_qtensor(&q)?;
            let rows = ours
                .is_tiled()
                .then(|| QMatrix::from_qtensor_on_rows(&q, ours.isa()))
                .transpose()?;
            let theirs = QMatMul::from_arc(q.clone())?;
            for m in ms {
                let x = values(m * k, m as u64);
                let mut out = vec![0f32; m * n];
                let t_ours = time(budget, || ours.matmul(black_box(&x), m, &mut out));
                let t_rows = rows
                    .as_ref()
                    .map(|w| time(budget, || w.matmul(black_box(&x), m, &mut out)));
                let t_candle = if (m * n * k) as f64 <= candle_max_macs {
                    let xt = tensor_2d(&x, m, k)?;
                    Some(time(budget, || {
                        black_box(theirs.forward(&xt).unwrap());
                    }))
                } else {
                    None
                };
                let (gbs, copy) = if m == 1 {
                    let bytes = ours.size_in_bytes();
                    let src = vec![1u8; bytes];
                    let mut dst = vec![0u8; bytes];
                    let t_copy = time(budget, || dst.copy_from_slice(black_box(&src)));
                    (
                        format!("{:.1}", bytes as f64 / t_ours / 1e9),
                        format!("{:.1}", bytes as f64 / t_copy / 1e9),
                    )
                } else {
                    (String::new(), String::new())
                };
                println!(
                    "{:<5} {:>5} {:>6} {:>4} | {:>10} {:>10} {:>7} | {:>8} {:>8} | {:>10} {:>7}",
                    format!("{dtype:?}"),
                    k,
                    n,
                    m,
                    fmt_time(t_ours),
                    t_candle.map_or("-".into(), fmt_time),
                    t_candle.map_or("-".into(), |t| format!("{:.1}x", t / t_ours)),
                    gbs,
                    copy,
                    t_rows.map_or("-".into(), fmt_time),
                    t_rows.map_or("-".into(), |t| format!("{:.2}x", t / t_ours)),
                );
            }
        }
    }
    Ok(())
}
